"""A person who forgot their password gets a link by email and sets a new one, in a browser."""

import re

from playwright.sync_api import Page, expect

from soma import mail
from tests.builders import make_user


def test_forgotten_password_reset_through_the_emailed_link(app, live_server, smtp_on, page: Page):
    with app.app_context():
        make_user("student", email="rosa@example.com", name="Rosa Reader")
    app.config["APP_BASE_URL"] = live_server  # the link in the mail leads to this server
    page.goto(f"{live_server}/login")
    page.get_by_role("link", name="Forgot your password?").click()
    expect(page.get_by_role("heading", name="Reset your password")).to_be_visible()
    page.get_by_label("Email").fill("rosa@example.com")
    page.get_by_role("button", name="Send me a link").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    expect(page.get_by_test_id("reset-requested")).to_contain_text(
        "If an account exists for rosa@example.com, we sent a link"
    )

    with app.app_context():
        assert mail.drain() == mail.DrainResult(sent=1)  # the sweeper's pass
    (message,) = smtp_on.messages
    assert message["To"] == "rosa@example.com"
    (link,) = re.findall(re.escape(live_server) + r"/password/reset/\S+", message.get_content())

    page.goto(link)
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    page.get_by_label("New password", exact=True).fill("violet kettle harbour drum")
    page.get_by_label("Repeat the new password").fill("violet kettle harbour drum")
    page.get_by_role("button", name="Set the new password").click()
    expect(page.get_by_text("Your password is changed")).to_be_visible()

    page.get_by_label("Email").fill("rosa@example.com")
    page.get_by_label("Password").fill("violet kettle harbour drum")
    page.locator("main form").get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("nav-user")).to_contain_text("Rosa Reader")

    page.goto(link)  # used: refused, with a way to ask again
    expect(page.get_by_test_id("reset-refused")).to_contain_text("already used")
    expect(page.get_by_role("button", name="Ask for a new link")).to_be_visible()
