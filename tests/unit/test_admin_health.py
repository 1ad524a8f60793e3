"""/admin/health, the sweeper's heartbeat and the system alerts it and the pages raise."""

from datetime import timedelta

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import OperationalError

from soma.extensions import db
from soma.models import Alert, Heartbeat
from tests.conftest import make_app
from tests.helpers import text_of

CLOSED_PORT_DB = "postgresql://postgres@127.0.0.1:1/nothing"


def beat_of(app):
    with app.app_context():
        return db.session.get(Heartbeat, "sweeper")


def alerts(app, rule: str | None = None) -> list[Alert]:
    with app.app_context():
        query = select(Alert).order_by(Alert.id)
        if rule:
            query = query.where(Alert.rule == rule)
        return db.session.scalars(query).all()


def down(message: str = "connection refused") -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError(message))


def test_a_sweep_pass_records_its_heartbeat_with_what_it_did(app, runner, clock):
    assert beat_of(app) is None
    assert runner.invoke(args=["soma", "sweep"]).exit_code == 0
    first = beat_of(app)
    assert first.at == clock.now
    assert first.detail == "0 completed, 0 ended early, 0 failed; 0 withdrawal(s) finished"

    clock.advance(seconds=30)
    assert runner.invoke(args=["soma", "sweep"]).exit_code == 0
    with app.app_context():
        beats = db.session.scalars(select(Heartbeat)).all()
    assert [(b.name, b.at) for b in beats] == [("sweeper", clock.now)]  # one row, moved on
    assert alerts(app) == []  # 30 seconds apart: no stall


def test_a_stall_is_raised_once_by_the_admin_pages_and_once_only_by_the_next_pass(
    app, client, auth, runner, clock
):
    runner.invoke(args=["soma", "sweep"])
    last_beat = clock.now
    auth.login_as("admin")

    clock.advance(seconds=119)
    page = text_of(client.get("/admin/health").get_data(as_text=True))
    assert "Sweeper Running" in page and "119 seconds ago" in page
    assert alerts(app) == []

    clock.advance(seconds=2)  # 121 seconds without a pass: stalled
    assert client.get("/admin/users").status_code == 200  # any admin page notices
    [stall] = alerts(app)
    assert (stall.rule, stall.cause) == ("sweeper-stale", f"sweeper-stale:{last_beat.isoformat()}")
    assert "has not finished a pass since 2026-11-24 09:00:00 UTC" in stall.message

    clock.advance(minutes=5)
    page = text_of(client.get("/admin/health").get_data(as_text=True))
    assert "Sweeper STALE" in page
    assert "STALE: no pass for 7 minutes, more than the 120 seconds allowed" in page
    assert "0 completed, 0 ended early, 0 failed; 0 withdrawal(s) finished" in page
    assert len(alerts(app)) == 1  # the same stall: the same cause, raised once

    runner.invoke(args=["soma", "sweep"])  # it comes back and sees the gap: already raised
    assert [a.cause for a in alerts(app)] == [stall.cause]
    assert beat_of(app).at == clock.now

    clock.advance(minutes=3)  # a second stall
    runner.invoke(args=["soma", "sweep"])
    second = alerts(app)[1]
    assert second.cause == f"sweeper-stale:{(last_beat + timedelta(seconds=421)).isoformat()}"
    assert second.message.startswith(
        "The sweeper did not run from 2026-11-24 09:07:01 UTC to 2026-11-24 09:10:01 UTC"
    )
    assert len(alerts(app)) == 2


def test_a_student_or_teacher_request_never_raises_the_stall(app, client, auth, runner, clock):
    runner.invoke(args=["soma", "sweep"])
    clock.advance(minutes=10)
    auth.login_as("student")
    assert client.get("/admin/health").status_code == 403
    assert client.get("/admin/users").status_code == 403
    assert alerts(app) == []


