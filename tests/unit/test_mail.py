"""The outbox (soma.mail): queued in the caller's transaction, sent through a real SMTP
server by the drain, retried with backoff when sending fails, never lost."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from soma import ledger, mail
from soma.extensions import db
from soma.models import Alert, EntryKind, JournalEntry, Notification, OutboxMessage, PlatformAccount
from soma.notifications.service import notify
from tests.builders import make_class, make_funded_user, make_user


def outbox() -> list[OutboxMessage]:
    db.session.expire_all()
    return list(db.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def test_a_queued_email_is_sent_through_smtp_after_the_commit(app, smtp_on, clock):
    with app.app_context():
        user = make_user("student", email="ann@example.com")
        assert mail.queue(user.email, "Hello\r\nBcc: evil@x.y", "Line one.\nLine two.", "test",
                          "test:1", user_id=user.id)  # fmt: skip
        assert smtp_on.received == []  # nothing leaves before the commit and the drain
        db.session.commit()
        assert mail.drain() == mail.DrainResult(sent=1)
        (row,) = outbox()
        assert (row.sent_at, row.attempts, row.last_error) == (clock.now, 1, None)
        assert mail.drain() == mail.DrainResult()  # sent once
    ((recipients, message),) = smtp_on.received
    assert recipients == ["ann@example.com"]
    assert message["To"] == "ann@example.com"
    assert message["From"] == "Soma <no-reply@soma.example>"
    assert message["Subject"] == "Hello Bcc: evil@x.y"  # one line: no header smuggled in
    assert message["Bcc"] is None
    assert message.get_content() == "Line one.\nLine two.\n"


def test_the_same_key_is_queued_once_and_the_transaction_goes_on(app, smtp_on):
    with app.app_context():
        user = make_user("student")
        assert mail.queue(user.email, "First", "body", "test", "same-key")
        db.session.commit()
        assert not mail.queue(user.email, "Second", "body", "test", "same-key")
        assert mail.queue(user.email, "Other", "body", "test", "other-key")
        db.session.commit()
        assert [row.subject for row in outbox()] == ["First", "Other"]


def test_a_rolled_back_money_operation_queues_nothing(app, smtp_on):
    with app.app_context():
        user = make_user("student")
        with pytest.raises(RuntimeError), ledger.atomic():
            ledger.credit(
                user.id, 10, key="test:bonus", kind=EntryKind.BONUS,
                source=PlatformAccount.PROMOTIONS, memo="A bonus that never was",
            )  # fmt: skip
            notify(user.id, "gift", "You got 10 tokens.", link="/wallet")
            mail.queue(user.email, "Bonus", "You got 10 tokens.", "test", "test:bonus")
            raise RuntimeError("the operation failed after queueing")
        assert outbox() == []
        assert db.session.scalar(select(func.count()).select_from(Notification)) == 0
        assert db.session.scalar(select(func.count()).select_from(JournalEntry)) == 0
        assert mail.drain() == mail.DrainResult()
    assert smtp_on.received == []


def test_a_server_that_is_down_is_tried_again_later_and_the_mail_arrives(app, smtp_on, clock):
    smtp_on.stop()
    with app.app_context():
        user = make_user("student")
        mail.queue(user.email, "Your receipt", "Thanks.", "test", "test:down")
        db.session.commit()
        assert mail.drain() == mail.DrainResult(retrying=1)
        (row,) = outbox()
        assert row.sent_at is None and row.failed_at is None and row.attempts == 1
        assert "ConnectionRefusedError" in row.last_error
        assert row.next_attempt_at == clock.now + timedelta(minutes=1)
        clock.advance(seconds=30)
        assert mail.drain() == mail.DrainResult()  # not due yet
        clock.advance(seconds=31)
        assert mail.drain() == mail.DrainResult(retrying=1)  # still down: waits longer
        assert outbox()[0].next_attempt_at == clock.now + timedelta(minutes=2)
        smtp_on.start()
        clock.advance(minutes=2)
        assert mail.drain() == mail.DrainResult(sent=1)
        (row,) = outbox()
        assert (row.attempts, row.sent_at, row.last_error) == (3, clock.now, None)
    assert [message["Subject"] for message in smtp_on.messages] == ["Your receipt"]


def test_a_temporary_refusal_is_retried_later(app, smtp_on, clock):
    with app.app_context():
        user = make_user("student")
        mail.queue(user.email, "Busy", "body", "test", "test:busy")
        db.session.commit()
        smtp_on.refuse = "451 4.3.0 Try again later"
        assert mail.drain() == mail.DrainResult(retrying=1)
        assert outbox()[0].last_error == "451 4.3.0 Try again later"
        smtp_on.refuse = None
        clock.advance(minutes=1)
        assert mail.drain() == mail.DrainResult(sent=1)
        assert outbox()[0].attempts == 2
    assert smtp_on.refused == 1
    assert [message["Subject"] for message in smtp_on.messages] == ["Busy"]


def test_a_permanent_refusal_is_retried_then_kept_as_failed_for_an_admin(app, smtp_on, clock):
    smtp_on.refuse = "550 5.1.1 No such mailbox"
    with app.app_context():
        mail.queue("gone@example.com", "Bounce", "body", "test", "test:bounce")
        db.session.commit()
        for attempt in range(1, mail.MAX_REFUSALS):
            assert mail.drain() == mail.DrainResult(retrying=1), attempt
            clock.advance(seconds=mail.backoff(attempt).total_seconds())
        assert mail.drain() == mail.DrainResult(failed=1)
        (row,) = outbox()  # kept, not deleted
        assert (row.failed_at, row.sent_at, row.attempts) == (clock.now, None, mail.MAX_REFUSALS)
        assert row.last_error == "550 5.1.1 No such mailbox"
        alert = db.session.scalar(select(Alert))
        assert (alert.rule, alert.object_type, alert.object_id) == ("mail-failed", "outbox", row.id)
        assert "gone@example.com" in alert.message
        smtp_on.refuse = None
        clock.advance(minutes=24 * 60)
        assert mail.drain() == mail.DrainResult()  # left for an admin, not sent behind their back
    assert smtp_on.refused == mail.MAX_REFUSALS
    assert smtp_on.messages == []


def test_the_backoff_doubles_up_to_six_hours():
    assert [mail.backoff(n) for n in (1, 2, 3, 4)] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert mail.backoff(30) == mail.backoff(500) == timedelta(hours=6)


def test_the_console_backend_prints_the_message_and_marks_it_sent(app, capsys, clock):
    assert app.config["MAIL_BACKEND"] == "console"
    with app.app_context():
        mail.queue("ann@example.com", "Printed", "Here is the body.", "test", "test:console")
        db.session.commit()
        assert mail.drain() == mail.DrainResult(sent=1)
        assert outbox()[0].sent_at == clock.now
    printed = capsys.readouterr().out
    assert "To: ann@example.com" in printed
    assert "Subject: Printed" in printed
    assert "Here is the body." in printed


def test_a_notification_goes_by_email_with_an_absolute_link(app, smtp_on):
    with app.app_context():
        student, teacher = make_funded_user(100), make_user("teacher", name="Tess Teacher")
        session = make_class(student, teacher, title="Algebra")  # tells the teacher
        notification = db.session.scalar(
            select(Notification).where(Notification.user_id == teacher.id)
        )
        (row,) = outbox()
        assert (row.key, row.kind, row.to_address, row.user_id) == (
            f"notification:{notification.id}",
            "class_booked",
            teacher.email,
            teacher.id,
        )
        assert mail.drain() == mail.DrainResult(sent=1)
        text, email, class_id = notification.message, teacher.email, session.id
    (message,) = smtp_on.messages
    assert message["To"] == email
    assert message["Subject"] == f"Soma: {text}"
    body = message.get_content()
    assert body.startswith("Hello Tess Teacher,")
    assert text in body
    assert f"https://soma.test/classes/{class_id}" in body
    assert "Turn them off at https://soma.test/account." in body


def test_no_notification_email_for_a_user_who_turned_them_off(app, smtp_on):
    with app.app_context():
        wants, refuses = make_user("student"), make_user("student")
        # users.email_notifications arrives with /account; either way this is the user's choice.
        refuses.email_notifications = False
        db.session.commit()
        notify(wants.id, "gift", "You got a gift.", link="/wallet")
        notify(refuses.id, "gift", "You got a gift.", link="/wallet")
        db.session.commit()
        assert db.session.scalar(select(func.count()).select_from(Notification)) == 2
        assert [row.to_address for row in outbox()] == [wants.email]
        mail.drain()
        email = wants.email
    assert [message["To"] for message in smtp_on.messages] == [email]


def test_the_sweeper_sends_the_outbox(app, smtp_on, runner):
    with app.app_context():
        user = make_user("student")
        mail.queue(user.email, "From the sweeper", "body", "test", "test:sweep")
        db.session.commit()
    result = runner.invoke(args=["soma", "sweep"])
    assert result.exit_code == 0, result.output
    assert [message["Subject"] for message in smtp_on.messages] == ["From the sweeper"]
    with app.app_context():
        assert outbox()[0].sent_at is not None


def test_a_password_reset_goes_before_a_backlog(app, smtp_on):
    with app.app_context():
        for n in range(3):
            mail.queue(f"user{n}@example.com", f"Backlog {n}", "body", "class_booked", f"b:{n}")
        mail.queue("ann@example.com", "Reset your Soma password", "body", "password_reset", "r:1")
        db.session.commit()
        assert mail.drain(limit=1) == mail.DrainResult(sent=1)
        assert mail.drain(limit=5) == mail.DrainResult(sent=3)
    subjects = [message["Subject"] for message in smtp_on.messages]
    assert subjects == ["Reset your Soma password", "Backlog 0", "Backlog 1", "Backlog 2"]
