"""The admin freezes the demo student, who is logged out and then refused a purchase; the
admin unfreezes them, and they buy."""

from playwright.sync_api import Browser, Page, expect

from soma.auth import service as auth_service
from tests.helpers import ShiftedClock, balances


def log_in(page: Page, live_server: str, email: str, password: str):
    page.goto(f"{live_server}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.locator("main form").get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("nav-user")).to_be_visible()


def admin_acts(page: Page, form: str, reason: str, button: str):
    """Fill the account page's freeze or unfreeze form, then confirm on the next page."""
    page.get_by_test_id(form).get_by_role("textbox").fill(reason)
    page.get_by_test_id(form).get_by_role("button", name=button).click()
    confirm = page.get_by_test_id("admin-confirm")
    expect(confirm).to_contain_text(reason)
    confirm.get_by_test_id("confirm-button").click()


def test_the_admin_freezes_the_demo_student_who_cannot_buy_until_unfrozen(
    app, live_server, page: Page, browser: Browser
):
    app.config["SOMA_CLOCK"] = ShiftedClock()
    assert app.test_cli_runner().invoke(args=["soma", "demo"]).exit_code == 0
    with app.app_context():
        student_id = auth_service.find_user_by_email("student@example.com").id
        before = balances(student_id)
    errors = []
    student = browser.new_context().new_page()
    for each in (page, student):
        each.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(student, live_server, "student@example.com", "student-demo-pass")
    log_in(page, live_server, "admin@example.com", "admin-demo-pass")

    # The admin finds the demo student and freezes the account, through the confirmation.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Users").click()
    page.get_by_label("Email or name").fill("demo stu")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Demo Student").click()
    admin_acts(page, "freeze-form", "Three chargebacks this week", "Freeze the account")
    expect(page.get_by_text("Demo Student's account is frozen")).to_be_visible()
    expect(page.get_by_test_id("frozen-status")).to_contain_text(
        "by Demo Admin: Three chargebacks this week"
    )

    # The student's session was ended: the next page asks them to log in again.
    student.goto(f"{live_server}/buy/")
    expect(student).to_have_url(f"{live_server}/login?next=%2Fbuy%2F")
    log_in(student, live_server, "student@example.com", "student-demo-pass")
    expect(student.get_by_test_id("frozen-banner")).to_contain_text("Your account is frozen.")
    student.get_by_role("navigation", name="Main").get_by_role("link", name="Buy tokens").click()
    student.get_by_test_id("package-100").click()
    student.get_by_label("Test payment (sandbox)").check()
    student.get_by_role("button", name="Continue to payment").click()
    expect(student.get_by_role("alert")).to_contain_text(
        "Your account is frozen, so you cannot buy tokens. Nothing was changed. "
        "Contact support@soma.example"
    )
    with app.app_context():
        assert balances(student_id) == before

    # Unfrozen, the student buys.
    admin_acts(page, "unfreeze-form", "The bank cleared the cards", "Unfreeze the account")
    expect(page.get_by_test_id("frozen-status")).to_have_text("No")
    student.reload()
    student.get_by_role("navigation", name="Main").get_by_role("link", name="Buy tokens").click()
    expect(student.get_by_test_id("frozen-banner")).to_have_count(0)
    student.get_by_test_id("package-100").click()
    student.get_by_label("Test payment (sandbox)").check()
    student.get_by_role("button", name="Continue to payment").click()
    student.get_by_test_id("sandbox-pay").click()
    expect(student.get_by_test_id("credited")).to_have_text("100 tokens credited to your wallet.")
    with app.app_context():
        assert balances(student_id) == (before[0] + 100, before[1])
    assert errors == []
