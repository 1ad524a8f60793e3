"""Classes on PostgreSQL: a due class raced from every side, and the timer's one round trip."""

import tempfile
import threading
from collections import Counter
from datetime import timedelta

import psycopg
from sqlalchemy import event, func, select

from soma.audit import run_audit
from soma.classes import service
from soma.classes.machine import Action, InvalidMove
from soma.extensions import db
from soma.models import ClassEvent, ClassSession, JournalEntry, Notification, User
from tests.builders import fund, make_class, make_funded_user, make_user
from tests.helpers import FakeClock, balances, errors, ok, race, text_of


def test_ten_threads_completing_sweeping_and_polling_one_due_class_settle_it_once(app, wide_app):
    fake = FakeClock()
    app.config["SOMA_CLOCK"] = wide_app.config["SOMA_CLOCK"] = fake
    with app.app_context():
        student = make_user("student")
        teacher = make_user("teacher")
        fund(student.id, 50)
        session = service.book(
            student, teacher.id, "Race", fake.now + timedelta(minutes=5), 60, "race"
        )
        service.act(session, Action.START, teacher)
        class_id, student_id, teacher_id = session.id, student.id, teacher.id
    fake.advance(minutes=61)  # due a minute ago; nobody has looked

    def poll():
        return service.settle_if_due(service.class_for(db.session.get(User, student_id), class_id))

    def sweep():
        return service.sweep()

    def pause():  # the teacher, a second too late
        session = db.session.get(ClassSession, class_id)
        return service.act(session, Action.PAUSE, db.session.get(User, teacher_id))

    work = [poll, sweep, pause, poll, sweep, poll, pause, sweep, poll, poll]
    outcomes = race(wide_app, work)

    assert all(type(error) is InvalidMove for error in errors(outcomes)), errors(outcomes)
    assert len(errors(outcomes)) <= 2  # only the pauses, when they come after the settle
    sweeps = [r for r in ok(outcomes) if isinstance(r, service.SweepResult)]
    assert sum(r.completed for r in sweeps) <= 1
    assert all(r.failed == 0 for r in sweeps)
    with app.app_context():
        db.session.expire_all()
        kinds = db.session.scalars(
            select(JournalEntry.kind)
            .where(JournalEntry.reference_type == "class", JournalEntry.reference_id == class_id)
            .order_by(JournalEntry.id)
        ).all()
        assert kinds == ["class_hold", "class_settle"]
        events = Counter(
            db.session.scalars(select(ClassEvent.kind).where(ClassEvent.class_id == class_id))
        )
        assert events == {"start": 1, "complete": 1}
        settled = db.session.get(ClassSession, class_id)
        assert (settled.status, settled.charged_tokens, settled.active_seconds) == (
            "completed",
            10,
            3600,
        )
        assert balances(student_id) == (40, 0)
        assert balances(teacher_id) == (10, 0)
        assert run_audit() == []


def test_the_timer_poll_is_one_round_trip(app, client, auth, clock):
    """Read off libpq's protocol trace: no BEGIN, no ROLLBACK, one SELECT."""
    with app.app_context():
        student = make_funded_user(25, "student")
        teacher = make_user("teacher")
        booked, teacher_email = make_class(student, teacher, "in_progress").id, teacher.email
    auth.login(teacher_email)
    clock.advance(minutes=5, seconds=42)  # the class started five minutes after booking
    with app.app_context():
        engine = db.engine
    with tempfile.TemporaryFile("w+") as trace:

        def start(dbapi_connection, *_):
            dbapi_connection.pgconn.trace(trace.fileno())
            dbapi_connection.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

        def stop(dbapi_connection, *_):
            dbapi_connection.pgconn.untrace()

        event.listen(engine.pool, "checkout", start)
        event.listen(engine.pool, "checkin", stop)
        try:
            response = client.get(f"/classes/{booked}/timer?seen=in_progress")
        finally:
            event.remove(engine.pool, "checkout", start)
            event.remove(engine.pool, "checkin", stop)
        trace.seek(0)
        lines = trace.read().splitlines()
    assert "Elapsed 00:42" in text_of(response.get_data(as_text=True))
    messages = [line.split("\t") for line in lines if line.startswith(("F\t", "B\t"))]
    sent = [fields[2] for fields in messages if fields[0] == "F"]
    received = [fields[2] for fields in messages if fields[0] == "B"]
    assert received.count("ReadyForQuery") == 1, lines  # one round trip
    assert "Query" not in sent  # no simple-protocol BEGIN or ROLLBACK
    assert "FROM class_sessions JOIN users" in "\n".join(lines)


# Booking rules under races ---------------------------------------------------------------

SLOT = timedelta(minutes=60)


def class_rows() -> list[tuple[int, int, int]]:
    db.session.expire_all()
    return [
        tuple(row)
        for row in db.session.execute(
            select(
                ClassSession.student_id, ClassSession.teacher_id, ClassSession.cost_tokens
            ).order_by(ClassSession.id)
        )
    ]


def counts() -> tuple[int, int]:
    """Journal entries and notifications: a refused booking adds to neither."""
    return (
        db.session.scalar(select(func.count()).select_from(JournalEntry)),
        db.session.scalar(select(func.count()).select_from(Notification)),
    )


