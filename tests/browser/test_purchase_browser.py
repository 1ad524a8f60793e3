"""A student buys a package through the sandbox checkout and sees the balance rise."""

from playwright.sync_api import Page, expect

from tests.browser.actions import log_in
from tests.builders import make_user
from tests.helpers import balances


def test_a_student_buys_a_package_in_the_sandbox(app, live_server, page: Page):
    with app.app_context():
        student_id = make_user("student", email="bo@example.com", name="Bo Buyer").id
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, live_server, "bo@example.com")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Buy tokens").click()
    expect(page.get_by_test_id("buy-available")).to_have_text("0 tokens")
    page.get_by_test_id("package-250").click()
    page.get_by_label("Test payment (sandbox)").check()
    page.get_by_role("button", name="Continue to payment").click()

    expect(page.get_by_test_id("sandbox-banner")).to_contain_text("Test payment.")
    page.get_by_test_id("sandbox-pay").click()

    expect(page.get_by_test_id("credited")).to_have_text("260 tokens credited to your wallet.")
    expect(page.get_by_test_id("available")).to_have_text("260 tokens")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Wallet").click()
    expect(page.get_by_test_id("available")).to_have_text("260 tokens")
    with app.app_context():
        assert balances(student_id) == (260, 0)
    assert errors == []
