"""Users' time zones: local times to UTC and back, sign-up's guess, /account, and booking.

The app's clock (a FakeClock) stands at 24 Nov 2026, 09:00 UTC: New York is on EST
(UTC-5), Nairobi on EAT (UTC+3), London on GMT.
"""

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from soma import timezones
from soma.auth import service as auth_service
from soma.extensions import db, limiter
from soma.models import ClassSession, Notification, TokenPricing, User
from soma.money import when
from tests.builders import fund, make_user
from tests.helpers import csrf_from, post_form, text_of


def wall(*parts) -> datetime:
    """A wall-clock time with no zone, as the booking form reads it."""
    return datetime(*parts, tzinfo=UTC).replace(tzinfo=None)


# The local-time rules (no database) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "zone", "utc"),
    [
        (wall(2026, 12, 1, 16, 0), "Africa/Nairobi", datetime(2026, 12, 1, 13, 0, tzinfo=UTC)),
        (wall(2026, 7, 1, 10, 0), "Europe/London", datetime(2026, 7, 1, 9, 0, tzinfo=UTC)),
        (wall(2026, 1, 15, 10, 0), "Europe/London", datetime(2026, 1, 15, 10, 0, tzinfo=UTC)),
        (
            wall(2026, 11, 24, 10, 0),
            "America/New_York",
            datetime(2026, 11, 24, 15, 0, tzinfo=UTC),
        ),
        # Just either side of London's spring gap and autumn overlap: each is one instant.
        (wall(2026, 3, 29, 0, 59), "Europe/London", datetime(2026, 3, 29, 0, 59, tzinfo=UTC)),
        (wall(2026, 3, 29, 2, 0), "Europe/London", datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
        (wall(2026, 10, 25, 0, 59), "Europe/London", datetime(2026, 10, 24, 23, 59, tzinfo=UTC)),
        (wall(2026, 10, 25, 2, 0), "Europe/London", datetime(2026, 10, 25, 2, 0, tzinfo=UTC)),
    ],
)
def test_a_local_time_becomes_its_utc_instant(local, zone, utc):
    converted = timezones.to_utc(local, zone)
    assert converted == utc
    assert converted.utcoffset().total_seconds() == 0
    assert timezones.local(converted, zone).replace(tzinfo=None) == local


@pytest.mark.parametrize(
    ("local", "zone", "message"),
    [
        (
            wall(2026, 3, 29, 1, 30),
            "Europe/London",
            "01:30 on 29 March 2026 does not exist in Europe/London: the clocks go forward "
            "from 01:00 to 02:00 that night. Choose a time outside that gap.",
        ),
        (
            wall(2026, 3, 8, 2, 30),
            "America/New_York",
            "02:30 on 8 March 2026 does not exist in America/New_York: the clocks go forward "
            "from 02:00 to 03:00 that night. Choose a time outside that gap.",
        ),
        (
            wall(2026, 10, 25, 1, 30),
            "Europe/London",
            "01:30 on 25 October 2026 happens twice in Europe/London: the clocks go back "
            "from 02:00 to 01:00 that night. Choose a time outside that hour.",
        ),
        (
            wall(2026, 11, 1, 1, 0),
            "America/New_York",
            "01:00 on 1 November 2026 happens twice in America/New_York: the clocks go back "
            "from 02:00 to 01:00 that night. Choose a time outside that hour.",
        ),
    ],
)
def test_a_time_the_clocks_skip_or_repeat_is_refused_saying_which(local, zone, message):
    with pytest.raises(timezones.LocalTimeProblem) as refused:
        timezones.to_utc(local, zone)
    assert refused.value.message == message


def test_the_first_and_last_days_a_date_holds_are_refused_not_crashed():
    with pytest.raises(timezones.LocalTimeProblem, match="between the years 1 and 9999"):
        timezones.to_utc(wall(1, 1, 1, 0, 0), "Africa/Nairobi")
    with pytest.raises(timezones.LocalTimeProblem, match="between the years 1 and 9999"):
        timezones.to_utc(wall(9999, 12, 31, 23, 0), "America/New_York")


