"""A student buys a package through the sandbox checkout and sees the balance rise."""

import re

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


def test_the_buy_page_shows_a_live_total_for_a_custom_amount(app, live_server, page: Page):
    with app.app_context():
        make_user("student", email="cy@example.com", name="Cy Custom")
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, live_server, "cy@example.com")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Buy tokens").click()

    total = page.get_by_test_id("live-total")
    expect(page.get_by_test_id("custom-total")).to_be_hidden()
    page.get_by_role("spinbutton", name="Tokens").fill("125")
    expect(total).to_have_text("125 tokens ≈ $12.50")
    expect(page.get_by_test_id("custom-total")).to_contain_text(
        "the price is confirmed on the next page"
    )
    # Typing an amount chooses "another amount".
    expect(page.locator('input[name="package"][value="custom"]')).to_be_checked()
    page.get_by_role("spinbutton", name="Tokens").fill("5")
    expect(total).to_have_text("Buy between 10 and 10,000 tokens.")
    page.get_by_role("spinbutton", name="Tokens").fill("1234")
    expect(total).to_have_text("1,234 tokens ≈ $123.40")

    # The server's quote is the price: the sandbox checkout says what is charged.
    page.get_by_label("Test payment (sandbox)").check()
    page.get_by_role("button", name="Continue to payment").click()
    expect(page.get_by_role("button", name="Pay $123.40")).to_be_visible()
    page.get_by_test_id("sandbox-pay").click()
    status = page.get_by_test_id("purchase-status")
    expect(status).to_have_class(re.compile(r"\bresult-paid\b"))
    expect(page.get_by_test_id("result-word")).to_have_text("✓ Paid")
    page.get_by_test_id("receipt-link").click()
    expect(page.get_by_test_id("receipt-amount")).to_contain_text("$123.40")
    # Printed, the receipt has no navigation, footer or buttons.
    page.emulate_media(media="print")
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    expect(page.locator("footer.site-footer")).to_be_hidden()
    expect(page.get_by_test_id("receipt")).to_be_visible()
    assert errors == []


def test_an_amount_typed_before_the_script_runs_chooses_another_amount(
    app, live_server, page: Page
):
    """On a slow connection the student may type before buy.js has run: once it runs,
    the amount typed still chooses "another amount" and shows its total."""
    with app.app_context():
        make_user("student", email="sl@example.com", name="Slow Sol")
    log_in(page, live_server, "sl@example.com")
    held = []
    page.route("**/js/buy.js*", lambda route: held.append(route))
    page.goto(f"{live_server}/buy/", wait_until="commit")
    page.get_by_role("spinbutton", name="Tokens").fill("125")
    custom = page.locator('input[name="package"][value="custom"]')
    expect(custom).not_to_be_checked()  # the script has not run yet
    page.wait_for_timeout(50)
    assert len(held) == 1
    held[0].continue_()
    expect(custom).to_be_checked()
    expect(page.get_by_test_id("live-total")).to_have_text("125 tokens ≈ $12.50")
