"""What a review of issue 14's pages found, each fixed: the reset link works behind HTTPS,
a slow mail server neither re-sends nor holds the sweeper, a class cannot be booked at the
end of time, and the zones offered are places."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from soma import mail, timezones
from soma.classes import service as class_service
from soma.extensions import db
from soma.models import ClassSession, OutboxMessage
from tests.builders import make_funded_user, make_user
from tests.helpers import csrf_from


def queue_three(app) -> None:
    with app.app_context():
        user = make_user("student", email="ann@example.com")
        for n in range(3):
            mail.queue(user.email, f"Note {n}", "Body.", "test", f"test:{n}", user_id=user.id)
        db.session.commit()


def test_each_sent_email_is_recorded_as_it_goes(app, smtp_on, monkeypatch):
    queue_three(app)
    real = mail._message
    calls = []

    def second_breaks(claimed, now):
        calls.append(claimed.id)
        if len(calls) == 2:
            raise RuntimeError("the process dies here")
        return real(claimed, now)

    monkeypatch.setattr(mail, "_message", second_breaks)
    with app.app_context():
        with pytest.raises(RuntimeError):
            mail.drain()
        db.session.rollback()
        rows = db.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        # The first went out and says so: a later drain does not send it again.
        assert [row.sent_at is not None for row in rows] == [True, False, False]
    assert len(smtp_on.received) == 1


def test_a_drain_past_its_budget_leaves_the_rest_untried_for_the_next_pass(
    app, smtp_on, monkeypatch, clock
):
    queue_three(app)
    monkeypatch.setattr(mail, "DRAIN_BUDGET", timedelta(0))
    with app.app_context():
        assert mail.drain() == mail.DrainResult()
        rows = db.session.scalars(select(OutboxMessage)).all()
        assert [(row.sent_at, row.attempts) for row in rows] == [(None, 0)] * 3
        assert all(row.next_attempt_at <= clock.now for row in rows)  # due again at once
    monkeypatch.setattr(mail, "DRAIN_BUDGET", timedelta(seconds=60))
    with app.app_context():
        assert mail.drain() == mail.DrainResult(sent=3)
    assert len(smtp_on.received) == 3


def test_the_reset_page_keeps_its_origin_as_referrer_so_an_https_post_passes_csrf(app, client):
    from soma.auth import reset
    from soma.models import User

    with app.app_context():
        user = make_user("student", email="ann@example.com")
        token = reset.make_token(db.session.get(User, user.id))
    https = {"wsgi.url_scheme": "https"}
    page = client.get(f"/password/reset/{token}", environ_base=https)
    assert page.headers["Referrer-Policy"] == "strict-origin"
    sent = client.post(
        f"/password/reset/{token}",
        data={
            "csrf_token": csrf_from(page.get_data(as_text=True)),
            "password": "a brand new passphrase 77",
            "confirm": "a brand new passphrase 77",
        },
        headers={"Referer": "https://localhost/"},  # what strict-origin sends
        environ_base=https,
        base_url="https://localhost",
    )
    assert sent.status_code == 302
    with app.app_context():
        assert db.session.get(User, user.id).check_password("a brand new passphrase 77")


def test_a_class_cannot_be_booked_at_the_end_of_time(app, clock):
    with app.app_context():
        student = make_funded_user(100)
        teacher = make_user("teacher")
        far = clock.now.replace(year=9999, month=12, day=31, hour=23, minute=59)
        try:
            class_service.book(student, teacher.id, "Far", far, 30, "far-key")
        except class_service.BookingError as error:
            assert "two years" in error.message
        else:
            raise AssertionError("booked at the end of time")
        assert db.session.scalars(select(ClassSession)).all() == []


def test_the_zones_offered_are_places():
    names = timezones.zone_names()
    assert "Africa/Nairobi" in names
    assert "localtime" not in names and "Factory" not in names
