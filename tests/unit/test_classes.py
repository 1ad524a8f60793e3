"""Classes through the pages: booking, the teacher's controls, the tracker, the sweeper.

Time is the app's clock (`SOMA_CLOCK`), a FakeClock the tests move.
"""

from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from soma import ledger
from soma.audit import run_audit
from soma.classes import service
from soma.classes.machine import Action
from soma.extensions import db, limiter
from soma.models import ClassEvent, ClassSession, JournalEntry, User
from tests.builders import fund, make_funded_user, make_user
from tests.helpers import balances, csrf_from, errors, ok, race, text_of

START = "2026-11-24T10:00"


@pytest.fixture
def people(app, clock):
    with app.app_context():
        student = make_user("student", name="Sam Student")
        teacher = make_user("teacher", name="Tara Teacher")
        other_teacher = make_user("teacher", name="Otto Other")
        other_student = make_user("student", name="Olga Other")
        fund(student.id, 25)
        return {
            "student": student.id,
            "teacher": teacher.id,
            "other_teacher": other_teacher.id,
            "other_student": other_student.id,
            "emails": {
                "student": student.email,
                "teacher": teacher.email,
                "other_teacher": other_teacher.email,
                "other_student": other_student.email,
            },
        }


def login(client, auth, people, who: str):
    """Log in as `who`; these tests switch people more often than the log-in limit allows."""
    with client.application.app_context():
        limiter.reset()
    auth.logout()
    response = auth.login(people["emails"][who])
    assert response.status_code == 302


def book(client, people, minutes=60, start=START, title="Fractions", key="k1", teacher="teacher"):
    page = client.get("/classes/new").get_data(as_text=True)
    return client.post(
        "/classes/new",
        data={
            "csrf_token": csrf_from(page),
            "teacher": people[teacher],
            "title": title,
            "start": start,
            "duration": minutes,
            "key": key,
        },
    )


@pytest.fixture
def booked(app, client, auth, people):
    """A 60-minute class at 10:00, booked by the student; the teacher is logged in."""
    login(client, auth, people, "student")
    response = book(client, people)
    assert response.status_code == 303
    class_id = int(response.headers["Location"].rsplit("/", 1)[1])
    login(client, auth, people, "teacher")
    return class_id


def control(client, class_id: int, name: str, htmx: bool = True):
    page = client.get(f"/classes/{class_id}").get_data(as_text=True)
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(
        f"/classes/{class_id}/{name}", data={"csrf_token": csrf_from(page)}, headers=headers
    )


def the_class(app, class_id: int) -> ClassSession:
    with app.app_context():
        session = db.session.get(ClassSession, class_id)
        db.session.expunge(session)
        return session


def entries_for(app, class_id: int) -> list[tuple[str, int]]:
    with app.app_context():
        rows = db.session.execute(
            select(JournalEntry.kind, JournalEntry.tokens)
            .where(JournalEntry.reference_type == "class", JournalEntry.reference_id == class_id)
            .order_by(JournalEntry.id)
        ).all()
        return [tuple(row) for row in rows]


def money(app, people) -> tuple:
    with app.app_context():
        return balances(people["student"]), balances(people["teacher"])


# Booking -----------------------------------------------------------------------------------


def test_the_booking_page_shows_costs_and_what_the_student_can_afford(client, auth, people):
    login(client, auth, people, "student")
    text = text_of(client.get("/classes/new").get_data(as_text=True))
    assert "You have 25 tokens available." in text
    assert "60 minutes 10 tokens you can afford 2 such classes" in text
    assert "30 minutes 5 tokens you can afford 5 such classes" in text
    assert "45 minutes 8 tokens you can afford 3 such classes" in text
    assert "120 minutes 20 tokens you can afford 1 such class " in text
    assert "Tara Teacher" in text and "Otto Other" in text


def test_the_booking_page_says_how_many_tokens_are_missing(app, client, auth, people):
    with app.app_context():
        ledger.transfer(people["student"], people["other_student"], 20, key="drain")
        db.session.commit()
    login(client, auth, people, "student")
    text = text_of(client.get("/classes/new").get_data(as_text=True))
    assert "60 minutes 10 tokens you need 5 more tokens · buy tokens" in text
    assert "30 minutes 5 tokens you can afford 1 such class " in text


