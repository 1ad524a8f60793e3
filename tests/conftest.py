"""Fixtures for every suite: an app on a freshly migrated SQLite file, its clients, auth."""

import os
import shutil
from types import SimpleNamespace

import flask_migrate
import pytest

from soma import create_app
from soma.extensions import db, limiter
from tests.fakes.stripe_server import FakeStripe
from tests.helpers import DEFAULT_PASSWORD, FakeClock, make_user, post_form

TEST_SETTINGS = {
    "SOMA_ENV": "testing",
    "SECRET_KEY": "test-secret-key",
    "RATELIMIT_STORAGE_URI": "memory://",
    "LOGIN_RATE_LIMIT": "5 per minute",
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
    from tests.postgres.conftest import postgres_server_url

    ci = "required (CI=true)" if os.environ.get("CI", "").lower() in {"1", "true"} else "optional"
    return [
        f"soma: PostgreSQL suite at {postgres_server_url()} is {ci}",
        f"soma: browser suite with {CHROMIUM} is {ci}",
    ]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A migrated SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("template") / "soma.db"
    migrate_database(f"sqlite:///{path}")
    return path


@pytest.fixture
def app(sqlite_template, tmp_path):
    """An app on its own migrated SQLite file."""
    path = tmp_path / "soma.db"
    shutil.copyfile(sqlite_template, path)
    app = make_app(f"sqlite:///{path}")
    with app.app_context():
        limiter.reset()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


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
