"""What the benchmarks share: the server's URL, databases made and dropped, the app on them.

Not a benchmark itself (`make bench` skips files whose names start with _).
"""

import contextlib
import io
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVER_URL = os.environ.get("SOMA_BENCH_POSTGRES_URL", DEFAULT_URL)


# -- databases -------------------------------------------------------------------------


def database_url(name: str) -> str:
    return make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)


def libpq_url(name: str) -> str:
    """The URL of database `name` as libpq (pgbench, psycopg) reads it."""
    url = make_url(SERVER_URL).set(drivername="postgresql", database=name)
    return url.render_as_string(hide_password=False)


def admin_sql(statement: str) -> None:
    with psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(statement)


class Databases:
    """Databases made under one unique prefix; all dropped on exit."""

    def __init__(self):
        self.prefix = f"soma_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.names: list[str] = []

    def create(self, suffix: str, template: str | None = None) -> str:
        name = f"{self.prefix}_{suffix}"
        self.names.append(name)
        admin_sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for name in reversed(self.names):
            try:
                admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg.Error as error:
                print(f"could not drop database {name}: {error}", file=sys.stderr)


# -- the app -----------------------------------------------------------------------------


def make_app(name: str, **overrides):
    """The app on database `name`, with the app's own settings (engine options included)."""
    from soma import create_app

    return create_app(
        {
            "SOMA_ENV": "development",
            "SECRET_KEY": "bench-secret-key",
            "DATABASE_URL": database_url(name),
            "RATELIMIT_STORAGE_URI": "memory://",
            **overrides,
        }
    )


def migrate(name: str) -> None:
    """Migrate database `name` to head; Alembic's log is shown only if it fails."""
    import flask_migrate

    from soma.extensions import db

    app = make_app(name)
    log = io.StringIO()
    with app.app_context():
        try:
            with contextlib.redirect_stderr(log):
                flask_migrate.upgrade()
        except BaseException:
            sys.stderr.write(log.getvalue())
            raise
        finally:
            db.engine.dispose()
