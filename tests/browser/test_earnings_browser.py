"""A teacher reads their earnings on a wide screen and on a phone: figures, the chart and its
table in view, nothing to scroll sideways, nothing the CSP refuses. The screenshots stay in
test-results/ (earnings-1280.png, earnings-390.png) for a person to look at."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from soma import ledger
from tests.browser.actions import log_in, main_nav, screenshot
from tests.builders import fund, make_class, make_user

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)

REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI}`);
});
"""


@pytest.fixture
def teacher_with_a_year(app, clock):
    """Classes in most of the last twelve months, the teacher rate raised in the summer."""
    with app.app_context():
        teacher = make_user("teacher", email="wanjiru@example.com", name="Wanjiru Teacher")
        student = make_user("student")
        fund(student.id, 2000, now=datetime(2025, 11, 1, tzinfo=UTC))
        for months_back in range(11, -1, -1):
            if months_back == 3:
                continue  # a month away
            if months_back == 5:
                with ledger.atomic():
                    ledger.publish_pricing(
                        "teacher", 10, 50, 10, NOW - timedelta(days=150), backdate=True
                    )
            for n in range(12 - months_back):
                clock.now = NOW - timedelta(days=30 * months_back - n) - timedelta(hours=3)
                make_class(student, teacher, "completed", minutes=(30, 60, 90)[n % 3])
        clock.now = NOW


@pytest.mark.parametrize("width", [1280, 390])
def test_a_teacher_reads_the_earnings_page_on_a_wide_screen_and_a_phone(
    app, live_server, page: Page, teacher_with_a_year, output_path, width
):
    problems = []
    page.add_init_script(REPORT_VIOLATIONS)
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.set_viewport_size({"width": width, "height": 900})
    log_in(page, live_server, "wanjiru@example.com")

    main_nav(page).get_by_role("link", name="Earnings").click()
    page.wait_for_load_state("load")  # its styles applied before anything is measured

    expect(page.get_by_role("heading", name="Your earnings")).to_be_visible()
    expect(page.get_by_test_id("this-month")).to_contain_text("This month so far (November)")
    chart = page.get_by_test_id("earnings-chart")
    expect(chart).to_be_visible()
    expect(chart.locator("rect.chart-bar")).to_have_count(12)
    # Wide enough to read, inside the window: waited for, as a page still being laid out
    # on a busy machine measured 294 px at 390 once; then measured.
    wide = min(width - 60, 700)
    page.wait_for_function(
        """([wide, width]) => {
            const box = document.querySelector('[data-testid="earnings-chart"]')
                .getBoundingClientRect();
            return box.width >= wide && box.right <= width;
        }""",
        arg=[wide, width],
    )
    box = chart.bounding_box()
    assert box["width"] >= wide and box["x"] + box["width"] <= width
    rows = page.get_by_test_id("earnings-table").locator("tbody tr")
    expect(rows).to_have_count(12)
    expect(rows.first).to_contain_text("Nov 2026")
    # Every column, the dollars last, is in view without scrolling sideways.
    earned = page.get_by_test_id("earnings-table").locator("thead th").last
    expect(earned).to_have_text("Earned")
    assert earned.bounding_box()["x"] + earned.bounding_box()["width"] <= width
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert page.locator("[style]").count() == 0
    screenshot(page, str(Path(output_path) / f"earnings-{width}.png"))
    assert problems == []
