"""Class reminders (soma.reminders): 15 minutes before the start, once each to the teacher and
the student, none for a class cancelled before; sent by the sweeper through SMTP."""

from datetime import timedelta

from sqlalchemy import select

from soma import mail
from soma.classes import service as class_service
from soma.classes.machine import Action
from soma.extensions import db
from soma.models import OutboxMessage
from soma.reminders import REMINDER_LEAD, queue_reminders
from tests.builders import make_funded_user, make_user


def reminders() -> list[OutboxMessage]:
    db.session.expire_all()
    query = select(OutboxMessage).where(OutboxMessage.kind == "class_reminder")
    return list(db.session.scalars(query.order_by(OutboxMessage.id)))


def book(student, teacher, clock, minutes_ahead: int, title: str, key: str):
    start = clock.now + timedelta(minutes=minutes_ahead)
    return class_service.book(student, teacher.id, title, start, 60, key, now=clock.now)


def test_a_reminder_goes_to_teacher_and_student_fifteen_minutes_before(app, smtp_on, clock):
    with app.app_context():
        student = make_funded_user(500, name="Sam Student")
        teacher = make_user("teacher", name="Tess Teacher")
        session = book(student, teacher, clock, 40, "Quadratics", "test:reminder")
        start = session.scheduled_start
        clock.advance(minutes=24)  # 16 minutes before: not yet
        assert queue_reminders(clock.now) == 0
        assert reminders() == []
        clock.advance(minutes=1)  # 15 minutes before
        assert queue_reminders(clock.now) == 2
        rows = reminders()
        assert {(row.key, row.to_address, row.user_id) for row in rows} == {
            (f"reminder:{session.id}:{teacher.id}", teacher.email, teacher.id),
            (f"reminder:{session.id}:{student.id}", student.email, student.id),
        }
        for _ in range(3):  # later passes, and another sweeper, add nothing
            clock.advance(minutes=4)
            assert queue_reminders(clock.now) == 0
        assert len(reminders()) == 2
        mail.drain()
        emails = {"teacher": teacher.email, "student": student.email}
        class_id = session.id
    by_recipient = {message["To"]: message for message in smtp_on.messages}
    assert set(by_recipient) == set(emails.values())
    for message in by_recipient.values():
        assert message["Subject"] == f"Reminder: “Quadratics” starts at {start:%H:%M} UTC"
        body = message.get_content()
        assert "starts in 15 minutes" in body
        assert f"https://soma.test/classes/{class_id}" in body
    assert "with your student Sam Student" in by_recipient[emails["teacher"]].get_content()
    assert "with your teacher Tess Teacher" in by_recipient[emails["student"]].get_content()


def test_no_reminder_for_a_cancelled_class_or_one_already_begun(app, smtp_on, clock):
    with app.app_context():
        student, teacher = make_funded_user(500), make_user("teacher")
        cancelled = book(student, teacher, clock, 20, "Cancelled", "test:cancelled")
        class_service.act(cancelled, Action.CANCEL, student, now=clock.now)
        begun = book(student, teacher, clock, 5, "Begun", "test:begun")
        clock.advance(minutes=5)
        class_service.act(begun, Action.START, teacher, now=clock.now)
        clock.advance(minutes=1)
        assert queue_reminders(clock.now) == 0
        assert reminders() == []


def test_a_class_booked_inside_the_lead_is_reminded_at_the_next_pass(app, smtp_on, clock):
    with app.app_context():
        student, teacher = make_funded_user(500), make_user("teacher")
        session = book(student, teacher, clock, 7, "Soon", "test:soon")
        assert queue_reminders(clock.now) == 2
        assert "starts in 7 minutes" in reminders()[0].body
        clock.advance(minutes=7)  # it has started: nothing more
        assert queue_reminders(clock.now) == 0
        assert {row.key for row in reminders()} == {
            f"reminder:{session.id}:{teacher.id}",
            f"reminder:{session.id}:{student.id}",
        }


def test_a_user_who_turned_email_off_gets_no_reminder(app, smtp_on, clock):
    with app.app_context():
        student, teacher = make_funded_user(500), make_user("teacher")
        # users.email_notifications arrives with /account; either way this is the user's choice.
        teacher.email_notifications = False
        book(student, teacher, clock, 10, "Quiet", "test:quiet")
        assert queue_reminders(clock.now) == 1
        assert [row.to_address for row in reminders()] == [student.email]


def test_the_sweeper_queues_and_sends_the_reminders(app, smtp_on, clock, runner):
    with app.app_context():
        student, teacher = make_funded_user(500), make_user("teacher")
        book(student, teacher, clock, 30, "Swept", "test:swept")
        emails = {student.email, teacher.email}
    clock.advance(seconds=(timedelta(minutes=30) - REMINDER_LEAD).total_seconds())
    for _ in range(2):
        result = runner.invoke(args=["soma", "sweep"])
        assert result.exit_code == 0, result.output
    reminded = [message for message in smtp_on.messages if "Reminder" in message["Subject"]]
    assert sorted(message["To"] for message in reminded) == sorted(emails)
