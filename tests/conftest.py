"""Fixtures for every suite: an app on SQLite and on PostgreSQL, its clients, auth.

Every test that uses the database (through `app`, or anything built on it) runs once on
each backend: `test_x[sqlite]` and `test_x[postgresql]`, the latter marked `postgres`.
tests/postgres/ runs on PostgreSQL only and tests/browser/ on SQLite only; a test that
only makes sense on some backends says so with `@pytest.mark.backends("sqlite")`.
"""

import os
import secrets
import shutil
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import flask_migrate
import psycopg
import pytest
from jinja2 import BytecodeCache
from psycopg import sql
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.util import LRUCache
from werkzeug.routing import Rule
from werkzeug.security import generate_password_hash

from soma import create_app
from soma.extensions import db, limiter
from tests.builders import make_user
from tests.fakes.smtp_server import FakeSMTP
from tests.fakes.stripe_server import FakeStripe
from tests.helpers import DEFAULT_PASSWORD, FakeClock, post_form, postgres_server_url, require

TEST_SETTINGS = {
    "SOMA_ENV": "testing",
    "SECRET_KEY": "test-secret-key",
    "RATELIMIT_STORAGE_URI": "memory://",
    "LOGIN_RATE_LIMIT": "5 per minute",
    # A fixed Fernet key, so that an app made as production in a test starts.
    "PAYOUT_ENCRYPTION_KEY": "pA6f6sQ0lqgJcHk2mW2v0c3Yb8bC9s7T1x4zQeR5uLk=",
    # Production demands one; a test app made as production starts with this.
    "SUPPORT_EMAIL": "support@soma.example",
    # Production demands both; links in test mail start with this address.
    "MAIL_FROM": "Soma <no-reply@soma.example>",
    "APP_BASE_URL": "https://soma.test",
}


def make_app(database_url: str, **overrides):
    """Create a test app on `database_url`; nothing is read from the environment."""
    return create_app({**TEST_SETTINGS, "DATABASE_URL": database_url, **overrides})


def migrate_database(database_url: str) -> None:
    """Bring the database at `database_url` to the newest migration."""
    app = make_app(database_url)
    with app.app_context():
        flask_migrate.upgrade()
        db.engine.dispose()


def pytest_report_header(config):
    from tests.browser.conftest import CHROMIUM

    ci = "required (CI=true)" if os.environ.get("CI", "").lower() in {"1", "true"} else "optional"
    return [
        f"soma: PostgreSQL suite at {postgres_server_url()} is {ci}",
        f"soma: browser suite with {CHROMIUM} is {ci}",
    ]


TESTS = Path(__file__).parent
BACKENDS = {
    "sqlite": pytest.param("sqlite", id="sqlite"),
    "postgresql": pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
}


def suite_backends(path: Path) -> tuple[str, ...]:
    """The backends a test file runs on unless a test says otherwise."""
    if (TESTS / "postgres") in path.parents:
        return ("postgresql",)  # the PostgreSQL-only suite: races, autocommit
    return ("sqlite", "postgresql")


def pytest_generate_tests(metafunc):
    """Run each test that uses the database once per backend."""
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    names = marker.args if marker else suite_backends(metafunc.definition.path)
    metafunc.parametrize("backend", [BACKENDS[name] for name in names], indirect=True)


def pytest_collection_modifyitems(config, items):
    """Refuse a test module that imports another's tests: each test runs where it is
    written, on every backend, and shared steps live in builders.py, buying.py, helpers.py."""
    imported = [
        item
        for item in items
        if isinstance(item, pytest.Function)
        and item.module is not None
        and getattr(item.function, "__module__", item.module.__name__) != item.module.__name__
    ]
    if imported:
        names = sorted({item.nodeid.split("[")[0] for item in imported})
        raise pytest.UsageError(f"tests imported from another test module: {names}")


