"""A person signs up, logs out and logs in again in a real browser."""

from playwright.sync_api import Page, expect
from sqlalchemy import select

from soma.extensions import db
from soma.models import User


def test_student_signs_up_logs_out_logs_in_and_sees_their_name(app, live_server, page: Page):
    page.goto(f"{live_server}/")
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Create your Soma account")).to_be_visible()

    page.get_by_label("Student: I want to learn").check()
    page.get_by_label("Display name").fill("Brenda Browser")
    page.get_by_label("Email").fill("brenda@example.com")
    page.get_by_label("Password", exact=True).fill("a-long-password")
    page.get_by_label("Repeat password").fill("a-long-password")
    page.locator("main form").get_by_role("button", name="Sign up").click()

    expect(page.get_by_test_id("nav-user")).to_contain_text("Brenda Browser")
    expect(page.get_by_role("heading", name="Hello, Brenda Browser")).to_be_visible()
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "brenda@example.com"))
        assert user is not None and user.role == "student"

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_text("You have logged out.")).to_be_visible()
    expect(page.get_by_test_id("nav-user")).to_have_count(0)

    nav.get_by_role("link", name="Log in").click()
    page.get_by_label("Email").fill("brenda@example.com")
    page.get_by_label("Password").fill("a-long-password")
    page.locator("main form").get_by_role("button", name="Log in").click()

    expect(page.get_by_test_id("nav-user")).to_contain_text("Brenda Browser")
    expect(page).to_have_url(f"{live_server}/student")


def test_pages_load_without_console_or_csp_errors(app, live_server, page: Page):
    errors = []
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    for path in ["/", "/login", "/signup"]:
        page.goto(f"{live_server}{path}")
        page.wait_for_load_state("networkidle")
    assert page.evaluate("typeof htmx") == "object"
    assert page.evaluate("htmx.version").startswith("2.")
    assert errors == []