def test_booking_a_class_freezes_its_cost_and_shows_it_to_both_sides(app, client, auth, people):
    login(client, auth, people, "student")
    response = book(client, people, minutes=45, title="  Algebra   basics ")
    assert response.status_code == 303
    class_id = int(response.headers["Location"].rsplit("/", 1)[1])
    session = the_class(app, class_id)
    assert (session.title, session.duration_minutes, session.cost_tokens) == (
        "Algebra basics",
        45,
        8,
    )
    assert (session.status, session.student_id, session.teacher_id) == (
        "scheduled",
        people["student"],
        people["teacher"],
    )
    again = book(client, people, minutes=45, title="Algebra basics")  # a double submit
    assert again.headers["Location"] == response.headers["Location"]
    other = book(client, people, minutes=60, title="Algebra basics")  # same key, other class
    assert other.status_code == 409
    assert "This booking form was already used for another class" in text_of(
        other.get_data(as_text=True)
    )
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ClassSession)) == 1

    home = text_of(client.get("/student").get_data(as_text=True))
    assert (
        "Upcoming Algebra basics · 24 Nov 2026, 10:00 UTC · 45 min · 8 tokens · with Tara Teacher"
        in home
    )
    login(client, auth, people, "teacher")
    home = text_of(client.get("/teacher").get_data(as_text=True))
    assert "Algebra basics · 24 Nov 2026, 10:00 UTC · 45 min · 8 tokens · with Sam Student" in home
    assert money(app, people) == ((25, 0), (0, 0))  # booking holds nothing


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"start": "2026-11-24T08:59"}, "Choose a start time in the future."),
        ({"start": ""}, "Choose a date and a time."),
        ({"teacher": "999999"}, "Choose one of our teachers."),
        ({"teacher": "other_student"}, "Choose one of our teachers."),
        ({"duration": "50"}, "A class lasts 30, 45, 60, 90, 120 minutes."),
        ({"duration": "sixty"}, "A class lasts 30, 45, 60, 90, 120 minutes."),
    ],
)
def test_a_booking_with_a_bad_field_is_refused_on_that_field(
    app, client, auth, people, change, message
):
    login(client, auth, people, "student")
    page = client.get("/classes/new").get_data(as_text=True)
    data = {"csrf_token": csrf_from(page), "teacher": people["teacher"], "title": "x",
            "start": START, "duration": "60", "key": "bad"}  # fmt: skip
    data.update(change)
    if data["teacher"] == "other_student":
        data["teacher"] = people["other_student"]
    response = client.post("/classes/new", data=data)
    assert response.status_code == 422
    assert message in text_of(response.get_data(as_text=True))
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ClassSession)) == 0


# Booking rules -----------------------------------------------------------------------------


def booked_id(response) -> int:
    assert response.status_code == 303, text_of(response.get_data(as_text=True))
    return int(response.headers["Location"].rsplit("/", 1)[1])


def class_rows(app) -> list[tuple]:
    with app.app_context():
        rows = db.session.execute(
            select(
                ClassSession.student_id,
                ClassSession.teacher_id,
                ClassSession.scheduled_start,
                ClassSession.scheduled_end,
            ).order_by(ClassSession.id)
        ).all()
        return [
            (student, teacher, f"{start:%H:%M}-{end:%H:%M}")
            for student, teacher, start, end in rows
        ]


def booking_refusal(response) -> str:
    assert response.status_code == 422
    return text_of(response.get_data(as_text=True))


def test_a_teacher_is_never_booked_twice_at_once(app, client, auth, people):
    login(client, auth, people, "student")
    booked_id(book(client, people))  # 10:00-11:00
    with app.app_context():
        fund(people["other_student"], 30)
    login(client, auth, people, "other_student")
    tries = [("2026-11-24T10:30", 30), ("2026-11-24T09:30", 45), (START, 120)]
    for n, (start, minutes) in enumerate(tries):
        text = booking_refusal(book(client, people, minutes, start, key=f"overlap-{n}"))
        assert (
            "Tara Teacher is already booked on 24 Nov 2026 from 10:00 to 11:00 UTC. "
            "Choose another time." in text
        )
    # Back to back is not an overlap: the booked times are half-open.
    booked_id(book(client, people, 30, "2026-11-24T11:00", key="after"))
    booked_id(book(client, people, 30, "2026-11-24T09:30", key="before"))
    student, other, teacher = people["student"], people["other_student"], people["teacher"]
    assert class_rows(app) == [
        (student, teacher, "10:00-11:00"),
        (other, teacher, "11:00-11:30"),
        (other, teacher, "09:30-10:00"),
    ]
    assert money(app, people) == ((25, 0), (0, 0))  # a booking holds nothing


def test_a_student_never_books_two_classes_at_once(app, client, auth, people):
    login(client, auth, people, "student")
    booked_id(book(client, people))  # 10:00-11:00 with Tara
    response = book(client, people, 30, "2026-11-24T10:45", key="other", teacher="other_teacher")
    text = booking_refusal(response)
    assert (
        "You already have a class booked on 24 Nov 2026 from 10:00 to 11:00 UTC (“Fractions”). "
        "Choose another time." in text
    )
    assert len(class_rows(app)) == 1
    # Once that class is cancelled, its time is free again.
    with app.app_context():
        first = db.session.scalars(select(ClassSession)).one()
        service.act(first, Action.CANCEL, first.student)
    booked_id(book(client, people, 30, "2026-11-24T10:45", key="again", teacher="other_teacher"))
    assert class_rows(app)[1] == (people["student"], people["other_teacher"], "10:45-11:15")


