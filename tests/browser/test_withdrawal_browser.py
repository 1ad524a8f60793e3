"""The demo teacher adds a sandbox payout method, withdraws $10, and sees it paid."""

from playwright.sync_api import Page, expect

from soma import money
from soma.auth import service as auth_service
from soma.payouts import withdrawals
from tests.helpers import ShiftedClock, balances


def test_the_demo_teacher_withdraws_ten_dollars_in_the_sandbox(app, live_server, page: Page):
    shifted = ShiftedClock()
    app.config["SOMA_CLOCK"] = shifted
    assert app.test_cli_runner().invoke(args=["soma", "demo"]).exit_code == 0
    with app.app_context():
        teacher_id = auth_service.find_user_by_email("teacher@example.com").id
        earned, _ = balances(teacher_id)  # the demo's year of classes paid them
    assert earned >= 250
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_server}/login")
    page.get_by_label("Email").fill("teacher@example.com")
    page.get_by_label("Password").fill("teacher-demo-pass")
    page.locator("main form").get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("nav-user")).to_be_visible()

    page.get_by_role("button", name="Withdraw", exact=True).click()
    expect(page.get_by_test_id("no-methods")).to_be_visible()
    page.get_by_role("link", name="payout methods").click()
    page.get_by_label("Test payout (sandbox)").check()
    page.get_by_role("button", name="Add method").click()
    expect(page.get_by_test_id("payout-method")).to_contain_text("Test payout (sandbox)")

    page.get_by_role("button", name="Withdraw", exact=True).click()
    expect(page.get_by_test_id("available")).to_have_text(money.tokens(earned))
    page.get_by_label("Amount in US dollars").fill("10")
    page.get_by_role("button", name="Review withdrawal").click()
    expect(page.get_by_test_id("confirm-tokens")).to_contain_text("250 tokens")
    expect(page.get_by_test_id("confirm-fee")).to_have_text("$0.50")
    expect(page.get_by_test_id("confirm-net")).to_have_text("$9.50")
    page.get_by_role("button", name="Withdraw $10.00").click()

    expect(page.get_by_test_id("withdrawal-status")).to_have_text("Processing")
    expect(page.get_by_test_id("locked")).to_have_text("250 tokens")
    shifted.advance(seconds=5)
    with app.app_context():
        assert withdrawals.sweep() == 1  # the sweeper's pass, as `make run` runs it
    expect(page.get_by_test_id("withdrawal-status")).to_have_text("Paid")  # the page polls
    expect(page.get_by_test_id("withdrawal-paid")).to_have_text("$9.50 sent")
    expect(page.get_by_test_id("available")).to_have_text(money.tokens(earned - 250))
    expect(page.get_by_test_id("locked")).to_have_text("0 tokens")
    with app.app_context():
        assert balances(teacher_id) == (earned - 250, 0)
    assert errors == []
