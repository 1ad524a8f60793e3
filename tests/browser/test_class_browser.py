"""A live class in two browsers: the teacher starts, pauses and resumes; the student watches."""

import re
import time
from datetime import timedelta

import pytest
from playwright.sync_api import Browser, Page, expect

from soma.classes import service
from tests.browser.actions import log_in
from tests.builders import fund, make_user
from tests.helpers import DEFAULT_PASSWORD, ShiftedClock, balances


@pytest.fixture
def shifted(app):
    clock = ShiftedClock()
    app.config["SOMA_CLOCK"] = clock
    return clock


def elapsed_seconds(page: Page) -> int:
    minutes, seconds = page.get_by_test_id("elapsed").inner_text().split(":")
    return int(minutes) * 60 + int(seconds)


def runs_on(page: Page, past: int, seconds: int = 2, within: float = 10.0) -> None:
    """The page's elapsed time reaches `past` + `seconds`: the class runs on (waited for,
    not slept for a fixed time: a loaded machine's polls may come late)."""
    deadline = time.monotonic() + within
    while elapsed_seconds(page) < past + seconds:
        assert time.monotonic() < deadline, f"elapsed stuck at {elapsed_seconds(page)}"
        time.sleep(0.2)


def book_sams_class(app, shifted, key: str) -> tuple[int, int, int]:
    """Sam Student (30 tokens) books Tara Teacher for 30 minutes in 5 minutes' time; the
    class's, Sam's and Tara's ids."""
    with app.app_context():
        student = make_user("student", email="sam@example.com", name="Sam Student")
        teacher = make_user("teacher", email="tara@example.com", name="Tara Teacher")
        fund(student.id, 30)
        booked = service.book(
            student, teacher.id, "Fractions", shifted() + timedelta(minutes=5), 30, key=key
        )
        return booked.id, student.id, teacher.id