def test_two_students_booking_one_teachers_slot_at_once_one_wins(app, wide_app, monkeypatch):
    """Both pass the service's check before either writes (a barrier holds them there):
    the exclusion constraint refuses the second insert, and its student gets the same
    message as a booking refused by the check."""
    fake = FakeClock()
    app.config["SOMA_CLOCK"] = wide_app.config["SOMA_CLOCK"] = fake
    with app.app_context():
        teacher = make_user("teacher", name="Tara Teacher")
        students = [make_funded_user(10, "student") for _ in range(2)]
        teacher_id, student_ids = teacher.id, [student.id for student in students]
        before = counts()
    start = fake.now + SLOT
    checked = threading.Barrier(2, timeout=30)
    refuse_unaffordable = service._refuse_unaffordable

    def checked_then_wait(*args):
        refuse_unaffordable(*args)
        checked.wait()  # both have found the slot free

    monkeypatch.setattr(service, "_refuse_unaffordable", checked_then_wait)

    def booking(student_id: int):
        def book():
            student = db.session.get(User, student_id)
            return service.book(student, teacher_id, "Algebra", start, 60, f"race{student_id}").id

        return book

    outcomes = race(wide_app, [booking(student_id) for student_id in student_ids])

    assert len(ok(outcomes)) == 1, outcomes
    [error] = errors(outcomes)
    assert type(error) is service.BookingError
    assert error.field == "start"
    assert error.message == (
        "Tara Teacher is already booked on 24 Nov 2026 from 10:00 to 11:00 UTC. "
        "Choose another time."
    )
    winner = student_ids[[status for status, _ in outcomes].index("ok")]
    with app.app_context():
        assert class_rows() == [(winner, teacher_id, 10)]
        journal, notifications = counts()
        assert (journal, notifications) == (before[0], before[1] + 1)  # the winner's notice
        assert [balances(student_id) for student_id in student_ids] == [(10, 0), (10, 0)]
        assert run_audit() == []


def test_one_student_booking_twice_at_once_cannot_spend_the_same_tokens(app, wide_app):
    """Two bookings of one student, with two teachers at two times, each costing all the
    student's tokens: the bookings take turns on the student's row, and the second finds
    the tokens promised."""
    fake = FakeClock()
    app.config["SOMA_CLOCK"] = wide_app.config["SOMA_CLOCK"] = fake
    with app.app_context():
        student = make_funded_user(10, "student")
        teachers = [make_user("teacher") for _ in range(2)]
        student_id, teacher_ids = student.id, [teacher.id for teacher in teachers]

    def booking(number: int):
        def book():
            student = db.session.get(User, student_id)
            start = fake.now + SLOT * (1 + 2 * number)
            return service.book(student, teacher_ids[number], "", start, 60, f"twice{number}").id

        return book

    outcomes = race(wide_app, [booking(0), booking(1)])

    assert len(ok(outcomes)) == 1, outcomes
    [error] = errors(outcomes)
    assert type(error) is service.BookingError
    assert error.message == (
        "This class costs 10 tokens. You have 10 tokens available, and the class you booked "
        "that has not started yet will hold 10 tokens: you can afford 0 tokens more. "
        "Buy tokens, or choose a shorter class."
    )
    with app.app_context():
        assert len(class_rows()) == 1
        assert balances(student_id) == (10, 0)


def test_a_teacher_starting_two_classes_at_once_starts_one(app, wide_app, monkeypatch):
    """Both starts pass the service's check (it is skipped here, as if both had read
    before either wrote): the unique index on live classes refuses the second."""
    fake = FakeClock()
    app.config["SOMA_CLOCK"] = wide_app.config["SOMA_CLOCK"] = fake
    with app.app_context():
        teacher = make_user("teacher")
        students = [make_funded_user(10, "student") for _ in range(2)]
        ids = [
            service.book(
                student, teacher.id, "", fake.now + SLOT * (1 + number), 60, f"s{number}"
            ).id
            for number, student in enumerate(students)
        ]
        teacher_id, student_ids = teacher.id, [student.id for student in students]
    fake.advance(minutes=115)  # 10:55: the first class runs to 11:00, the second may start
    monkeypatch.setattr(service, "_refuse_second_live", lambda session: None)

    def start(class_id: int):
        def act():
            session = db.session.get(ClassSession, class_id)
            return service.act(session, Action.START, db.session.get(User, teacher_id)).id

        return act

    outcomes = race(wide_app, [start(class_id) for class_id in ids])

    assert len(ok(outcomes)) == 1, outcomes
    [error] = errors(outcomes)
    assert type(error) is InvalidMove
    assert error.message == (
        "Another class of this teacher or student has just started. Nothing was changed."
    )
    with app.app_context():
        db.session.expire_all()
        statuses = sorted(db.session.get(ClassSession, class_id).status for class_id in ids)
        assert statuses == ["in_progress", "scheduled"]
        assert sorted(balances(student_id) for student_id in student_ids) == [(0, 10), (10, 0)]
        assert run_audit() == []
