"""What a person does in the browser, in more than one test."""

from playwright.sync_api import Page, expect

from tests.builders import DEFAULT_PASSWORD


def log_in(page: Page, live_server: str, email: str):
    page.goto(f"{live_server}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    page.locator("main form").get_by_role("button", name="Log in").click()
    # On a phone the user's name is inside the closed menu: there, not necessarily in view.
    expect(page.get_by_test_id("nav-user")).to_be_attached()