@pytest.fixture
def backend(request) -> str:
    """The database this test runs on: "sqlite" or "postgresql"."""
    return request.param


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A migrated SQLite file (one per xdist worker), copied for each test."""
    path = tmp_path_factory.mktemp("template") / "soma.db"
    migrate_database(f"sqlite:///{path}")
    return path


def postgres_database_url(name: str) -> str:
    """The server URL with its database replaced by `name`."""
    return make_url(postgres_server_url()).set(database=name).render_as_string(hide_password=False)


def admin_sql(statement: str) -> None:
    """Run one statement on the server's maintenance database, outside a transaction."""
    with psycopg.connect(postgres_server_url(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(statement)


class PostgresDatabase:
    """One migrated database for the run (per xdist worker), emptied before each test.

    Emptying is a few milliseconds where cloning a template was a second: every row is
    deleted (with triggers off, so the append-only ledger tables allow it), the rows the
    migrations seed (platform wallets, pricing, packages) are put back from a copy in the
    `soma_test` schema, and every sequence is set back to where the migrations left it.
    """

    SEED_SCHEMA = "soma_test"

    def __init__(self, name: str):
        self.name = name
        self.url = postgres_database_url(name)
        self.reset_script = sql.SQL("")

    def connect(self):
        conn_url = make_url(self.url).set(drivername="postgresql")
        return psycopg.connect(
            conn_url.render_as_string(hide_password=False), autocommit=True, connect_timeout=5
        )

    def snapshot(self) -> None:
        """Copy the seeded rows and sequence positions; build the script that restores them."""
        seed = sql.Identifier(self.SEED_SCHEMA)
        with self.connect() as conn:
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version' ORDER BY tablename"
                )
            ]
            sequences = conn.execute(
                "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'"
            ).fetchall()
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(seed))
            tables, seeded = [], []
            for name in names:
                table, copy = sql.Identifier("public", name), sql.Identifier(self.SEED_SCHEMA, name)
                tables.append(table)
                if conn.execute(sql.SQL("SELECT EXISTS (TABLE {})").format(table)).fetchone()[0]:
                    conn.execute(sql.SQL("CREATE TABLE {} AS TABLE {}").format(copy, table))
                    seeded.append((table, copy))
        steps = [
            sql.SQL("SET LOCAL session_replication_role = replica"),
            sql.SQL("SET LOCAL lock_timeout = '10s'"),
        ]
        steps += [sql.SQL("DELETE FROM {}").format(table) for table in tables]
        steps += [
            sql.SQL("INSERT INTO {} OVERRIDING SYSTEM VALUE TABLE {}").format(table, copy)
            for table, copy in seeded
        ]
        steps += [
            sql.SQL("SELECT setval({}, {}, {})").format(
                sql.Literal(f'public."{name}"'), last or 1, last is not None
            )
            for name, last in sequences
        ]
        self.reset_script = sql.SQL("BEGIN; {}; COMMIT").format(sql.SQL("; ").join(steps))

    def reset(self) -> None:
        """Put the database back as the migrations left it."""
        with self.connect() as conn:
            conn.execute(self.reset_script)


@pytest.fixture(scope="session")
def postgres_database():
    """This run's PostgreSQL database, migrated to head; dropped at the end."""
    url = postgres_server_url()
    try:
        with psycopg.connect(url, connect_timeout=3):
            pass
    except psycopg.Error as error:
        require("PostgreSQL", f"cannot connect to {url}: {str(error).splitlines()[0]}")
    database = PostgresDatabase(f"soma_test_{os.getpid()}_{secrets.token_hex(3)}")
    admin_sql(f'CREATE DATABASE "{database.name}"')
    # Commits need not wait for the disk: a test's database outlives no crash.
    admin_sql(f'ALTER DATABASE "{database.name}" SET synchronous_commit = off')
    try:
        migrate_database(database.url)
        database.snapshot()
        yield database
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')


