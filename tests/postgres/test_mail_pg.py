"""Sweepers draining the outbox at once on PostgreSQL: each email is sent once."""

from sqlalchemy import select

from soma import mail
from soma.extensions import db
from soma.models import OutboxMessage
from tests.helpers import ok, race

MESSAGES = 60


def test_drains_at_once_send_each_email_once(app, wide_app, smtp_server):
    wide_app.config.update(MAIL_BACKEND="smtp", MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port)
    with wide_app.app_context():
        for n in range(MESSAGES):
            mail.queue(f"user{n}@example.com", f"Message {n}", f"Body {n}", "test", f"test:{n}")
        db.session.commit()
    outcomes = race(wide_app, [lambda: mail.drain(limit=20)] * 5)
    results = ok(outcomes)
    assert len(results) == 5, outcomes
    assert sum(result.sent for result in results) == MESSAGES
    assert sum(result.retrying + result.failed for result in results) == 0
    subjects = sorted(message["Subject"] for message in smtp_server.messages)
    assert subjects == sorted(f"Message {n}" for n in range(MESSAGES))  # each once
    with wide_app.app_context():
        rows = db.session.scalars(select(OutboxMessage)).all()
        assert len(rows) == MESSAGES
        assert all(row.sent_at is not None and row.attempts == 1 for row in rows)
