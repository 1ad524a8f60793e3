"""`flask soma` commands, configuration, migrations and lint."""

import re
import subprocess
import sys
from pathlib import Path

import flask_migrate
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import inspect, select

from soma.config import ENV_SETTINGS, ConfigError, build_config, database_uri
from soma.extensions import db
from soma.models import User

ROOT = Path(__file__).resolve().parents[2]


def test_create_admin_with_password(app, runner):
    result = runner.invoke(
        args=[
            "soma",
            "create-admin",
            "Boss@Example.com",
            "--name",
            "Boss",
            "--password",
            "admin-password-1",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "Created admin boss@example.com." in result.output
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "boss@example.com"))
        assert user.role == "admin"
        assert user.check_password("admin-password-1")


def test_create_admin_generates_and_prints_a_password(app, runner):
    result = runner.invoke(args=["soma", "create-admin", "root@example.com"])
    assert result.exit_code == 0, result.output
    password = re.search(r"Password: (\S+)", result.output).group(1)
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "root@example.com"))
        assert user.check_password(password)


def test_create_admin_refuses_a_taken_email_and_a_short_password(app, runner):
    runner.invoke(args=["soma", "create-admin", "a@example.com", "--password", "long-enough-1"])
    taken = runner.invoke(
        args=["soma", "create-admin", "a@example.com", "--password", "other-long-enough-2"]
    )
    assert taken.exit_code != 0
    assert "already exists" in taken.output
    short = runner.invoke(args=["soma", "create-admin", "b@example.com", "--password", "short"])
    assert short.exit_code != 0
    assert "at least 10 characters" in short.output


def test_demo_is_idempotent_and_prints_working_passwords(app, runner, monkeypatch):
    monkeypatch.setattr("soma.demo.YEAR_DAYS", 14)  # the past year is another test's
    first = runner.invoke(args=["soma", "demo"])
    second = runner.invoke(args=["soma", "demo"])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert first.output.count("(created)") == 3
    assert second.output.count("(exists)") == 3
    found = re.findall(r"(\w+)\s+(\S+@example\.com)\s+password: (\S+)", second.output)
    assert {role for role, _, _ in found} == {"student", "teacher", "admin"}
    with app.app_context():
        users = db.session.scalars(select(User)).all()
        assert len(users) == 3
        for role, email, password in found:
            user = next(u for u in users if u.email == email)
            assert user.role == role
            assert user.check_password(password)


def test_demo_refuses_production(tmp_path):
    from tests.conftest import make_app

    app = make_app(
        f"sqlite:///{tmp_path}/x.db",
        SOMA_ENV="production",
        RATELIMIT_STORAGE_URI="redis://127.0.0.1:6379/0",
    )
    result = app.test_cli_runner().invoke(args=["soma", "demo"])
    assert result.exit_code != 0
    assert "never created in production" in result.output


def test_runs_on_each_backend_with_its_driver(app, backend):
    drivers = {"sqlite": ("sqlite", "pysqlite"), "postgresql": ("postgresql", "psycopg")}
    with app.app_context():
        assert (db.engine.dialect.name, db.engine.dialect.driver) == drivers[backend]


def test_models_and_migrations_agree(runner):
    result = runner.invoke(args=["db", "check"])
    assert result.exit_code == 0, result.output


def test_migrations_downgrade_to_base_and_back(app, runner):
    with app.app_context():
        flask_migrate.downgrade(revision="base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        db.session.remove()
        flask_migrate.upgrade()
    assert runner.invoke(args=["db", "check"]).exit_code == 0


def test_production_needs_a_secret_key_a_database_shared_rate_limits_and_a_payout_key(tmp_path):
    shared = {"RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379/0"}
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        build_config(
            {"SOMA_ENV": "production", "DATABASE_URL": "postgresql://x/y", **shared}, str(tmp_path)
        )
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        build_config({"SOMA_ENV": "production", "SECRET_KEY": "k", **shared}, str(tmp_path))
    key = Fernet.generate_key().decode()
    database = {"SOMA_ENV": "production", "SECRET_KEY": "k", "DATABASE_URL": "postgres://h/db"}
    for kept_per_worker in ({}, {"RATELIMIT_STORAGE_URI": "memory://"}):
        with pytest.raises(ConfigError, match="RATELIMIT_STORAGE_URI"):
            build_config(
                {**database, "PAYOUT_ENCRYPTION_KEY": key, **kept_per_worker}, str(tmp_path)
            )
    with pytest.raises(ConfigError, match="PAYOUT_ENCRYPTION_KEY"):
        build_config({**database, **shared}, str(tmp_path))
    with pytest.raises(ConfigError, match="SUPPORT_EMAIL"):
        build_config({**database, **shared, "PAYOUT_ENCRYPTION_KEY": key}, str(tmp_path))
    support = {"SUPPORT_EMAIL": "help@soma.co.ke"}
    ready = {**database, **shared, "PAYOUT_ENCRYPTION_KEY": key, **support}
    with pytest.raises(ConfigError, match="MAIL_FROM"):
        build_config(ready, str(tmp_path))
    mail = {"MAIL_FROM": "Soma <no-reply@soma.co.ke>", "APP_BASE_URL": "https://soma.co.ke/"}
    with pytest.raises(ConfigError, match="APP_BASE_URL"):
        build_config({**ready, "MAIL_FROM": mail["MAIL_FROM"]}, str(tmp_path))
    with pytest.raises(ConfigError, match="MAIL_BACKEND must be smtp"):
        build_config({**ready, **mail, "MAIL_BACKEND": "console"}, str(tmp_path))
    config = build_config({**ready, **mail}, str(tmp_path))
    assert (config["MAIL_BACKEND"], config["MAIL_SERVER"], config["MAIL_PORT"]) == (
        "smtp",
        "localhost",
        25,
    )
    assert config["APP_BASE_URL"] == "https://soma.co.ke"
    assert config["SUPPORT_EMAIL"] == "help@soma.co.ke"
    assert config["RATELIMIT_STORAGE_URI"] == "redis://127.0.0.1:6379/0"
    assert config["PAYOUT_ENCRYPTION_KEY"] == key
    assert not (tmp_path / "payout_encryption_key").exists()  # production never makes one
    assert config["SESSION_COOKIE_SECURE"] is True
    assert config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://h/db"


def test_development_defaults_to_sqlite_in_the_instance_folder(tmp_path):
    config = build_config({"SOMA_ENV": "development"}, str(tmp_path))
    assert config["MAIL_BACKEND"] == "console"  # `make run` prints mail
    assert config["SUPPORT_EMAIL"] == "support@soma.example"
    assert config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path}/soma.db"
    assert config["SESSION_COOKIE_SECURE"] is False
    # The generated secret is kept, so sessions survive a restart.
    assert build_config({}, str(tmp_path))["SECRET_KEY"] == config["SECRET_KEY"]


