"""Classes on PostgreSQL: the page tests again, and a due class raced from every side."""

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
from tests.helpers import FakeClock, balances, fund, make_user, text_of
from tests.postgres.test_ledger_pg import errors, ok, race
from tests.unit.test_classes import (  # noqa: F401 (collected here with the PostgreSQL app)
    booked,
    control,
    people,
    test_a_failure_after_the_class_row_is_claimed_rolls_everything_back,
    test_a_start_too_early_or_unaffordable_changes_nothing,
    test_booking_a_class_freezes_its_cost_and_shows_it_to_both_sides,
    test_ending_early_charges_pro_rata,
    test_invalid_moves_get_409_and_change_nothing,
    test_pause_and_resume_freeze_and_continue_the_clock,
    test_start_holds_the_cost_and_the_tracker_shows_it,
    test_the_audit_recomputes_an_early_ending_from_its_active_time,
    test_the_sweeper_completes_a_resumed_class_and_dates_the_payment_when_it_is_made,
    test_the_sweeper_settles_due_classes_and_ends_those_paused_too_long,
    test_the_timer_ends_a_class_paused_too_long,
    test_the_timer_settles_a_due_class_once_and_stops_polling,
)


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


def test_the_audit_names_a_class_that_says_it_charged_what_the_ledger_did_not(app, clock):
    with app.app_context():
        student, teacher = make_user("student"), make_user("teacher")
        fund(student.id, 20)
        session = service.book(
            student, teacher.id, "Audit", clock.now + timedelta(minutes=5), 60, "a"
        )
        service.act(session, Action.START, teacher)
        clock.advance(minutes=20)
        service.act(session, Action.END_EARLY, teacher)
        assert run_audit() == []
        db.session.execute(
            ClassSession.__table__.update()
            .where(ClassSession.id == session.id)
            .values(charged_tokens=10)
        )
        db.session.commit()
        (violation,) = run_audit()
        assert str(violation) == (
            f"class-settlement: class {session.id} says it charged 10 tokens but the ledger paid 4"
        )


def test_the_timer_poll_is_one_round_trip(app, client, auth, people, booked, clock):  # noqa: F811
    """Read off libpq's protocol trace: no BEGIN, no ROLLBACK, one SELECT."""
    clock.advance(minutes=60)
    control(client, booked, "start")
    clock.advance(seconds=42)
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
