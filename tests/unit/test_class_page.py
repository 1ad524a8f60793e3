"""The class page in every state, as the student, the teacher and an admin read it.

Time is the app's clock (`SOMA_CLOCK`), a FakeClock the tests move: 24 Nov 2026, 09:00 UTC
to begin with.
"""

import re
from datetime import timedelta

import pytest

from soma.classes import service
from soma.classes.machine import Action
from soma.extensions import db, limiter
from soma.ledger.pricing import publish_pricing
from soma.models import ClassSession
from soma.notifications.service import notify
from tests.builders import fund, make_class, make_user
from tests.conftest import AuthActions
from tests.helpers import csrf_from, text_of

REFRESH = '<meta http-equiv="refresh" content="15">'


class People:
    """A student (25 tokens), a teacher, an admin, another teacher: each with a logged-in client."""

    def __init__(self, app):
        self.app = app
        with app.app_context():
            self.student = make_user("student", name="Sam Student")
            self.teacher = make_user("teacher", name="Tara Teacher")
            self.admin = make_user("admin", name="Ada Admin")
            self.other = make_user("teacher", name="Otto Other")
            fund(self.student.id, 25)
            emails = {
                "student": self.student.email,
                "teacher": self.teacher.email,
                "admin": self.admin.email,
                "other": self.other.email,
            }
            self.ids = {"student": self.student.id, "teacher": self.teacher.id}
        self.clients = {}
        for who, email in emails.items():
            with app.app_context():
                limiter.reset()
            client = app.test_client()
            assert AuthActions(client).login(email).status_code == 302
            self.clients[who] = client

    def book(self, start, minutes=60, title="Fractions", now=None):
        """A class booked at the clock's time (or `now`) to start at `start`."""
        with self.app.app_context():
            student = db.session.get(type(self.student), self.student.id)
            booked = service.book(
                student, self.teacher.id, title, start, minutes, key=f"k-{title}-{start}", now=now
            )
            return booked.id

    def make(self, state, now=None, minutes=60, title="Fractions"):
        """A class brought to `state` by tests.builders.make_class (starts five minutes
        after `now`; paused or ended early ten minutes in)."""
        with self.app.app_context():
            student = db.session.get(type(self.student), self.student.id)
            teacher = db.session.get(type(self.teacher), self.teacher.id)
            return make_class(student, teacher, state, now=now, minutes=minutes, title=title).id

    def act(self, class_id, action, now):
        with self.app.app_context():
            session = db.session.get(ClassSession, class_id)
            teacher = db.session.get(type(self.teacher), self.teacher.id)
            service.act(session, action, teacher, now=now)

    def page(self, who, class_id):
        response = self.clients[who].get(f"/classes/{class_id}")
        assert response.status_code == 200
        return response.get_data(as_text=True)

    def timer(self, who, class_id, seen="scheduled"):
        response = self.clients[who].get(f"/classes/{class_id}/timer?seen={seen}")
        assert response.status_code == 200
        return response.get_data(as_text=True)


@pytest.fixture
def people(app, clock):
    return People(app)


def the_class(app, class_id):
    with app.app_context():
        session = db.session.get(ClassSession, class_id)
        db.session.expunge(session)
        return session


# Scheduled ---------------------------------------------------------------------------------