def test_a_class_runs_live_for_both_sides_and_settles_once(
    app, live_server, page: Page, browser: Browser, shifted
):
    class_id, student_id, teacher_id = book_sams_class(app, shifted, key="live")
    class_url = f"{live_server}/classes/{class_id}"
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    log_in(page, live_server, "sam@example.com")
    page.goto(class_url)
    expect(page.get_by_test_id("status")).to_have_text("Scheduled")
    expect(page.get_by_test_id("viewer-available")).to_have_text("30 tokens")
    # A countdown to the start, ticking between polls; no "time left" before the class.
    starts_in = page.get_by_test_id("starts-in").inner_text()
    expect(page.get_by_test_id("starts-in")).not_to_have_text(starts_in)
    expect(page.get_by_test_id("left")).to_have_count(0)
    expect(page.get_by_test_id("meeting-none")).to_have_text(
        "Your teacher has not added a meeting link yet."
    )
    expect(page.get_by_test_id("nav-notifications").locator(".count-badge")).to_have_count(
        0
    )  # nothing for the student yet

    teacher_context = browser.new_context()
    try:
        teacher_page = teacher_context.new_page()
        teacher_page.set_default_timeout(10_000)
        teacher_page.on("pageerror", lambda exc: errors.append(str(exc)))
        log_in(teacher_page, live_server, "tara@example.com")
        teacher_page.goto(class_url)
        # The teacher adds where the class happens; the student's page shows it, no reload.
        teacher_page.locator("#meeting_url").fill("https://meet.example.com/fractions")
        teacher_page.get_by_test_id("meeting-save").click()
        expect(teacher_page.get_by_test_id("meeting-link")).to_have_attribute(
            "href", "https://meet.example.com/fractions"
        )
        link = page.get_by_test_id("meeting-link")
        expect(link).to_have_attribute("href", "https://meet.example.com/fractions")
        expect(link).to_have_attribute("rel", "noopener noreferrer")
        teacher_page.get_by_test_id("control-start").click()
        expect(teacher_page.get_by_test_id("status")).to_have_text("In progress")

        # The student's page sees the start and the hold, with no reload.
        expect(page.get_by_test_id("status")).to_have_text("In progress")
        expect(page.get_by_test_id("token-status")).to_contain_text(
            "5 tokens of yours are held for this class."
        )
        expect(teacher_page.get_by_test_id("teacher-earning")).to_contain_text(
            "You will earn 5 tokens ($0.20 at your rate of 10 tokens = $0.40)"
        )
        expect(page.get_by_test_id("viewer-available")).to_have_text("25 tokens")
        expect(page.get_by_test_id("viewer-locked")).to_have_text("5 tokens")

        runs_on(page, elapsed_seconds(page))

        teacher_page.get_by_test_id("control-pause").click()
        expect(page.get_by_test_id("status")).to_have_text("Paused")
        expect(page.get_by_test_id("paused-for")).to_be_visible()
        frozen = elapsed_seconds(page)
        time.sleep(2)
        assert elapsed_seconds(page) == frozen
        assert elapsed_seconds(teacher_page) == frozen

        teacher_page.get_by_test_id("control-resume").click()
        expect(page.get_by_test_id("status")).to_have_text("In progress")
        runs_on(page, frozen)

        shifted.advance(minutes=30)  # the rest of the class passes
        expect(page.get_by_test_id("status")).to_have_text("Completed")
        expect(page.get_by_test_id("charged")).to_have_text("5 tokens")
        expect(page.get_by_test_id("returned")).to_have_text("0 tokens")
        expect(page.get_by_test_id("active")).to_have_text("30:00")
        expect(page.get_by_test_id("left")).to_have_count(0)
        # The class's end notified the student: the count follows class-changed, no reload.
        expect(page.get_by_test_id("nav-notifications").locator(".count-badge")).to_have_text("1")
        expect(page.get_by_test_id("viewer-available")).to_have_text("25 tokens")
        expect(page.get_by_test_id("viewer-locked")).to_have_text("0 tokens")
        expect(teacher_page.get_by_test_id("status")).to_have_text("Completed")
        expect(teacher_page.get_by_test_id("viewer-available")).to_have_text("5 tokens")
        # The polling has stopped: the final timer carries no trigger.
        expect(page.get_by_test_id("timer")).not_to_have_attribute("hx-trigger", re.compile(".*"))
        expect(teacher_page.get_by_test_id("control-pause")).to_have_count(0)
    finally:
        teacher_context.close()

    with app.app_context():
        assert balances(student_id) == (25, 0)
        assert balances(teacher_id) == (5, 0)
    assert errors == []


def test_a_class_page_whose_session_ends_goes_to_log_in_whole_and_comes_back(
    app, live_server, page: Page, shifted
):
    """The timer polls every second; when the session is ended elsewhere (a log-out
    everywhere, a freeze), the next poll takes the whole page to the log-in page, not a
    log-in form into the timer, and logging in brings the student back to the class."""
    from soma.auth.service import end_sessions
    from soma.extensions import db
    from soma.models import User

    class_id, student_id, _ = book_sams_class(app, shifted, key="gone")
    class_path = f"/classes/{class_id}"
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, live_server, "sam@example.com")
    page.goto(f"{live_server}{class_path}")
    expect(page.get_by_test_id("status")).to_have_text("Scheduled")

    with app.app_context():
        end_sessions(db.session.get(User, student_id))
    expect(page).to_have_url(f"{live_server}/login?next=%2Fclasses%2F{class_id}", timeout=5000)
    expect(page.get_by_text("Please log in to see that page.")).to_have_count(1)
    expect(page.get_by_test_id("status")).to_have_count(0)  # no timer left, no form inside one
    expect(page.locator("main form")).to_have_count(1)

    page.get_by_label("Email").fill("sam@example.com")
    page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    page.locator("main form").get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server}{class_path}")
    expect(page.get_by_test_id("status")).to_have_text("Scheduled")
    assert errors == []