def test_the_sweeper_raises_the_outage_once_when_the_database_answers_again(
    app, runner, clock, monkeypatch
):
    """Failing passes beat nothing; the first pass that works says from when to when."""
    import soma.classes.service

    real_sweep = soma.classes.service.sweep
    passes = iter(["down", "down", "down", "ok", "ok"])

    def sweep_once():
        if next(passes) == "down":
            raise down()
        return real_sweep()

    slept = []

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 5:
            raise KeyboardInterrupt
        clock.advance(seconds=seconds)

    monkeypatch.setattr(soma.classes.service, "sweep", sweep_once)
    monkeypatch.setattr("soma.cli.time.sleep", sleep)
    outage_began = clock.now
    result = runner.invoke(args=["soma", "sweep", "--every", "60"])
    assert result.exit_code == 0, result.output
    assert slept == [60] * 5

    [outage] = alerts(app, "database-unreachable")
    assert outage.cause == f"database-unreachable:{outage_began.isoformat()}"
    assert outage.message.startswith(
        "The database was unreachable from 2026-11-24 09:00:00 UTC to 2026-11-24 09:03:00 UTC"
    )
    # The last good pass beat at 09:04; no failing pass beat at all, so the gap before the
    # first good pass is no stall of its own (there was no beat before it).
    assert beat_of(app).at == outage_began + timedelta(minutes=4)
    assert alerts(app, "sweeper-stale") == []


def test_a_failing_pass_that_is_not_the_database_raises_no_outage(app, runner, monkeypatch):
    import soma.classes.service

    calls = iter([ValueError("a bug"), None])

    def sweep_once():
        error = next(calls)
        if error:
            raise error
        raise KeyboardInterrupt

    monkeypatch.setattr(soma.classes.service, "sweep", sweep_once)
    monkeypatch.setattr("soma.cli.time.sleep", lambda seconds: None)
    runner.invoke(args=["soma", "sweep", "--every", "5"])
    assert alerts(app) == []
    assert beat_of(app) is None  # neither pass finished


def test_the_health_page_shows_each_part(app, client, auth, runner, clock):
    auth.login_as("admin")
    html = client.get("/admin/health").get_data(as_text=True)
    page = text_of(html)
    with app.app_context():
        dialect = db.engine.dialect.name
    assert "Database Reachable" in page
    assert ("PostgreSQL " if dialect == "postgresql" else "SQLite ") in page
    assert 'data-testid="db-latency"' in html and " ms" in page
    from soma.admin.health import _migration_head

    with app.test_request_context():
        head = _migration_head()
    assert f"Migration {head} (up to date)" in page
    assert "Sweeper Never ran" in page and "flask soma sweep --every 60" in page
    assert "Rate-limit store Answering" in page and "memory://" in page
    assert "Stripe Checkout (card payments) no" in page
    assert "M-Pesa STK push (payments) no" in page
    assert "M-Pesa B2C (payouts) no" in page
    assert "Stripe Connect webhook secret no" in page
    assert "Sandbox (test payments and payouts) yes offered to students" in page

    runner.invoke(args=["soma", "sweep"])
    clock.advance(seconds=45)
    page = text_of(client.get("/admin/health").get_data(as_text=True))
    assert "Sweeper Running Last pass 2026-11-24 09:00:00 UTC Age 45 seconds ago" in page


def test_the_providers_say_yes_without_showing_a_secret(app, client, auth):
    app.config.update(
        STRIPE_SECRET_KEY="sk_live_very_secret",
        STRIPE_WEBHOOK_SECRET="whsec_zq7secret_1",
        STRIPE_CONNECT_WEBHOOK_SECRET="whsec_zq7secret_2",
        MPESA_CONSUMER_KEY="ck-zq7secret",
        MPESA_CONSUMER_SECRET="cs-zq7secret",
        MPESA_SHORTCODE="174379",
        MPESA_PASSKEY="pk-zq7secret",
        MPESA_CALLBACK_SECRET="cb-zq7secret",
        MPESA_KES_PER_USD="129.50",
    )
    auth.login_as("admin")
    html = client.get("/admin/health").get_data(as_text=True)
    page = text_of(html)
    assert "Stripe Checkout (card payments) yes" in page
    assert "Stripe Connect webhook secret yes teachers can be paid through Stripe" in page
    assert "M-Pesa STK push (payments) yes Daraja at sandbox.safaricom.co.ke" in page
    assert "M-Pesa B2C (payouts) no" in page
    assert "allowed, not offered to students" in page
    for secret in ("very_secret", "zq7secret", "174379"):
        assert secret not in html