@pytest.fixture
def database_url(backend, request, tmp_path) -> str:
    """A database as the migrations leave it, on this test's backend."""
    if backend == "sqlite":
        path = tmp_path / "soma.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    database = request.getfixturevalue("postgres_database")
    database.reset()
    return database.url


class CompiledTemplates(BytecodeCache):
    """Jinja's compiled templates, kept in memory for the run and shared by every test's app
    (each app has its own Jinja environment, and would compile each page again). A template
    whose source changed is compiled afresh: the key includes the source's checksum."""

    def __init__(self):
        self.compiled = {}

    def load_bytecode(self, bucket):
        code = self.compiled.get((bucket.key, bucket.checksum))
        if code is not None:
            bucket.code = code

    def dump_bytecode(self, bucket):
        self.compiled[(bucket.key, bucket.checksum)] = bucket.code


COMPILED_TEMPLATES = CompiledTemplates()


def _share_url_builders() -> None:
    """Werkzeug compiles a URL builder for every rule of every app, from Python's AST: 35 ms
    of each test's 40 ms app, about 100 s of CPU in a run. The builder is a function of the
    rule's text and parsed parts alone (it reaches the rule's converters through the rule it
    is bound to), so the run compiles each once and every app's rule binds the same one. A
    rule with a default for one of its own variables folds the default in: it is compiled
    for itself. This reads Werkzeug's internals as 3.1 has them: with another version (it
    comes with Flask, unpinned), every app compiles its own, as without this."""
    compile_builder = getattr(Rule, "_compile_builder", None)
    if compile_builder is None or not version("werkzeug").startswith("3.1."):
        return
    builders = {}

    def shared(rule, append_unknown=True):
        defaults = rule.defaults or {}
        if any(dynamic and name in defaults for dynamic, name in rule._trace):
            return compile_builder(rule, append_unknown)
        key = (rule.rule, tuple(rule._trace), tuple(sorted(map(str, defaults))), append_unknown)
        if key not in builders:
            builders[key] = compile_builder(rule, append_unknown)
        return builders[key]

    Rule._compile_builder = shared


_share_url_builders()


# The SQL each backend's statements compile to, shared by the test apps' engines of the
# same backend and engine options (see `share_compiled_statements`), as a worker of a
# deployment keeps it for its life.
SHARED_COMPILED: dict[tuple, LRUCache] = {}
SHARED_DIALECTS: dict[tuple, type] = {}


def share_compiled_statements(app, engine) -> None:
    """Let `engine` use the SQL compiled by the test apps' engines before it, instead of
    compiling every statement again (about a quarter of a test's CPU).

    SQLAlchemy keys its compiled statements by the dialect object, and each app has its
    own engine and dialect. The test apps' engines of one backend and one set of engine
    options (the same server: PostgreSQL's or SQLite's library) are alike, so their
    dialects are given a class whose instances are equal to one another, and the engines
    one cache. Apps with other engine options get a class and a cache of their own; an
    engine a test makes itself keeps its own."""
    base = type(engine.dialect)
    options = app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}
    key = (base, repr(sorted(options.items())))
    shared = SHARED_DIALECTS.get(key)
    if shared is None:
        shared = type(
            f"Shared{base.__name__}",
            (base,),
            {
                "__hash__": lambda self: hash(key),
                "__eq__": lambda self, other: type(other) is type(self),
                # (SQLAlchemy reads this from each dialect class's own attributes.)
                "supports_statement_cache": base.supports_statement_cache,
            },
        )
        SHARED_DIALECTS[key] = shared
    engine.dialect.__class__ = shared
    engine._compiled_cache = SHARED_COMPILED.setdefault(key, LRUCache(10_000))


def unsynced_sqlite(dbapi_connection, _record) -> None:
    """Skip SQLite's fsync on each commit: a test's database outlives no crash."""
    dbapi_connection.execute("PRAGMA synchronous=OFF")