def test_a_booking_needs_tokens_for_it_and_for_the_classes_not_yet_started(
    app, client, auth, people, clock
):
    login(client, auth, people, "student")  # 25 tokens
    booked_id(book(client, people, 60, "2026-11-24T10:00", key="a"))  # 10 tokens
    booked_id(book(client, people, 60, "2026-11-24T12:00", key="b"))  # 10 tokens
    page = text_of(client.get("/classes/new").get_data(as_text=True))
    assert (
        "You have 25 tokens available. The 2 classes you booked that have not started yet will "
        "hold 20 tokens when they start, so you can spend 5 tokens on new bookings. Buy tokens"
        in page
    )
    assert "60 minutes 10 tokens you need 5 more tokens · buy tokens" in page
    assert "30 minutes 5 tokens you can afford 1 such class " in page

    text = booking_refusal(book(client, people, 60, "2026-11-24T14:00", key="c"))
    assert (
        "This class costs 10 tokens. You have 25 tokens available, and the 2 classes you booked "
        "that have not started yet will hold 20 tokens: you can afford 5 tokens more. "
        "Buy tokens, or choose a shorter class." in text
    )
    assert len(class_rows(app)) == 2
    booked_id(book(client, people, 30, "2026-11-24T14:00", key="d"))  # 5 tokens: exactly enough
    text = booking_refusal(book(client, people, 30, "2026-11-24T16:00", key="e"))
    assert "you can afford 0 tokens more" in text
    assert len(class_rows(app)) == 3

    # A started class holds its cost: it leaves the promised sum as it enters the locked one.
    clock.advance(minutes=60)  # 10:00
    login(client, auth, people, "teacher")
    first = class_rows(app)
    assert control(client, booked_id_of(app, "10:00"), "start").status_code == 200
    assert money(app, people) == ((15, 10), (0, 0))
    login(client, auth, people, "student")
    page = text_of(client.get("/classes/new").get_data(as_text=True))
    assert (
        "You have 15 tokens available. The 2 classes you booked that have not started yet will "
        "hold 15 tokens when they start, so you can spend 0 tokens on new bookings." in page
    )
    assert class_rows(app) == first
    assert money(app, people) == ((15, 10), (0, 0))


def booked_id_of(app, start: str) -> int:
    with app.app_context():
        return next(
            session.id
            for session in db.session.scalars(select(ClassSession))
            if f"{session.scheduled_start:%H:%M}" == start
        )


def test_a_student_without_tokens_cannot_book(app, client, auth, people):
    login(client, auth, people, "other_student")  # 0 tokens
    page = text_of(client.get("/classes/new").get_data(as_text=True))
    assert "You have 0 tokens available. Buy tokens" in page
    text = booking_refusal(book(client, people, 30))
    assert (
        "This class costs 5 tokens. You have 0 tokens available: you can afford 0 tokens more. "
        "Buy tokens, or choose a shorter class." in text
    )
    assert class_rows(app) == []


def test_a_class_past_its_booked_end_promises_nothing(app, client, auth, people, clock):
    """A class never started cannot start after its booked end: it will hold nothing."""
    login(client, auth, people, "student")
    booked_id(book(client, people, 120, "2026-11-24T10:00", key="missed"))  # 20 tokens
    assert "you can afford 5 tokens more" in booking_refusal(
        book(client, people, 60, "2026-11-24T14:00", key="late")
    )
    clock.advance(minutes=180)  # 12:00: the missed class can no longer start
    booked_id(book(client, people, 120, "2026-11-24T14:00", key="late2"))
    assert [row[2] for row in class_rows(app)] == ["10:00-12:00", "14:00-16:00"]


def test_either_side_can_cancel_a_scheduled_class_and_nothing_moves(
    app, client, auth, people, booked
):
    response = control(client, booked, "cancel", htmx=False)
    assert response.status_code == 303
    assert the_class(app, booked).status == "cancelled"
    assert entries_for(app, booked) == []
    page = text_of(client.get(f"/classes/{booked}").get_data(as_text=True))
    assert "Cancelled" in page and "No tokens moved" in page and "Time left" not in page
    assert "The class was cancelled before it started." in page


# The teacher's controls --------------------------------------------------------------------


def test_start_holds_the_cost_and_the_tracker_shows_it(app, client, auth, people, booked, clock):
    clock.advance(minutes=55)  # 09:55, five minutes early
    response = control(client, booked, "start")
    assert response.status_code == 200
    fragment = text_of(response.get_data(as_text=True))
    assert "In progress" in fragment
    assert "Ended now, this class would earn you 0 tokens; 10 tokens if it runs its full time." in (
        fragment
    )
    assert "locked" not in fragment  # the teacher's balance line: what they can withdraw
    assert money(app, people) == ((15, 10), (0, 0))
    assert entries_for(app, booked) == [("class_hold", 10)]
    session = the_class(app, booked)
    assert session.hold_entry_id is not None
    assert session.due_at == clock.now + timedelta(minutes=60)

    clock.advance(seconds=75)
    timer = client.get(f"/classes/{booked}/timer?seen=in_progress")
    text = text_of(timer.get_data(as_text=True))
    assert "Elapsed 01:15" in text and "Time left 58:45" in text
    assert 'hx-trigger="every 1s"' in timer.get_data(as_text=True)
    assert "HX-Trigger" not in timer.headers  # nothing changed since the page last saw it

    login(client, auth, people, "student")
    page = text_of(client.get(f"/classes/{booked}").get_data(as_text=True))
    assert "Your balance: 15 tokens available · 10 tokens locked" in page
    assert "Elapsed 01:15" in page