@pytest.mark.parametrize(
    "uri,answers",
    [("redis://:s3cret-pw@127.0.0.1:6379/0", True), ("redis://:s3cret-pw@127.0.0.1:1/0", False)],
)
def test_the_rate_limit_store_is_named_without_credentials_and_checked(
    app, client, auth, database_url, uri, answers
):
    if answers:
        import redis

        try:
            redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1).ping()
        except redis.RedisError:
            pytest.skip("Redis is not running on 127.0.0.1:6379")
    auth.login_as("admin")  # here: a store that does not answer refuses log-ins
    cookie = client.get_cookie("session")
    other = make_app(database_url, RATELIMIT_STORAGE_URI=uri, SECRET_KEY=app.config["SECRET_KEY"])
    try:
        other_client = other.test_client()
        other_client.set_cookie("session", cookie.value)
        html = other_client.get("/admin/health").get_data(as_text=True)
    finally:
        with other.app_context():
            db.session.remove()
            db.engine.dispose()
    page = text_of(html)
    port = "6379" if answers else "1"
    assert f"Store redis://127.0.0.1:{port}/0" in page
    assert "s3cret" not in html
    assert ("Rate-limit store Answering" if answers else "Rate-limit store Not answering") in page


def test_the_page_says_unreachable_when_select_1_fails(app, client, auth):
    auth.login_as("admin")
    with app.app_context():
        engine = db.engine

    def refuse(conn, cursor, statement, *args):
        if statement.strip() == "SELECT 1":
            raise down("server closed the connection unexpectedly")

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        response = client.get("/admin/health")
    finally:
        event.remove(engine, "before_cursor_execute", refuse)
    page = text_of(response.get_data(as_text=True))
    assert response.status_code == 503
    assert "Database Unreachable" in page
    assert "ConnectionRefusedError: server closed the connection unexpectedly" in page
    assert "Sweeper Unknown" in page
    assert "Traceback" not in page and "SELECT 1 " not in page.replace("SELECT 1 ms", "")


def test_the_page_answers_503_when_the_database_is_not_there_at_all(app, client, auth):
    """An app pointed at a closed port: it cannot even check who asks, and says so."""
    auth.login_as("admin")
    cookie = client.get_cookie("session")
    dead = make_app(CLOSED_PORT_DB, SECRET_KEY=app.config["SECRET_KEY"])
    try:
        dead_client = dead.test_client()
        dead_client.set_cookie("session", cookie.value)
        response = dead_client.get("/admin/health")
    finally:
        with dead.app_context():
            db.engine.dispose()
    page = text_of(response.get_data(as_text=True))
    assert response.status_code == 503
    assert "Database unreachable" in page
    assert "cannot check who you are and shows nothing else" in page
    assert "Traceback" not in page and "127.0.0.1:1" not in page


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_students_and_teachers_get_403_on_the_health_page(client, auth, role):
    auth.login_as(role)
    response = client.get("/admin/health")
    page = response.get_data(as_text=True)
    assert response.status_code == 403
    assert "Not allowed" in page and "Rate-limit store" not in page


def test_a_database_behind_the_code_is_told_to_upgrade(app, client, auth, monkeypatch):
    monkeypatch.setattr("soma.admin.health._migration_head", lambda: "9999")
    auth.login_as("admin")
    page = text_of(client.get("/admin/health").get_data(as_text=True))
    with app.app_context():
        applied = db.session.scalar(text("SELECT version_num FROM alembic_version"))
    assert f"Migration {applied} — the code's newest is 9999: run flask db upgrade" in page
