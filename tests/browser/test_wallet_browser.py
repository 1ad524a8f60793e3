"""A student reads their wallet, filters their history with htmx, and gives a gift."""

import re
from datetime import UTC, datetime, timedelta

from playwright.sync_api import Page, expect

from soma.models import EntryKind, PlatformAccount
from tests.browser.actions import log_in
from tests.builders import fund, make_user
from tests.helpers import balances

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_history_filters_update_the_table_and_the_url_and_back_works(app, live_server, page: Page):
    with app.app_context():
        student = make_user("student", email="hana@example.com")
        fund(student.id, 40, now=T0, memo="Bought 40 tokens")
        fund(student.id, 5, kind=EntryKind.BONUS, source=PlatformAccount.PROMOTIONS,
             now=T0 + timedelta(days=1), memo="Welcome bonus")  # fmt: skip
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, live_server, "hana@example.com")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="History").click()
    page.wait_for_load_state("load")  # htmx has set up the filters (a busy machine is slow)
    rows = page.locator("table.history tbody tr")
    expect(rows).to_have_count(2)

    page.get_by_label("Type").select_option("bonus")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Welcome bonus")
    expect(page).to_have_url(re.compile(r"/wallet/history\?kind=bonus"))

    page.get_by_label("Type").select_option("purchase")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Bought 40 tokens")
    expect(page).to_have_url(re.compile(r"kind=purchase"))

    page.go_back()
    expect(page).to_have_url(re.compile(r"kind=bonus"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Welcome bonus")
    expect(page.get_by_label("Type")).to_have_value("bonus")

    page.reload()
    expect(rows.first).to_contain_text("Welcome bonus")
    assert errors == []


def test_student_gives_a_gift_after_confirming_it(app, live_server, page: Page):
    with app.app_context():
        ann_id = make_user("student", email="ann@example.com", name="Ann Giver").id
        bea_id = make_user("student", email="bea@example.com", name="Bea Friend").id
        fund(ann_id, 25)
    log_in(page, live_server, "ann@example.com")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Wallet").click()
    expect(page.get_by_test_id("available")).to_have_text("25 tokens")
    page.get_by_role("button", name="Give tokens").click()

    page.get_by_label("Recipient's email").fill("bea@example.com")
    page.get_by_label("Tokens").fill("30")
    page.get_by_role("button", name="Review gift").click()
    expect(page.get_by_text("You have 25 tokens available, so you cannot give 30.")).to_be_visible()

    page.get_by_label("Tokens").fill("15")
    page.get_by_label("Note (optional)").fill("For your maths class")
    page.get_by_role("button", name="Review gift").click()
    confirm = page.get_by_test_id("confirm-gift")
    expect(confirm).to_contain_text("Bea Friend (bea@example.com)")
    expect(confirm).to_contain_text("15 tokens (worth $1.50)")
    with app.app_context():
        assert balances(ann_id) == (25, 0)

    page.get_by_role("button", name="Give 15 tokens").click()
    expect(page.get_by_text("You gave 15 tokens to Bea Friend.")).to_be_visible()
    expect(page.get_by_test_id("available")).to_have_text("10 tokens")
    expect(page.locator("table.history tbody tr").first).to_contain_text(
        "Gift to Bea Friend: “For your maths class” -15 tokens -$1.50"
    )
    with app.app_context():
        assert balances(ann_id) == (10, 0)
        assert balances(bea_id) == (15, 0)

    page.get_by_role("button", name="Log out").click()
    log_in(page, live_server, "bea@example.com")
    expect(page.get_by_test_id("nav-notifications")).to_contain_text("1")
    expect(page.get_by_test_id("low-balance")).to_have_count(0)
    page.get_by_test_id("nav-notifications").click()
    expect(page.get_by_test_id("notification").first).to_contain_text(
        "Ann Giver gave you 15 tokens: “For your maths class”"
    )