def test_the_payout_key_is_kept_in_development_and_must_be_a_fernet_key(tmp_path):
    config = build_config({"SOMA_ENV": "development", "SECRET_KEY": "k"}, str(tmp_path))
    kept = (tmp_path / "payout_encryption_key").read_text().strip()
    assert config["PAYOUT_ENCRYPTION_KEY"] == kept
    Fernet(kept.encode())  # a usable key
    assert build_config({"SECRET_KEY": "k"}, str(tmp_path))["PAYOUT_ENCRYPTION_KEY"] == kept
    with pytest.raises(ConfigError, match="must be a Fernet key"):
        build_config({"SECRET_KEY": "k", "PAYOUT_ENCRYPTION_KEY": "not-a-key"}, str(tmp_path))
    with pytest.raises(ConfigError, match="WITHDRAWAL_PROCESSING_ALERT_MINUTES"):
        build_config(
            {"SECRET_KEY": "k", "WITHDRAWAL_PROCESSING_ALERT_MINUTES": "-5"}, str(tmp_path)
        )


def test_mail_settings_are_checked(tmp_path):
    base = {"SECRET_KEY": "k"}
    tls = build_config({**base, "MAIL_BACKEND": "smtp", "MAIL_USE_TLS": "1"}, str(tmp_path))
    assert (tls["MAIL_PORT"], tls["MAIL_USE_TLS"], tls["MAIL_USE_SSL"]) == (587, True, False)
    assert build_config({**base, "MAIL_USE_SSL": "yes"}, str(tmp_path))["MAIL_PORT"] == 465
    refusals = {
        "MAIL_BACKEND": {"MAIL_BACKEND": "sendmail"},
        "MAIL_PORT": {"MAIL_PORT": "70000"},
        "not both": {"MAIL_USE_TLS": "1", "MAIL_USE_SSL": "1"},
        "MAIL_FROM must be an email": {"MAIL_FROM": "Soma\r\nBcc: x@y.z"},
        "APP_BASE_URL must start": {"APP_BASE_URL": "soma.co.ke"},
    }
    for message, settings in refusals.items():
        with pytest.raises(ConfigError, match=message):
            build_config({**base, **settings}, str(tmp_path))


def test_database_uri_uses_psycopg_3():
    assert database_uri("postgresql://u@h:5432/d") == "postgresql+psycopg://u@h:5432/d"
    assert database_uri("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("value", "pre_ping"), [("", False), ("0", False), ("1", True), ("yes", True)]
)
def test_the_pool_pre_ping_is_a_setting_and_off_by_default(tmp_path, value, pre_ping):
    settings = {"SECRET_KEY": "k", "DATABASE_POOL_PRE_PING": value}
    options = build_config(settings, str(tmp_path))["SQLALCHEMY_ENGINE_OPTIONS"]
    assert options == {"pool_pre_ping": pre_ping, "pool_recycle": 1800}


def test_env_example_lists_every_setting():
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    assert set(ENV_SETTINGS) <= listed, set(ENV_SETTINGS) - listed


def test_code_is_ruff_clean():
    ruff = [sys.executable, "-m", "ruff"]
    check = subprocess.run([*ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        [*ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_the_pause_limit_is_a_positive_whole_number_of_minutes(tmp_path):
    settings = {"SOMA_ENV": "testing", "SECRET_KEY": "x"}
    assert build_config(settings, str(tmp_path))["CLASS_PAUSE_LIMIT_MINUTES"] == 30
    config = build_config({**settings, "CLASS_PAUSE_LIMIT_MINUTES": "5"}, str(tmp_path))
    assert config["CLASS_PAUSE_LIMIT_MINUTES"] == 5
    for bad in ("0", "-3", "ten", "1.5"):
        with pytest.raises(ConfigError, match="CLASS_PAUSE_LIMIT_MINUTES"):
            build_config({**settings, "CLASS_PAUSE_LIMIT_MINUTES": bad}, str(tmp_path))
