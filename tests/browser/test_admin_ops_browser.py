"""An admin reads /admin/health and runs the audit in the browser, on a wide screen and a
phone: the run is followed by htmx polling until final, nothing scrolls sideways, nothing
the CSP refuses. Screenshots stay in test-results/ (health-*.png, audit-*.png)."""

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select, text

from soma.admin import audit_runs as runs
from soma.extensions import db
from soma.models import User
from tests.browser.actions import log_in, screenshot
from tests.builders import fund, make_user

REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI}`);
});
"""
SHOTS = Path("test-results")
WIDTHS = {1280: 900, 390: 844}


@pytest.fixture
def admin(app):
    with app.app_context():
        make_user("admin", email="ada@example.com", name="Ada Admin")
        student = make_user("student")
        fund(student.id, 40)
    return "ada@example.com"


def no_sideways_scroll(page: Page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def shoot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    for width, height in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(100)
        assert no_sideways_scroll(page), f"{name} scrolls sideways at {width} px"
        screenshot(page, SHOTS / f"{name}-{width}.png")


def test_an_admin_reads_health_and_follows_audit_runs(app, live_server, page: Page, admin):
    problems = []
    page.add_init_script(REPORT_VIOLATIONS)
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    with app.app_context():
        from soma.admin.health import SweeperWatch
        from soma.clock import now

        SweeperWatch().passed(
            now(), "2 completed, 0 ended early, 0 failed; 1 withdrawal(s) finished"
        )
    log_in(page, live_server, admin)

    page.get_by_role("link", name="Health").click()
    expect(page.get_by_test_id("health-database")).to_contain_text("Reachable")
    expect(page.get_by_test_id("health-sweeper")).to_contain_text("2 completed")
    expect(page.get_by_test_id("health-limits")).to_contain_text("Answering")
    shoot(page, "health")

    # A passing run, started and confirmed in the page (its thread is real).
    page.get_by_role("link", name="Audit", exact=True).click()
    page.get_by_test_id("run-audit").click()
    expect(page.get_by_role("heading", name="Run the audit?")).to_be_visible()
    page.get_by_test_id("confirm-button").click()
    expect(page.get_by_test_id("audit-verdict")).to_contain_text("every ledger invariant holds")
    shoot(page, "audit-passed")

    # A run the page must follow: queued while the page is open, done by the worker after.
    with app.app_context():
        db.session.execute(text("UPDATE wallets SET available = available + 7"))
        db.session.commit()
        ada = db.session.scalar(select(User).where(User.email == admin))
        run_id = runs.start(ada)
    page.goto(f"{live_server}/admin/audit?run={run_id}")
    expect(page.get_by_test_id("audit-status")).to_have_text("queued")
    runs.work(app, run_id)
    expect(page.get_by_test_id("audit-status")).to_have_text("failed", timeout=8000)
    expect(page.get_by_test_id("audit-violations")).to_contain_text("balance-mismatch")
    assert page.locator("#audit-run[hx-get]").count() == 0  # stopped polling
    # Its end refreshed the history and the "in progress" note too.
    expect(page.get_by_test_id("audit-busy")).to_have_count(0)
    expect(
        page.get_by_test_id("audit-history").locator("tr", has_text=f"#{run_id}")
    ).to_contain_text("failed")
    shoot(page, "audit-failed")

    styled = page.eval_on_selector_all(
        '[style]:not([style=""])', "els => els.map(e => e.outerHTML.slice(0, 200))"
    )
    assert styled == []
    assert problems == []