def test_only_known_zone_names_are_accepted():
    assert "Africa/Nairobi" in timezones.zone_names()
    assert list(timezones.zone_names()) == sorted(timezones.zone_names())
    for bad in ("Mars/Olympus_Mons", "", None, "UTC\x00", "A" * 5000, "../../etc/passwd"):
        assert not timezones.is_zone(bad)
        assert timezones.zone_or_default(bad) == "UTC"
    assert timezones.zone_or_default("Asia/Tokyo") == "Asia/Tokyo"
    anonymous = type("Anonymous", (), {"is_authenticated": False, "time_zone": "Asia/Tokyo"})
    assert timezones.zone_of(anonymous()) == "UTC"
    assert timezones.zone_of(None) == "UTC"


def test_a_stored_time_is_shown_with_the_zones_abbreviation():
    moment = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
    assert when(moment, "Africa/Nairobi") == "01 Dec 2026, 16:00 EAT"
    assert when(moment, "America/New_York") == "01 Dec 2026, 08:00 EST"
    assert when(moment, "Asia/Tokyo") == "01 Dec 2026, 22:00 JST"
    assert when(datetime(2026, 7, 1, 9, 0, tzinfo=UTC), "Europe/London") == "01 Jul 2026, 10:00 BST"
    # Outside a request (the sweeper, the command line): UTC.
    assert when(moment) == "01 Dec 2026, 13:00 UTC"
    assert when(moment, "UTC", seconds=True) == "01 Dec 2026, 13:00:00 UTC"


# Sign-up ------------------------------------------------------------------------------------


def signup(client, email, time_zone, **extra):
    data = {
        "email": email,
        "display_name": "Zoe Zone",
        "password": "correct-horse-battery",
        "confirm": "correct-horse-battery",
        "role": "student",
        **extra,
    }
    if time_zone is not None:
        data["time_zone"] = time_zone
    return post_form(client, "/signup", data)


def stored_zone(app, email) -> tuple[str, bool]:
    with app.app_context():
        user = db.session.scalars(select(User).where(User.email == email)).one()
        return user.time_zone, user.email_notifications


def test_the_signup_page_carries_the_browsers_zone_field_and_its_script(client):
    html = client.get("/signup").get_data(as_text=True)
    assert 'name="time_zone"' in html
    assert "data-browser-time-zone" in html
    assert '<script src="/static/js/timezone.js" defer></script>' in html
    script = client.get("/static/js/timezone.js").get_data(as_text=True)
    assert "resolvedOptions().timeZone" in script


def test_sign_up_stores_the_browsers_zone(app, client):
    response = signup(client, "tokyo@example.com", "Asia/Tokyo")
    assert response.status_code == 302
    assert stored_zone(app, "tokyo@example.com") == ("Asia/Tokyo", True)


@pytest.mark.parametrize(
    "guess",
    [None, "", "Mars/Olympus_Mons", "Asia/Tokyo\x00", "Europe/" + "x" * 5000, "utc"],
)
def test_a_missing_or_bogus_browser_zone_signs_up_in_utc(app, client, guess):
    response = signup(client, "guess@example.com", guess)
    assert response.status_code == 302, text_of(response.get_data(as_text=True))
    assert stored_zone(app, "guess@example.com") == ("UTC", True)


# /account -----------------------------------------------------------------------------------


def test_account_needs_a_log_in(client):
    response = client.get("/account")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_the_account_page_shows_the_account_and_its_settings(client, auth):
    user = auth.login_as("teacher", name="Tara Teacher")
    page = client.get("/account").get_data(as_text=True)
    text = text_of(page)
    assert f"Name Tara Teacher Email {user.email} Role Teacher" in text
    assert 'href="/account/password"' in page
    assert '<option selected value="UTC">UTC</option>' in page
    assert '<optgroup label="Africa">' in page
    assert 'name="email_notifications" type="checkbox" value="y"' in page
    assert 'checked id="email_notifications"' in page
    # The nav's name leads here, and the password page still works.
    assert 'href="/account" title="Your account' in page
    assert "Change your password" in text_of(client.get("/account/password").get_data(True))


def test_account_changes_the_zone_and_the_email_toggle(app, client, auth, clock):
    user = auth.login_as("student")
    response = post_form(client, "/account", {"time_zone": "Africa/Nairobi"})
    assert response.status_code == 303
    assert stored_zone(app, user.email) == ("Africa/Nairobi", False)  # unticked: off
    page = client.get("/account").get_data(as_text=True)
    assert "Saved. Times are now shown in Africa/Nairobi (EAT)" in text_of(page)
    assert "your notifications stay in the app, with no email" in text_of(page)
    assert '<option selected value="Africa/Nairobi">Africa/Nairobi</option>' in page
    assert "It is now 24 Nov 2026, 12:00 EAT there." in text_of(page)

    response = post_form(
        client, "/account", {"time_zone": "America/New_York", "email_notifications": "y"}
    )
    assert response.status_code == 303
    assert stored_zone(app, user.email) == ("America/New_York", True)