def test_a_scheduled_class_counts_down_to_its_start_and_to_when_the_teacher_may_start(
    app, people, clock
):
    class_id = people.book(clock.now + timedelta(hours=2))  # 11:00; may start from 10:50
    student = text_of(people.timer("student", class_id))
    assert "Scheduled Starts in 2:00:00 Your teacher can start it in 1:50:00" in student
    assert "Your teacher can start the class from 10 minutes before its start." in student
    assert "10 tokens of yours will be held when the class starts" in student
    assert "Time left" not in student and "Elapsed" not in student
    teacher = text_of(people.timer("teacher", class_id))
    assert "Starts in 2:00:00 You can start it in 1:50:00" in teacher
    assert "You will earn 10 tokens if the class runs its full time." in teacher
    assert "Time left" not in teacher
    # Nothing can happen for a while but a cancel: the tracker asks every 10 seconds.
    assert 'hx-trigger="every 10s"' in people.timer("student", class_id)
    html = people.page("student", class_id)
    assert 'data-tick="down" data-seconds="7200" data-style="countdown"' in html

    clock.now = clock.now.replace(hour=10, minute=52)  # the window is open
    student = text_of(people.timer("student", class_id))
    assert "Starts in 08:00 Your teacher can start it for 1:08:00" in student
    assert "Your teacher can start the class now." in student
    assert "You can start the class now." in text_of(people.timer("teacher", class_id))
    assert 'hx-trigger="every 1s"' in people.timer("student", class_id)

    clock.now = clock.now.replace(hour=11, minute=3)  # due, and not started yet
    student = text_of(people.timer("student", class_id))
    assert "Due to start 03:00 ago" in student and "can start it for 57:00" in student

    clock.now = clock.now.replace(hour=12, minute=0)  # its booked end: it can no longer start
    student = text_of(people.timer("student", class_id))
    assert "Your teacher did not start this class by its booked end" in student
    assert "No tokens were held." in student and "Starts in" not in student
    teacher = text_of(people.timer("teacher", class_id))
    assert "You did not start this class by its booked end" in teacher
    assert the_class(app, class_id).status == "scheduled"


def test_a_class_days_away_counts_down_in_days(app, people, clock):
    class_id = people.book(clock.now + timedelta(days=2, hours=1, minutes=2, seconds=3))
    assert "Starts in 2 d 01:02:03" in text_of(people.timer("student", class_id))


# In progress and paused ----------------------------------------------------------------------


def test_a_class_in_progress_shows_elapsed_and_time_left_to_each_viewer(app, people, clock):
    class_id = people.make("in_progress")  # started at 09:05
    clock.now = clock.now.replace(minute=5, second=0) + timedelta(seconds=75)
    student = text_of(people.timer("student", class_id, "in_progress"))
    assert "In progress Elapsed 01:15 Time left 58:45" in student
    assert (
        "10 tokens of yours are held for this class. Ended now, it would cost you 1 token, "
        "and the rest would come back to you." in student
    )
    teacher = text_of(people.timer("teacher", class_id, "in_progress"))
    assert "Elapsed 01:15 Time left 58:45" in teacher
    assert "Ended now, this class would earn you 1 token; 10 tokens if it runs its full time." in (
        teacher
    )
    admin = text_of(people.timer("admin", class_id, "in_progress"))
    assert "10 tokens held from the student; 1 token charged if it ended now." in admin
    html = people.timer("student", class_id, "in_progress")
    assert 'data-testid="elapsed" data-tick="up" data-seconds="75"' in html
    assert 'data-testid="left" data-tick="down" data-seconds="3525"' in html


def test_a_paused_class_shows_its_clock_stopped_and_how_long_it_has_been_paused(app, people, clock):
    class_id = people.make("paused")  # started 09:05, paused 09:15
    clock.now = clock.now.replace(minute=20)
    html = people.timer("student", class_id, "paused")
    student = text_of(html)
    assert (
        "Paused Elapsed 10:00 Time left 50:00 paused Paused for 05:00 Ends on its own in 25:00"
        in (student)
    )
    assert "Your teacher paused the class: its clock is stopped" in student
    assert "A class paused for 30 minutes ends early, charged for its active time." in student
    # Elapsed and time left stand still; the pause's figures move.
    assert 'data-testid="elapsed">10:00' in html and 'data-testid="left">50:00' in html
    assert 'data-testid="paused-for" data-tick="up" data-seconds="300"' in html
    teacher = text_of(people.timer("teacher", class_id, "paused"))
    assert "You paused the class: its clock is stopped" in teacher
    assert "Ended now, this class would earn you 2 tokens" in teacher


# Final ---------------------------------------------------------------------------------------


def _aborted(people, now):
    """A class started at `now` + 5 minutes and aborted three minutes later."""
    class_id = people.make("in_progress", now=now)
    people.act(class_id, Action.ABORT, now + timedelta(minutes=8))
    return class_id


FINAL = {
    # state: (how to make it, active, charged, returned)
    "completed": (lambda people, clock: people.make("completed"), "60:00", 10, 10 - 10),
    "ended_early": (lambda people, clock: people.make("ended_early"), "10:00", 2, 8),
    "aborted": (lambda people, clock: _aborted(people, clock.now), "03:00", 0, 10),
    "cancelled": (lambda people, clock: people.make("cancelled"), "00:00", 0, 0),
}


