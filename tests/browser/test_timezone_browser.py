"""A browser in Tokyo signs up: the account is in Asia/Tokyo, and times are shown in JST."""

from datetime import UTC, datetime

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from soma.extensions import db
from soma.models import ClassSession, User
from tests.builders import fund, make_user


@pytest.mark.browser_context_args(timezone_id="Asia/Tokyo")
def test_a_browser_in_tokyo_signs_up_in_tokyo_and_books_in_its_time(app, live_server, page: Page):
    errors = []
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    with app.app_context():
        make_user("teacher", name="Tara Teacher")

    page.goto(f"{live_server}/signup")
    assert page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone") == "Asia/Tokyo"
    expect(page.locator("input[name=time_zone]")).to_have_value("Asia/Tokyo")
    page.get_by_label("Student: I want to learn").check()
    page.get_by_label("Display name").fill("Kenji Kyoto")
    page.get_by_label("Email").fill("kenji@example.com")
    page.get_by_label("Password", exact=True).fill("a-long-password")
    page.get_by_label("Repeat password").fill("a-long-password")
    page.locator("main form").get_by_role("button", name="Sign up").click()
    expect(page.get_by_test_id("nav-user")).to_contain_text("Kenji Kyoto")

    with app.app_context():
        user = db.session.scalars(select(User).where(User.email == "kenji@example.com")).one()
        assert user.time_zone == "Asia/Tokyo"
        fund(user.id, 20)

    page.get_by_test_id("nav-user").get_by_role("link", name="Kenji Kyoto").click()
    expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    expect(page.get_by_label("Time zone")).to_have_value("Asia/Tokyo")
    expect(page.get_by_test_id("account-form")).to_contain_text(" JST there.")

    page.goto(f"{live_server}/classes/new")
    expect(page.get_by_test_id("booking-zone")).to_contain_text("Times are in Asia/Tokyo (JST)")
    page.get_by_label("Teacher").select_option(label="Tara Teacher")
    page.get_by_label("Start").fill("2027-01-15T18:00")
    page.get_by_label("Duration").select_option("60")
    page.get_by_role("button", name="Book the class").click()
    expect(page.get_by_text("60 minutes from 15 Jan 2027, 18:00 JST")).to_be_visible()

    with app.app_context():
        starts = db.session.scalars(select(ClassSession.scheduled_start)).all()
    assert starts == [datetime(2027, 1, 15, 9, 0, tzinfo=UTC)]
    assert errors == []