@pytest.fixture
def app(database_url):
    """An app on a freshly migrated database of the test's backend."""
    app = make_app(database_url)
    app.jinja_env.bytecode_cache = COMPILED_TEMPLATES
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", unsynced_sqlite)
        share_compiled_statements(app, db.engine)
        limiter.reset()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture(params=["full", "incremental"])
def audit_mode(request, app) -> str:
    """Run a test's audits both ways. "full": no checkpoint, so run_audit() checks every
    row from the start. "incremental": a checkpoint of the new database first (dated long
    ago, before any clock a test sets), so run_audit() checks, by the incremental paths,
    every row the test makes."""
    if request.param == "incremental":
        from soma.audit import audit

        with app.app_context():
            app.config["SOMA_CLOCK"] = FakeClock(datetime(2000, 1, 1, tzinfo=UTC))
            try:
                result = audit(full=True)
            finally:
                app.config.pop("SOMA_CLOCK")
            assert (result.violations, result.full) == ([], True)
            assert result.checkpoint_id is not None
    return request.param


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch):
    """Hash passwords in one round: a real hash takes a third of a second, and every
    user a test builds or logs in as would pay it. Checking still works the same way."""
    monkeypatch.setattr(
        "soma.models.user.generate_password_hash",
        lambda password: generate_password_hash(password, method="pbkdf2:sha256:1"),
    )


@pytest.fixture
def clock(app):
    """The app's clock, moved by hand: 24 Nov 2026, 09:00 UTC until the test moves it."""
    fake = FakeClock()
    app.config["SOMA_CLOCK"] = fake
    return fake


STRIPE_WEBHOOK_SECRET = "whsec_test_soma"


@pytest.fixture
def fake_stripe():
    """A fake Stripe API on 127.0.0.1 (tests/fakes/stripe_server.py)."""
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture
def stripe_on(app, fake_stripe):
    """The app's Stripe keys set, its API pointed at the fake; yields the fake."""
    app.config.update(
        STRIPE_SECRET_KEY="sk_test_soma",
        STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET,
        STRIPE_API_BASE=fake_stripe.url,
    )
    return fake_stripe


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def ctx(app):
    """An application context, for calling services and reading the database."""
    with app.app_context():
        yield


class AuthActions:
    """Sign up, log in and log out through the real forms."""

    def __init__(self, client):
        self.client = client

    def signup(
        self,
        email="new@example.com",
        name="New Person",
        password=DEFAULT_PASSWORD,
        role="student",
        confirm=None,
    ):
        data = {
            "email": email,
            "display_name": name,
            "password": password,
            "confirm": password if confirm is None else confirm,
            "role": role,
        }
        return post_form(self.client, "/signup", data)

    def login(self, email, password=DEFAULT_PASSWORD, next_url=None):
        url = "/login" + (f"?next={next_url}" if next_url else "")
        return post_form(self.client, url, {"email": email, "password": password}, page="/login")

    def logout(self):
        return post_form(self.client, "/logout", page="/")

    def login_as(self, role: str, **kwargs):
        """Create a user with `role`, log in as them, and return the user."""
        with self.client.application.app_context():
            made = make_user(role, **kwargs)
            user = SimpleNamespace(
                id=made.id, email=made.email, display_name=made.display_name, role=made.role
            )
        response = self.login(user.email)
        assert response.status_code == 302, response.get_data(as_text=True)
        return user


@pytest.fixture
def auth(client):
    return AuthActions(client)


@pytest.fixture
def smtp_server():
    """A real SMTP server on 127.0.0.1 that keeps the messages it receives."""
    server = FakeSMTP().start()
    yield server
    server.stop()


@pytest.fixture
def smtp_on(app, smtp_server):
    """The app's mail sent through `smtp_server`; yields the server."""
    app.config.update(MAIL_BACKEND="smtp", MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port)
    return smtp_server