def _tokens(count):
    return f"{count} token" + ("" if count == 1 else "s")


@pytest.mark.parametrize("state", sorted(FINAL))
def test_a_final_class_shows_active_time_charged_and_returned_never_time_left(
    app, people, clock, state
):
    make, active, charged, returned = FINAL[state]
    class_id = make(people, clock)
    clock.advance(minutes=120)
    assert the_class(app, class_id).status == state
    student_html = people.page("student", class_id)
    student = text_of(student_html)
    assert f"Active time {active} of 60:00" in student
    assert f"You paid {_tokens(charged)} Returned to you {_tokens(returned)}" in student
    teacher_html = people.page("teacher", class_id)
    teacher = text_of(teacher_html)
    assert f"Active time {active} of 60:00" in teacher
    assert f"You earned {_tokens(charged)} Returned to your student {_tokens(returned)}" in teacher
    for html in (student_html, teacher_html):
        assert "Time left" not in html and "Elapsed" not in html
        assert 'hx-trigger="every' not in html  # the timer no longer polls
        assert REFRESH not in html and "Reload to update" not in html
    assert "to the student" not in student  # the student is "you"


def test_the_final_pages_say_why_the_class_ended_in_the_viewers_words(app, people, clock):
    ended = people.make("ended_early")
    aborted = _aborted(people, clock.now + timedelta(hours=2))
    assert "Your teacher ended the class early; you paid for its active time only." in text_of(
        people.page("student", ended)
    )
    assert "You ended the class early; you earned for its active time." in text_of(
        people.page("teacher", ended)
    )
    assert "The class was aborted: you paid nothing, and every held token came back to you." in (
        text_of(people.page("student", aborted))
    )
    assert "your student paid nothing, and you earned nothing" in text_of(
        people.page("teacher", aborted)
    )
    assert "You earned nothing for this class." in text_of(people.page("teacher", aborted))


# Money lines ---------------------------------------------------------------------------------


def test_the_teacher_sees_what_they_will_earn_at_the_teacher_rate_in_force(app, people, clock):
    class_id = people.book(clock.now + timedelta(hours=1), minutes=90)  # 15 tokens
    teacher = text_of(people.page("teacher", class_id))
    assert (
        "You will earn 15 tokens ($0.60 at your rate of 10 tokens = $0.40) if the class runs "
        "its full time" in teacher
    )
    assert "will be held" not in teacher  # what they earn, not what is held
    assert "Your balance: 0 tokens available to withdraw" in teacher
    assert "locked" not in teacher
    with app.app_context():
        publish_pricing("teacher", 10, 50, 10, clock.now - timedelta(minutes=1), backdate=True)
        db.session.commit()
    teacher = text_of(people.page("teacher", class_id))
    assert "You will earn 15 tokens ($0.75 at your rate of 10 tokens = $0.50)" in teacher


def test_the_student_sees_their_balance_and_an_admin_none(app, people, clock):
    class_id = people.make("in_progress")
    student = text_of(people.page("student", class_id))
    assert "Your balance: 15 tokens available · 10 tokens locked" in student
    assert "You will earn" not in student
    admin_html = people.page("admin", class_id)
    assert 'data-testid="viewer-balance"' not in admin_html
    admin = text_of(admin_html)
    assert "Your balance" not in admin and "locked" not in admin
    assert "Tara Teacher teaching Sam Student" in admin
    assert "With your teacher, Tara Teacher" in student
    assert "With your student, Sam Student" in text_of(people.page("teacher", class_id))


# The meeting link ----------------------------------------------------------------------------


def post_link(people, who, class_id, url, htmx=False):
    client = people.clients[who]
    token = csrf_from(client.get("/notifications/").get_data(as_text=True))
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(
        f"/classes/{class_id}/meeting-link",
        data={"csrf_token": token, "meeting_url": url},
        headers=headers,
    )


