"""PostgreSQL suite: each run makes a migrated template database; each test clones it."""

import os
import secrets

import psycopg
import pytest
from sqlalchemy.engine import make_url

from soma.extensions import db, limiter
from tests.conftest import make_app, migrate_database
from tests.helpers import require

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_server_url() -> str:
    return os.environ.get("SOMA_TEST_POSTGRES_URL", DEFAULT_URL)


def database_url(name: str) -> str:
    """The server URL with its database replaced by `name`."""
    return make_url(postgres_server_url()).set(database=name).render_as_string(hide_password=False)


def admin_sql(statement: str) -> None:
    """Run one statement on the server's maintenance database, outside a transaction."""
    with psycopg.connect(postgres_server_url(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(statement)


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_template():
    """Create this run's template database, migrated to head; drop it at the end."""
    url = postgres_server_url()
    try:
        with psycopg.connect(url, connect_timeout=3):
            pass
    except psycopg.Error as error:
        require("PostgreSQL", f"cannot connect to {url}: {str(error).splitlines()[0]}")
    name = f"soma_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        migrate_database(database_url(name))
        yield name
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def app(postgres_template):
    """An app on a fresh copy of the template database."""
    name = f"{postgres_template}_{secrets.token_hex(3)}"
    admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    app = make_app(database_url(name))
    with app.app_context():
        limiter.reset()
    try:
        yield app
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


WORKERS_MAX = 20


@pytest.fixture
def wide_app(app):
    """A second app on the test's database, with a connection for every racing worker."""
    wide = make_app(
        app.config["SQLALCHEMY_DATABASE_URI"],
        SQLALCHEMY_ENGINE_OPTIONS={
            "pool_pre_ping": True,
            "pool_size": WORKERS_MAX + 5,
            "max_overflow": 5,
            "pool_timeout": 10,
        },
    )
    yield wide
    with wide.app_context():
        db.session.remove()
        db.engine.dispose()