@pytest.mark.parametrize(
    ("zone", "error"),
    [
        ("Mars/Olympus_Mons", "Choose a time zone from the list."),
        ("Africa/Nairobi\x00", "Choose a time zone from the list."),
        ("A" * 5000, "Choose a time zone from the list."),
        ("", "Choose a time zone."),
    ],
)
def test_a_bad_zone_is_a_form_error_and_changes_nothing(app, client, auth, zone, error):
    user = auth.login_as("student")
    response = post_form(client, "/account", {"time_zone": zone, "email_notifications": ""})
    assert response.status_code == 400
    assert error in text_of(response.get_data(as_text=True))
    assert stored_zone(app, user.email) == ("UTC", True)


def test_account_refuses_a_post_without_its_csrf_token(app, client, auth):
    user = auth.login_as("student")
    response = client.post("/account", data={"time_zone": "Asia/Tokyo"})
    assert response.status_code == 400
    assert stored_zone(app, user.email) == ("UTC", True)


# One class, two zones -----------------------------------------------------------------------


@pytest.fixture
def apart(app, clock):
    """A teacher in Nairobi and a student in New York; the student has 30 tokens."""
    with app.app_context():
        teacher = make_user("teacher", name="Tara Teacher")
        student = make_user("student", name="Sam Student")
        auth_service.save_settings(teacher, "Africa/Nairobi", True)
        auth_service.save_settings(student, "America/New_York", True)
        fund(student.id, 30)
        return {"teacher": (teacher.id, teacher.email), "student": (student.id, student.email)}


def log_in(client, auth, email):
    with client.application.app_context():
        limiter.reset()
    auth.logout()
    assert auth.login(email).status_code == 302


def book(client, teacher_id, start, key="tz1"):
    page = client.get("/classes/new").get_data(as_text=True)
    return client.post(
        "/classes/new",
        data={
            "csrf_token": csrf_from(page),
            "teacher": teacher_id,
            "title": "Fractions",
            "start": start,
            "duration": 60,
            "key": key,
        },
    )


def classes(app) -> list[tuple[datetime, int]]:
    with app.app_context():
        return [
            (c.scheduled_start, c.duration_minutes)
            for c in db.session.scalars(select(ClassSession).order_by(ClassSession.id))
        ]


def test_the_booking_form_says_the_students_zone(client, auth, apart):
    log_in(client, auth, apart["student"][1])
    text = text_of(client.get("/classes/new").get_data(as_text=True))
    assert "Times are in America/New_York (EST), your time zone." in text


def test_a_teacher_and_a_student_in_different_zones_see_the_same_class_in_their_own(
    app, client, auth, apart
):
    log_in(client, auth, apart["student"][1])
    response = book(client, apart["teacher"][0], "2026-11-24T10:00")  # 10:00 in New York
    assert response.status_code == 303, text_of(response.get_data(as_text=True))
    class_url = response.headers["Location"]
    assert classes(app) == [(datetime(2026, 11, 24, 15, 0, tzinfo=UTC), 60)]

    student_view = text_of(client.get(class_url).get_data(as_text=True))
    assert "60 minutes from 24 Nov 2026, 10:00 EST" in student_view
    assert "EAT" not in student_view
    student_home = text_of(client.get("/student").get_data(as_text=True))
    assert "Fractions · 24 Nov 2026, 10:00 EST · 60 min" in student_home

    log_in(client, auth, apart["teacher"][1])
    teacher_view = text_of(client.get(class_url).get_data(as_text=True))
    assert "60 minutes from 24 Nov 2026, 18:00 EAT" in teacher_view
    assert "EST" not in teacher_view
    teacher_home = text_of(client.get("/teacher").get_data(as_text=True))
    assert "Fractions · 24 Nov 2026, 18:00 EAT · 60 min" in teacher_home
    # The teacher's notification of the booking names the teacher's own time.
    with app.app_context():
        messages = db.session.scalars(
            select(Notification.message).where(Notification.user_id == apart["teacher"][0])
        ).all()
    assert messages == ["Sam Student booked “Fractions” for 24 Nov 2026, 18:00 EAT."]