def test_a_start_too_early_or_unaffordable_changes_nothing(
    app, client, auth, people, booked, clock
):
    response = control(client, booked, "start")  # 09:00, an hour early
    assert response.status_code == 409
    assert "can be started from 24 Nov 2026, 09:50 UTC" in text_of(response.get_data(as_text=True))

    with app.app_context():
        ledger.transfer(people["student"], people["other_student"], 19, key="drain")
        db.session.commit()
    clock.advance(minutes=50)
    response = control(client, booked, "start")
    assert response.status_code == 409
    text = text_of(response.get_data(as_text=True))
    assert (
        "The student cannot afford this class: it costs 10 tokens and they have 6 available."
        in text
    )
    assert the_class(app, booked).status == "scheduled"
    assert entries_for(app, booked) == []
    assert money(app, people) == ((6, 0), (0, 0))

    login(client, auth, people, "student")
    page = text_of(client.get(f"/classes/{booked}").get_data(as_text=True))
    assert "This class needs 10 tokens when it starts and you have 6 tokens. Buy tokens" in page


def test_pause_and_resume_freeze_and_continue_the_clock(app, client, auth, people, booked, clock):
    clock.advance(minutes=60)
    control(client, booked, "start")
    clock.advance(minutes=10)
    assert control(client, booked, "pause").status_code == 200
    clock.advance(minutes=5)
    text = text_of(client.get(f"/classes/{booked}/timer?seen=paused").get_data(as_text=True))
    assert "Paused" in text and "Elapsed 10:00" in text and "Time left 50:00" in text
    assert control(client, booked, "resume").status_code == 200
    clock.advance(seconds=30)
    text = text_of(client.get(f"/classes/{booked}/timer?seen=in_progress").get_data(as_text=True))
    assert "Elapsed 10:30" in text
    with app.app_context():
        kinds = db.session.scalars(
            select(ClassEvent.kind).where(ClassEvent.class_id == booked).order_by(ClassEvent.id)
        ).all()
        assert kinds == ["start", "pause", "resume"]


def test_invalid_moves_get_409_and_change_nothing(app, client, auth, people, booked, clock):
    clock.advance(minutes=60)
    control(client, booked, "start")
    assert control(client, booked, "start").status_code == 409
    clock.advance(minutes=3)
    control(client, booked, "pause")
    before = the_class(app, booked)
    clock.advance(minutes=1)
    response = control(client, booked, "pause")
    assert response.status_code == 409
    assert "This class is already paused." in text_of(response.get_data(as_text=True))
    after = the_class(app, booked)
    assert (after.status, after.version, after.active_seconds) == ("paused", before.version, 180)
    control(client, booked, "abort")
    response = control(client, booked, "resume", htmx=False)  # a plain form: the whole page
    assert response.status_code == 409
    text = text_of(response.get_data(as_text=True))
    assert "This class is over; it cannot be resumed now." in text
    assert "Active time 03:00 of 60:00" in text  # the tracker page, with the error by the controls
    assert "Time left" not in text
    assert entries_for(app, booked) == [("class_hold", 10), ("class_release", 10)]
    assert money(app, people) == ((25, 0), (0, 0))


def test_only_the_classes_teacher_acts_and_only_its_people_see_it(
    app, client, auth, people, booked, clock
):
    clock.advance(minutes=60)
    login(client, auth, people, "student")
    assert control(client, booked, "start").status_code == 403
    login(client, auth, people, "other_teacher")
    assert client.get(f"/classes/{booked}").status_code == 404
    assert client.get(f"/classes/{booked}/timer").status_code == 404
    login(client, auth, people, "other_student")
    assert client.get(f"/classes/{booked}").status_code == 404
    assert the_class(app, booked).status == "scheduled"
    with app.app_context():
        admin_email = make_user("admin").email
        limiter.reset()
    auth.logout()
    auth.login(admin_email)
    assert "Fractions" in client.get(f"/classes/{booked}").get_data(as_text=True)


