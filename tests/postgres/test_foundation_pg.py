"""The foundation on PostgreSQL: migrations, constraints, accounts under concurrency."""

import threading

import flask_migrate
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from soma.auth import service
from soma.extensions import db
from soma.models import User
from tests.helpers import DEFAULT_PASSWORD


def test_runs_on_postgresql_with_psycopg_3(app):
    with app.app_context():
        assert db.engine.dialect.name == "postgresql"
        assert db.engine.dialect.driver == "psycopg"


def test_models_and_migrations_agree(runner):
    result = runner.invoke(args=["db", "check"])
    assert result.exit_code == 0, result.output


def test_migrations_downgrade_to_base_and_back(app, runner):
    with app.app_context():
        flask_migrate.downgrade(revision="base")
        tables = db.session.scalars(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).all()
        assert set(tables) <= {"alembic_version"}
        db.session.remove()
        flask_migrate.upgrade()
    assert runner.invoke(args=["db", "check"]).exit_code == 0


def test_database_refuses_bad_roles_and_uppercase_email(app):
    with app.app_context():
        for email, role in [("ok@example.com", "superuser"), ("Upper@Example.com", "student")]:
            db.session.add(User(email=email, display_name="X", password_hash="x", role=role))
            with pytest.raises(IntegrityError):
                db.session.flush()
            db.session.rollback()


def test_signup_login_and_healthz_on_postgresql(app, client, auth):
    response = auth.signup(email="pg@example.com", name="Pat Postgres", role="teacher")
    assert response.status_code == 302
    assert "Pat Postgres" in client.get("/teacher").get_data(as_text=True)
    auth.logout()
    assert auth.login("PG@example.com").status_code == 302
    assert client.get("/healthz").get_json() == {"status": "ok", "database": "ok"}
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "pg@example.com"))
        assert user.role == "teacher"
        assert user.created_at.tzinfo is not None


def test_racing_signups_with_one_email_make_one_account(app):
    """Ten threads, each with its own connection, sign up the same email at once."""
    barrier = threading.Barrier(10)
    outcomes = []

    def sign_up(n):
        with app.app_context():
            barrier.wait()
            try:
                service.sign_up("Race@Example.com ", f"Racer {n}", DEFAULT_PASSWORD, "student")
                outcomes.append("created")
            except service.EmailTaken:
                outcomes.append("taken")

    threads = [threading.Thread(target=sign_up, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["created"] + ["taken"] * 9
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(User)) == 1
