"""Classes on PostgreSQL: a due class raced from every side, and the timer's one round trip."""

import tempfile
from collections import Counter
from datetime import timedelta

import psycopg
from sqlalchemy import event, select

from soma.audit import run_audit
from soma.classes import service
from soma.classes.machine import Action, InvalidMove
from soma.extensions import db
from soma.models import ClassEvent, ClassSession, JournalEntry, User
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