def test_the_teacher_sets_the_meeting_link_and_the_student_sees_it(app, people, clock):
    class_id = people.book(clock.now + timedelta(hours=1))
    assert "Your teacher has not added a meeting link yet." in text_of(
        people.page("student", class_id)
    )
    response = post_link(people, "teacher", class_id, "  https://meet.example.com/abc-def  ")
    assert response.status_code == 303
    assert the_class(app, class_id).meeting_url == "https://meet.example.com/abc-def"
    html = people.page("student", class_id)
    assert (
        '<a href="https://meet.example.com/abc-def" rel="noopener noreferrer" target="_blank" '
        'data-testid="meeting-link">Join the class</a>' in html
    )
    assert 'data-testid="meeting-form"' not in html  # only the teacher changes it
    teacher = people.page("teacher", class_id)
    assert 'value="https://meet.example.com/abc-def"' in teacher and "Change link" in teacher

    # The student's open tracker notices the new link and reloads its panel.
    version = the_class(app, class_id).version
    timer = f"/classes/{class_id}/timer?seen=scheduled"
    empty = "scheduled.00000000"  # the panel as it was before the link
    assert people.clients["student"].get(f"{timer}&panel={empty}").headers["HX-Trigger"] == (
        "class-changed"
    )
    state = re.search(r'name="panel" value="([^"]+)"', html).group(1)
    assert state != empty
    assert "HX-Trigger" not in people.clients["student"].get(f"{timer}&panel={state}").headers
    assert the_class(app, class_id).version == version  # a link is not a move of the class

    response = post_link(people, "teacher", class_id, "https://meet.example.com/new", htmx=True)
    assert response.status_code == 200
    assert 'href="https://meet.example.com/new"' in response.get_data(as_text=True)
    assert post_link(people, "teacher", class_id, "").status_code == 303  # empty removes it
    assert the_class(app, class_id).meeting_url is None


def test_only_the_classes_teacher_sets_its_link(app, people, clock):
    class_id = people.book(clock.now + timedelta(hours=1))
    post_link(people, "teacher", class_id, "https://meet.example.com/abc")
    assert post_link(people, "student", class_id, "https://evil.example.com/").status_code == 403
    assert post_link(people, "admin", class_id, "https://evil.example.com/").status_code == 403
    assert post_link(people, "other", class_id, "https://evil.example.com/").status_code == 404
    assert the_class(app, class_id).meeting_url == "https://meet.example.com/abc"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("javascript:alert(1)", "full https:// address"),
        ("JavaScript://%0aalert(1)", "full https:// address"),
        ("data:text/html,hi", "full https:// address"),
        ("http://meet.example.com/abc", "Use an https:// link"),
        ("https://user:pw@meet.example.com/", "Remove the user name or password"),
        ("https://meet.example.com/a b", "Remove the spaces"),
        ("https://meet.example.com/\x00", "Remove the control characters"),
        ("https://meet.example.com:99999999/", "full https:// address"),
        ("https:///nohost", "full https:// address"),
        ("https://meet.example.com/" + "x" * 480, "Keep the link to 500 characters or fewer."),
    ],
)
def test_a_bad_meeting_link_is_refused_on_the_form_and_nothing_is_stored(
    app, people, clock, url, message
):
    class_id = people.book(clock.now + timedelta(hours=1))
    post_link(people, "teacher", class_id, "https://meet.example.com/kept")
    response = post_link(people, "teacher", class_id, url)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert message in text_of(html)
    assert 'data-testid="meeting-error"' in html
    assert the_class(app, class_id).meeting_url == "https://meet.example.com/kept"


def test_a_local_http_link_is_allowed_and_a_final_class_keeps_its_link(app, people, clock):
    class_id = people.book(clock.now + timedelta(hours=1))
    assert post_link(people, "teacher", class_id, "http://localhost:8080/room").status_code == 303
    assert the_class(app, class_id).meeting_url == "http://localhost:8080/room"
    people.act(class_id, Action.CANCEL, clock.now)
    response = post_link(people, "teacher", class_id, "https://meet.example.com/late")
    assert response.status_code == 409
    assert "This class is over; its meeting link can no longer change." in text_of(
        response.get_data(as_text=True)
    )
    assert the_class(app, class_id).meeting_url == "http://localhost:8080/room"


# Without JavaScript ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["scheduled", "in_progress", "paused"])
def test_a_page_that_can_still_change_reloads_itself_without_javascript(app, people, clock, state):
    class_id = people.make(state)
    html = people.page("student", class_id)
    head = html.split("</head>")[0]
    assert f"<noscript>{REFRESH}</noscript>" in head
    assert "This page updates itself every 15 seconds. Reload to update now." in text_of(html)
    assert '<script src="/static/js/timer.js" defer></script>' in head