def test_a_clash_is_told_in_the_students_own_zone(app, client, auth, apart):
    log_in(client, auth, apart["student"][1])
    assert book(client, apart["teacher"][0], "2026-11-24T10:00").status_code == 303
    response = book(client, apart["teacher"][0], "2026-11-24T10:30", key="tz2")
    assert response.status_code == 422
    assert (
        "Tara Teacher is already booked on 24 Nov 2026 from 10:00 to 11:00 EST. "
        "Choose another time."
    ) in text_of(response.get_data(as_text=True))
    assert len(classes(app)) == 1


@pytest.mark.parametrize(
    ("zone", "start", "message"),
    [
        (
            "Europe/London",
            "2027-03-28T01:30",
            "01:30 on 28 March 2027 does not exist in Europe/London: the clocks go forward "
            "from 01:00 to 02:00 that night.",
        ),
        (
            "Europe/London",
            "2027-10-31T01:15",
            "01:15 on 31 October 2027 happens twice in Europe/London: the clocks go back "
            "from 02:00 to 01:00 that night.",
        ),
        (
            "America/New_York",
            "2027-03-14T02:00",
            "02:00 on 14 March 2027 does not exist in America/New_York",
        ),
    ],
)
def test_a_booking_at_a_time_the_clocks_skip_or_repeat_is_refused(
    app, client, auth, apart, zone, start, message
):
    with app.app_context():
        student = db.session.get(User, apart["student"][0])
        auth_service.save_settings(student, zone, True)
    log_in(client, auth, apart["student"][1])
    response = book(client, apart["teacher"][0], start)
    assert response.status_code == 422
    assert message in text_of(response.get_data(as_text=True))
    assert classes(app) == []


def test_a_booking_in_summer_time_stores_the_right_instant(app, client, auth, apart):
    with app.app_context():
        student = db.session.get(User, apart["student"][0])
        auth_service.save_settings(student, "Europe/London", True)
    log_in(client, auth, apart["student"][1])
    response = book(client, apart["teacher"][0], "2027-07-01T09:00")
    assert response.status_code == 303
    assert classes(app) == [(datetime(2027, 7, 1, 8, 0, tzinfo=UTC), 60)]
    shown = text_of(client.get(response.headers["Location"]).get_data(as_text=True))
    assert "60 minutes from 01 Jul 2027, 09:00 BST" in shown


@pytest.mark.parametrize(
    "start", ["2026-11-24T10:00\x00", "2" * 5000, "0001-01-01T00:00", "tomorrow", ""]
)
def test_a_bad_start_is_a_form_error_and_books_nothing(app, client, auth, apart, start):
    log_in(client, auth, apart["student"][1])
    response = book(client, apart["teacher"][0], start)
    assert response.status_code == 422
    assert 'class="field-error"' in response.get_data(as_text=True)
    assert classes(app) == []
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ClassSession)) == 0


# An admin's pricing time -------------------------------------------------------------------


def test_an_admin_schedules_a_price_in_their_own_zone(app, client, auth, clock):
    admin = auth.login_as("admin")
    with app.app_context():
        user = db.session.get(User, admin.id)
        auth_service.save_settings(user, "Africa/Nairobi", True)
    page = client.get("/admin/pricing").get_data(as_text=True)
    assert "Times are in your time zone, Africa/Nairobi (EAT); now is 24 Nov 2026, 12:00 EAT." in (
        text_of(page)
    )
    data = {
        "csrf_token": csrf_from(page),
        "user_type": "student",
        "tokens": "10",
        "price": "1.20",
        "class_tokens_per_hour": "12",
        "effective_at": "2027-01-01T09:00",  # Nairobi: 06:00 UTC
    }
    confirm = client.post("/admin/pricing", data=data)
    assert 'data-testid="admin-confirm"' in confirm.get_data(as_text=True)
    assert "01 Jan 2027, 09:00 EAT" in text_of(confirm.get_data(as_text=True))
    done = client.post("/admin/pricing", data={**data, "confirmed": "yes"})
    assert done.status_code in (302, 303), text_of(done.get_data(as_text=True))
    with app.app_context():
        starts = db.session.scalars(
            select(TokenPricing.effective_at).where(TokenPricing.version == 2)
        ).all()
    assert starts == [datetime(2027, 1, 1, 6, 0, tzinfo=UTC)]
