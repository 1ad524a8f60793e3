"""PostgreSQL-only suite: races between threads, entries in autocommit, the server's own ways.

The `app` here is on PostgreSQL only (tests/conftest.py); `wide_app` opens a second one on
the same database with a connection for every racing worker.
"""

import os

import pytest

from soma.extensions import db
from tests.conftest import make_app


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.postgres)


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