def test_a_teacher_cannot_start_a_second_class_while_one_is_live(app, client, auth, people, clock):
    login(client, auth, people, "student")
    first = booked_id(book(client, people, 60, "2026-11-24T10:00", key="first"))
    with app.app_context():
        fund(people["other_student"], 10)
    login(client, auth, people, "other_student")
    second = booked_id(book(client, people, 60, "2026-11-24T11:00", key="second"))
    login(client, auth, people, "teacher")
    clock.advance(minutes=60)  # 10:00
    control(client, first, "start")
    clock.advance(minutes=52)  # 10:52: the second class's start window is open
    control(client, first, "pause")
    refusal = (
        f"You have another class paused: “Fractions” (#{first}). End it before starting this "
        "one. Nothing was changed."
    )
    for htmx in (True, False):  # the panel for htmx, the whole page for a plain form
        response = control(client, second, "start", htmx=htmx)
        assert response.status_code == 409
        assert refusal in text_of(response.get_data(as_text=True))
    assert (the_class(app, first).status, the_class(app, second).status) == ("paused", "scheduled")
    assert entries_for(app, second) == []
    with app.app_context():
        assert balances(people["other_student"]) == (10, 0)
    control(client, first, "resume")
    response = control(client, second, "start")
    assert "You have another class in progress" in text_of(response.get_data(as_text=True))

    control(client, first, "end")  # ended early at 10:52
    assert control(client, second, "start").status_code == 200
    assert (the_class(app, first).status, the_class(app, second).status) == (
        "ended_early",
        "in_progress",
    )
    assert entries_for(app, second) == [("class_hold", 10)]
    with app.app_context():
        assert balances(people["other_student"]) == (0, 10)
        assert run_audit() == []


def test_a_class_cannot_start_while_its_student_is_in_another(app, client, auth, people, clock):
    login(client, auth, people, "student")
    first = booked_id(book(client, people, 60, "2026-11-24T10:00", key="first"))
    second = booked_id(
        book(client, people, 30, "2026-11-24T11:00", key="second", teacher="other_teacher")
    )
    clock.advance(minutes=60)
    login(client, auth, people, "teacher")
    control(client, first, "start")
    clock.advance(minutes=55)  # 10:55: Tara's class runs on; Otto wants to start his
    login(client, auth, people, "other_teacher")
    response = control(client, second, "start")
    assert response.status_code == 409
    assert (
        "The student is still in another class, which is in progress. This class can start "
        "once it ends. Nothing was changed." in text_of(response.get_data(as_text=True))
    )
    assert the_class(app, second).status == "scheduled"
    assert entries_for(app, second) == []
    assert money(app, people) == ((15, 10), (0, 0))


def test_the_database_refuses_a_second_live_class_the_check_missed(
    app, client, auth, people, clock, monkeypatch
):
    """Without the service's check (as under a race), the unique index refuses the start:
    same 409, nothing written."""
    login(client, auth, people, "student")
    first = booked_id(book(client, people, 60, "2026-11-24T10:00", key="first"))
    with app.app_context():
        fund(people["other_student"], 10)
    login(client, auth, people, "other_student")
    second = booked_id(book(client, people, 60, "2026-11-24T11:00", key="second"))
    login(client, auth, people, "teacher")
    clock.advance(minutes=60)
    control(client, first, "start")
    clock.advance(minutes=55)
    with app.app_context():
        entries_before = db.session.scalar(select(func.count()).select_from(JournalEntry))
    monkeypatch.setattr(service, "_refuse_second_live", lambda session: None)
    response = control(client, second, "start")
    assert response.status_code == 409
    assert "Another class of this teacher or student has just started. Nothing was changed." in (
        text_of(response.get_data(as_text=True))
    )
    second_class = the_class(app, second)
    assert (second_class.status, second_class.version, second_class.hold_entry_id) == (
        "scheduled",
        0,
        None,
    )
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(JournalEntry)) == entries_before
        assert balances(people["other_student"]) == (10, 0)
        assert run_audit() == []


# Completion --------------------------------------------------------------------------------


def test_the_timer_settles_a_due_class_once_and_stops_polling(
    app, client, auth, people, booked, clock
):
    clock.advance(minutes=60)
    control(client, booked, "start")
    clock.advance(minutes=59, seconds=59)
    timer = client.get(f"/classes/{booked}/timer?seen=in_progress")
    assert "Time left 00:01" in text_of(timer.get_data(as_text=True))
    clock.advance(seconds=1)
    timer = client.get(f"/classes/{booked}/timer?seen=in_progress")
    html = timer.get_data(as_text=True)
    text = text_of(html)
    assert "Completed Active time 60:00 of 60:00 You earned 10 tokens" in text
    assert "Returned to your student 0 tokens" in text and "Time left" not in text
    assert "hx-trigger" not in html  # the polling stops
    assert timer.headers["HX-Trigger"] == "class-changed"  # the balance refreshes
    for _ in range(3):  # more polls, a page load, the sweeper: nothing more moves
        client.get(f"/classes/{booked}/timer?seen=in_progress")
    client.get(f"/classes/{booked}")
    with app.app_context():
        assert service.sweep() == service.SweepResult(0, 0, 0)
    assert entries_for(app, booked) == [("class_hold", 10), ("class_settle", 10)]
    assert money(app, people) == ((15, 0), (10, 0))
    session = the_class(app, booked)
    assert (session.status, session.end_reason, session.charged_tokens) == (
        "completed",
        "completed",
        10,
    )
    panel = text_of(client.get(f"/classes/{booked}/panel").get_data(as_text=True))
    assert "Your balance: 10 tokens available to withdraw" in panel and "locked" not in panel
    with app.app_context():
        assert run_audit() == []


