"""Every page of every role, in Chromium, under the app's real CSP: no console error, no
CSP violation, no script error; and on a phone (390 by 844), no page scrolls sideways
(tests/browser/walk.py's PhoneCheck, which also saves every page's screenshot at 390 and
1280 px to test-results/pages/, from the walk on PostgreSQL).

Each role's walk starts from its home page, the class pages of its classes (one in each
state) and its purchase pages, and follows every link it finds on the way (same origin,
GET). Chromium logs a CSP violation as a console error; the page also reports each one
through `securitypolicyviolation`, which an init script (Playwright's, not subject to the
page's CSP) turns into a console error of its own.
"""

from datetime import timedelta

import pytest
from playwright.sync_api import Page, expect

from soma.classes import service as class_service
from tests.browser.actions import log_in
from tests.browser.walk import PhoneCheck, seeds_for, walk
from tests.builders import make_funded_user, make_user

REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI}`
    + ` at ${event.sourceFile}:${event.lineNumber}`);
});
"""

# What each role's walk must have seen, so that it cannot silently shrink.
EXPECTED = {
    "anonymous": {"main.index", "auth.login", "auth.signup", "auth.forgot_password"},
    "student": {
        "main.student_home",
        "classes.new",
        "classes.show",
        "purchases.buy",
        "purchases.history",
        "purchases.show",
        "purchases.receipt",
        "purchases.sandbox",
        "wallet.index",
        "wallet.transactions",
        "gifts.new",
        "notifications.index",
        "auth.account",
    },
    "teacher": {
        "main.teacher_home",
        "earnings.index",
        "classes.show",
        "wallet.index",
        "wallet.transactions",
        "notifications.index",
        "auth.account",
    },
    "admin": {
        "admin.index",
        "admin.users",
        "admin.user_detail",
        "admin.purchase_list",
        "admin.purchase_detail",
        "purchases.receipt",
        "admin.unmatched_payments",
        "admin.health",
        "admin.audit",
        "admin.pricing",
        "admin.packages",
        "admin.action_log",
        "admin.alerts",
        "classes.show",
        "notifications.index",
        "auth.account",
    },
}


@pytest.mark.parametrize("role", ["anonymous", "student", "teacher", "admin"])
def test_every_page_of_each_role_is_clean_under_the_csp_and_fits_a_phone(
    app, live_server, page: Page, site, role, backend
):
    page.add_init_script(REPORT_VIOLATIONS)
    seeds = seeds_for(page, live_server, site, role)
    # The same pages on both databases: pictured once (PostgreSQL's, production's).
    pictures = backend == "postgresql"
    phone = PhoneCheck(page, role, pictures)

    endpoints, problems = walk(app, page, live_server, seeds, on_page=phone)
    assert problems == []
    # A page that is not found, as this role meets it: its links fit too (its console
    # reports the 404 itself, which is no problem).
    response = page.goto(f"{live_server}/no-such-page")
    assert response is not None and response.status == 404
    phone("/no-such-page", "error-404")

    assert phone.problems == []
    assert EXPECTED[role] <= endpoints, EXPECTED[role] - endpoints
    assert len(phone.measured) >= len(seeds)
    if pictures:
        assert all(phone.file_name(endpoint, 390).exists() for endpoint in endpoints)
        assert all(phone.file_name(endpoint, 1280).exists() for endpoint in endpoints)


def test_the_timer_moves_the_progress_bar_without_inline_styles(app, live_server, page: Page, site):
    """The bar is a <progress> element whose value the polled fragment carries."""
    problems = []
    page.add_init_script(REPORT_VIOLATIONS)
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    log_in(page, live_server, "tara@example.com")
    page.goto(f"{live_server}/classes/{site['classes']['in_progress']}")
    bar = page.locator("#timer progress")
    expect(bar).to_have_attribute("max", "3600")
    first = int(bar.get_attribute("value"))
    assert first >= 300  # started five minutes ago
    page.wait_for_timeout(2500)
    expect(page.locator("#timer progress")).not_to_have_attribute("value", str(first))
    assert int(page.locator("#timer progress").get_attribute("value")) >= first + 2
    assert page.locator("[style]").count() == 0
    assert problems == []


def test_a_student_booking_a_taken_time_reads_why_on_the_form(
    app, live_server, page: Page, site, shifted
):
    """The refusal is a field error on the booking page (answered 422), which stays clean
    under the CSP."""
    problems = []
    page.add_init_script(REPORT_VIOLATIONS)
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    with app.app_context():
        make_funded_user(50, email="olga@example.com", name="Olga Other")
        taken = class_service.class_for(
            make_user("admin"), site["classes"]["scheduled"]
        ).scheduled_start
    log_in(page, live_server, "olga@example.com")
    page.goto(f"{live_server}/classes/new")
    expect(page.get_by_test_id("booking-available")).to_have_text("50 tokens")
    page.get_by_label("Teacher").select_option(label="Tara Teacher")
    page.get_by_label("Start", exact=True).fill(f"{taken:%Y-%m-%dT%H:%M}")
    page.get_by_role("button", name="Book the class").click()
    expect(page.locator("#start-error")).to_have_text(
        f"Tara Teacher is already booked on {taken:%d %b %Y} from {taken:%H:%M} to "
        f"{taken + timedelta(hours=1):%H:%M} UTC. Choose another time."
    )
    # Chromium logs the page's own status, 422 as meant; nothing else, no CSP violation.
    assert problems == [
        "Failed to load resource: the server responded with a status of 422 (UNPROCESSABLE ENTITY)"
    ]