# Home pages --------------------------------------------------------------------------------


def test_the_home_pages_list_classes_in_progress_then_upcoming_then_past(app, people, clock):
    start = clock.now
    with app.app_context():
        fund(people.ids["student"], 20)
    people.make("completed", now=start, title="Past class")
    people.make("in_progress", now=start + timedelta(hours=2), title="Live class")
    people.make("scheduled", now=start + timedelta(hours=4), title="Next class")
    clock.now = start + timedelta(hours=2, minutes=10)
    for who, home in (("student", "/student"), ("teacher", "/teacher")):
        html = people.clients[who].get(home).get_data(as_text=True)
        sections = [
            html.index(f'data-testid="{name}"') for name in ("in-progress", "upcoming", "past")
        ]
        assert sections == sorted(sections)
        live, upcoming, past = (
            html[sections[0] : sections[1]],
            html[sections[1] : sections[2]],
            html[sections[2] :],
        )
        assert "Live class" in live and "In progress" in live
        assert "Next class" in upcoming and "Live class" not in upcoming
        assert "Past class" in past
    teacher = text_of(people.clients["teacher"].get("/teacher").get_data(as_text=True))
    assert "10 tokens earned" in teacher


# The unread count ------------------------------------------------------------------------------


def test_the_unread_count_follows_class_changed(app, people, clock):
    class_id = people.make("in_progress")
    html = people.page("student", class_id)
    assert (
        '<li hx-get="/notifications/unread" hx-trigger="class-changed from:body" '
        'hx-swap="innerHTML">' in html
    )
    before = people.clients["student"].get("/notifications/unread").get_data(as_text=True)
    with app.app_context():
        notify(people.ids["student"], "gift", "One more.")
        notify(people.ids["student"], "gift", "And another.")
        db.session.commit()
    after = people.clients["student"].get("/notifications/unread")
    count = int(
        re.search(r'<span class="count-badge">(\d+)</span>', after.get_data(as_text=True))[1]
    )
    before_count = re.search(r'<span class="count-badge">(\d+)</span>', before)
    assert count == (int(before_count[1]) if before_count else 0) + 2
    assert f"Notifications, {count} unread" in after.get_data(as_text=True)
    # The closed phone menu's count comes with it, out of band.
    assert '<span id="menu-unread" hx-swap-oob="true">' in after.get_data(as_text=True)
    assert f'title="Unread notifications">{count}<' in after.get_data(as_text=True)
    # The class ends: the timer fires class-changed, and the count comes back one higher.
    clock.advance(minutes=70)
    timer = people.clients["student"].get(f"/classes/{class_id}/timer?seen=in_progress")
    assert timer.headers["HX-Trigger"] == "class-changed"
    again = people.clients["student"].get("/notifications/unread").get_data(as_text=True)
    assert f'<span class="count-badge">{count + 1}</span>' in again
    assert app.test_client().get("/notifications/unread").status_code == 204


def test_a_panel_left_behind_is_reloaded_by_the_next_poll(app, people, clock):
    """A panel reload that read the class just before a move and arrived after it shows
    the old state; the timer's poll carries the panel's state, and sets it right."""
    class_id = people.make("in_progress")
    stale = (
        re.search(r'name="panel" value="([^"]+)"', people.page("teacher", class_id))
        .group(1)
        .replace("in_progress", "scheduled")
    )
    client = people.clients["teacher"]
    answer = client.get(f"/classes/{class_id}/timer?seen=in_progress&panel={stale}")
    assert answer.headers["HX-Trigger"] == "class-changed"
    assert 'hx-include="#panel-state"' in answer.get_data(as_text=True)
    current = stale.replace("scheduled", "in_progress")
    answer = client.get(f"/classes/{class_id}/timer?seen=in_progress&panel={current}")
    assert "HX-Trigger" not in answer.headers


def test_a_teachers_own_move_fires_class_changed(app, people, clock):
    class_id = people.make("in_progress")
    client = people.clients["teacher"]
    token = csrf_from(client.get(f"/classes/{class_id}").get_data(as_text=True))
    response = client.post(
        f"/classes/{class_id}/end", data={"csrf_token": token}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    assert response.headers["HX-Trigger"] == "class-changed"
    assert the_class(app, class_id).status == "ended_early"