def test_ending_early_charges_pro_rata(app, client, auth, people, booked, clock):
    clock.advance(minutes=60)
    control(client, booked, "start")
    clock.advance(minutes=21)
    response = control(client, booked, "end")
    text = text_of(response.get_data(as_text=True))
    assert "Ended early Active time 21:00 of 60:00" in text
    assert "You earned 4 tokens Returned to your student 6 tokens" in text
    assert "You ended the class early; you earned for its active time." in text
    assert "You earned 4 tokens ($0.16) for this class." in text  # at the teacher rate, frozen
    assert money(app, people) == ((21, 0), (4, 0))
    with app.app_context():
        messages = [n.message for n in db.session.scalars(select(ledger_notifications()))]
    assert "“Fractions” ended: 4 tokens paid, 6 returned to you." in messages
    assert "“Fractions” ended: you earned 4 tokens." in messages


def ledger_notifications():
    from soma.models import Notification

    return Notification


def test_the_sweeper_settles_due_classes_and_ends_those_paused_too_long(app, clock, runner):
    """Three classes at once, each of its own teacher and student (a teacher, and a
    student, have one live class at a time)."""
    with app.app_context():
        pairs = [
            (make_funded_user(5, name=f"Student {n}"), make_user("teacher", name=f"Teacher {n}"))
            for n in range(3)
        ]
        people = [(student.id, teacher.id) for student, teacher in pairs]
        start = clock() + timedelta(minutes=60)
        ids = [
            service.book(student, teacher.id, f"Class {n}", start, 30, key=f"sweep{n}").id
            for n, (student, teacher) in enumerate(pairs)
        ]
        clock.advance(minutes=60)
        for class_id, (_, teacher) in zip(ids, pairs, strict=True):
            service.act(db.session.get(ClassSession, class_id), Action.START, teacher)
        service.act(db.session.get(ClassSession, ids[1]), Action.PAUSE, pairs[1][1])  # at once
        clock.advance(minutes=5)
        service.act(db.session.get(ClassSession, ids[2]), Action.PAUSE, pairs[2][1])  # after 5
        clock.advance(minutes=29)
    result = runner.invoke(args=["soma", "sweep"])
    assert result.exit_code == 0, result.output
    assert "1 completed, 1 ended early (paused too long), 0 failed" in result.output
    statuses = [the_class(app, class_id).status for class_id in ids]
    assert statuses == ["completed", "ended_early", "paused"]
    clock.advance(minutes=2)
    with app.app_context():
        assert service.sweep() == service.SweepResult(0, 1, 0)
    # 5 + (0 back in full) + ceil(5 x 300/1800) = 1
    assert entries_for(app, ids[0]) == [("class_hold", 5), ("class_settle", 5)]
    assert entries_for(app, ids[1]) == [("class_hold", 5), ("class_release", 5)]
    assert entries_for(app, ids[2]) == [("class_hold", 5), ("class_settle", 1)]
    with app.app_context():
        assert [(balances(student), balances(teacher)) for student, teacher in people] == [
            ((0, 0), (5, 0)),
            ((5, 0), (0, 0)),
            ((4, 0), (1, 0)),
        ]
        assert run_audit() == []


# PostgreSQL's read goes through the driver, past these events: there the test is
# tests/postgres/test_classes_pg.py, read off libpq's protocol trace.
@pytest.mark.backends("sqlite")
def test_the_timer_poll_answers_with_one_query(app, client, booked, clock):
    """The hot path: every open class page calls it every second. Its one query reads
    the class and the viewer's row together (on PostgreSQL: see test_classes_pg)."""
    clock.advance(minutes=60)
    control(client, booked, "start")
    clock.advance(seconds=42)
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        response = client.get(f"/classes/{booked}/timer?seen=in_progress")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert "Elapsed 00:42" in text_of(response.get_data(as_text=True))
    assert len(statements) == 1, statements
    assert "FROM class_sessions JOIN users" in statements[0]


def test_sweep_every_repeats_its_pass_until_stopped(app, runner, clock, monkeypatch):
    passes = []

    def sleep(seconds):
        passes.append(seconds)
        if len(passes) == 3:
            raise KeyboardInterrupt  # Ctrl-C

    monkeypatch.setattr("soma.cli.time.sleep", sleep)
    result = runner.invoke(args=["soma", "sweep", "--every", "7"])
    assert result.exit_code == 0, result.output
    assert passes == [7, 7, 7]


def test_a_class_can_be_started_until_its_booked_end_and_not_after(app, client, booked, clock):
    clock.advance(minutes=120)  # 11:00: the 60-minute class booked for 10:00 is over
    response = control(client, booked, "start")
    assert response.status_code == 409
    assert "booked to end by 24 Nov 2026, 11:00 UTC; it can no longer be started" in text_of(
        response.get_data(as_text=True)
    )
    assert entries_for(app, booked) == []
    assert control(client, booked, "cancel").status_code == 200


def test_the_timer_ends_a_class_paused_too_long(app, client, auth, people, booked, clock):
    clock.advance(minutes=60)
    control(client, booked, "start")
    clock.advance(minutes=5)
    control(client, booked, "pause")
    clock.advance(minutes=31)
    text = text_of(client.get(f"/classes/{booked}/timer?seen=paused").get_data(as_text=True))
    assert "Ended early Active time 05:00 of 60:00" in text
    assert "You earned 1 token Returned to your student 9 tokens" in text
    assert "The class stayed paused for 30 minutes and ended early" in text
    assert money(app, people) == ((24, 0), (1, 0))


def test_a_failure_after_the_class_row_is_claimed_rolls_everything_back(
    app, people, booked, clock, monkeypatch
):
    clock.advance(minutes=60)

    def broken_hold(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr("soma.classes.service.ledger.hold", broken_hold)
    with app.app_context():
        session = db.session.get(ClassSession, booked)
        teacher = db.session.get(ClassSession, booked).teacher
        with pytest.raises(RuntimeError):
            service.act(session, service.Action.START, teacher)
    after = the_class(app, booked)
    assert (after.status, after.version, after.hold_entry_id) == ("scheduled", 0, None)
    with app.app_context():
        assert (
            db.session.scalars(select(ClassEvent).where(ClassEvent.class_id == booked)).all() == []
        )
    assert money(app, people) == ((25, 0), (0, 0))


def test_the_sweeper_completes_a_resumed_class_and_dates_the_payment_when_it_is_made(
    app, client, people, booked, clock
):
    clock.advance(minutes=60)  # 10:00
    control(client, booked, "start")
    clock.advance(minutes=20)
    control(client, booked, "pause")
    clock.advance(minutes=10)
    control(client, booked, "resume")  # 10:30, 40 minutes left: due at 11:10
    assert the_class(app, booked).due_at == clock.now + timedelta(minutes=40)
    clock.advance(minutes=100)  # 12:10: nobody watched; the sweeper comes an hour late
    with app.app_context():
        assert service.sweep() == service.SweepResult(1, 0, 0)
        complete = db.session.scalars(
            select(ClassEvent).where(ClassEvent.class_id == booked, ClassEvent.kind == "complete")
        ).one()
        assert complete.at == clock.now - timedelta(minutes=60)  # it ended at 11:10
        settle = db.session.scalars(
            select(JournalEntry).where(
                JournalEntry.reference_id == booked, JournalEntry.kind == "class_settle"
            )
        ).one()
        assert settle.created_at == clock.now  # the money moved now, in ledger order
    assert money(app, people) == ((15, 0), (10, 0))


def test_the_audit_recomputes_an_early_ending_from_its_active_time(app, people, booked, clock):
    clock.advance(minutes=60)
    with app.app_context():
        session = db.session.get(ClassSession, booked)
        teacher = session.teacher
        service.act(session, service.Action.START, teacher)
        clock.advance(minutes=6)
        service.act(db.session.get(ClassSession, booked), service.Action.END_EARLY, teacher)
        assert run_audit() == []
        db.session.execute(
            ClassSession.__table__.update()
            .where(ClassSession.id == booked)
            .values(active_seconds=3000)
        )
        db.session.commit()
        (violation,) = run_audit()
        assert str(violation) == (
            f"class-settlement: class {booked} is ended_early after 3000 active seconds, "
            "so owes 9 tokens, but paid 1"
        )


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


def test_two_students_booking_one_slot_at_once_book_one_class(app, clock):
    """On PostgreSQL the exclusion constraint decides (tests/postgres has the race forced
    past the check); on SQLite the first booking's write lock makes the second wait, and
    its check then sees the first."""
    with app.app_context():
        teacher = make_user("teacher", name="Tara Teacher")
        students = [make_funded_user(10) for _ in range(2)]
        teacher_id, student_ids = teacher.id, [student.id for student in students]
    start = clock() + timedelta(hours=1)

    def booking(student_id: int):
        def book():
            student = db.session.get(User, student_id)
            return service.book(student, teacher_id, "", start, 60, f"slot{student_id}").id

        return book

    outcomes = race(app, [booking(student_id) for student_id in student_ids])

    assert len(ok(outcomes)) == 1, outcomes
    assert [str(error) for error in errors(outcomes)] == [
        "Tara Teacher is already booked on 24 Nov 2026 from 10:00 to 11:00 UTC. "
        "Choose another time."
    ]
    winner = student_ids[[status for status, _ in outcomes].index("ok")]
    assert [row[:2] for row in class_rows(app)] == [(winner, teacher_id)]
    with app.app_context():
        assert [balances(student_id) for student_id in student_ids] == [(10, 0), (10, 0)]


def deadlock_at_commit(monkeypatch, before=None, times=1):
    """Make the next commit (the next `times` commits) fail as PostgreSQL fails a
    deadlock's victim: its transaction rolled back, then DeadlockDetected; `before()` runs
    first (another booking)."""
    from psycopg.errors import DeadlockDetected
    from sqlalchemy.exc import OperationalError

    real = db.session.commit
    calls = []

    def commit():
        if len(calls) >= times:
            return real()
        calls.append(1)
        db.session.rollback()
        if before is not None:
            before()
        raise OperationalError("INSERT INTO class_sessions ...", {}, DeadlockDetected("deadlock"))

    monkeypatch.setattr(db.session, "commit", commit)
    return calls


def test_a_booking_refused_by_a_deadlock_is_booked_again(app, clock, monkeypatch):
    """Two overlapping bookings at once can deadlock at the exclusion constraint; the
    one PostgreSQL refuses is booked once more, and with nothing in its way it books."""
    with app.app_context():
        teacher = make_user("teacher", name="Tara Teacher")
        student = make_funded_user(10)
        teacher_id, student_id = teacher.id, student.id
    start = clock() + timedelta(hours=1)

    with app.app_context():
        calls = deadlock_at_commit(monkeypatch)
        booked = service.book(db.session.get(User, student_id), teacher_id, "", start, 60, "k")
        assert calls == [1]
        booked_id = booked.id

    assert [row[:2] for row in class_rows(app)] == [(student_id, teacher_id)]
    with app.app_context():
        assert db.session.get(ClassSession, booked_id).booking_key == "k"
        assert balances(student_id) == (10, 0)
        notification = ledger_notifications()
        notified = db.session.execute(select(notification.user_id, notification.kind)).all()
        assert notified == [(teacher_id, "class_booked")]  # once, by the booking that stood


def test_a_booking_refused_by_deadlocks_again_and_again_gives_up_with_a_refusal(
    app, clock, monkeypatch
):
    """Three or more bookings at once: refused twice it still books; refused every time
    it gives up with a refusal the form shows (not a 500), nothing of it written."""
    with app.app_context():
        teacher_id = make_user("teacher").id
        student_id = make_funded_user(10).id
    start = clock() + timedelta(hours=1)

    with app.app_context():
        calls = deadlock_at_commit(monkeypatch, times=service.ATTEMPTS)
        with pytest.raises(service.BookingError) as refused:
            service.book(db.session.get(User, student_id), teacher_id, "", start, 60, "a")
        assert len(calls) == service.ATTEMPTS
        assert refused.value.field == "start"
    assert (
        str(refused.value) == "Other bookings of this time came in at the same moment. Try again."
    )
    assert class_rows(app) == []

    with app.app_context():
        calls = deadlock_at_commit(monkeypatch, times=service.ATTEMPTS - 1)
        booked = service.book(db.session.get(User, student_id), teacher_id, "", start, 60, "b")
        assert len(calls) == service.ATTEMPTS - 1
        assert booked.booking_key == "b"
    assert [row[:2] for row in class_rows(app)] == [(student_id, teacher_id)]
    with app.app_context():
        assert balances(student_id) == (10, 0)


def test_a_booking_refused_by_a_deadlock_then_sees_the_other_booking(app, clock, monkeypatch):
    """The other booking of the deadlock went through: booked again, the refused one
    finds it and is refused with the overlap's own message; nothing of it is written."""
    with app.app_context():
        teacher = make_user("teacher", name="Tara Teacher")
        students = [make_funded_user(10) for _ in range(2)]
        teacher_id, (first, second) = teacher.id, [student.id for student in students]
    start = clock() + timedelta(hours=1)

    def the_other_books():
        service.book(db.session.get(User, second), teacher_id, "", start, 60, "other")

    with app.app_context():
        calls = deadlock_at_commit(monkeypatch, before=the_other_books)
        with pytest.raises(service.BookingError) as refused:
            service.book(db.session.get(User, first), teacher_id, "", start, 60, "mine")
        assert calls == [1]
    assert str(refused.value) == (
        "Tara Teacher is already booked on 24 Nov 2026 from 10:00 to 11:00 UTC. "
        "Choose another time."
    )
    assert [row[:2] for row in class_rows(app)] == [(second, teacher_id)]
    with app.app_context():
        assert [balances(student_id) for student_id in (first, second)] == [(10, 0), (10, 0)]


def test_a_double_submit_at_once_books_one_class_and_both_see_it(app, clock):
    """The second waits for the first (the student's row lock; SQLite's write lock), then
    finds the first booking by its key: the same class, not a refusal of its own time."""
    with app.app_context():
        teacher_id = make_user("teacher").id
        student_id = make_funded_user(10).id
    start = clock() + timedelta(hours=1)

    def book():
        student = db.session.get(User, student_id)
        return service.book(student, teacher_id, "Twice", start, 60, "one-form").id

    outcomes = race(app, [book, book])

    assert errors(outcomes) == []
    assert len(set(ok(outcomes))) == 1
    assert class_rows(app) == [(student_id, teacher_id, "10:00-11:00")]
