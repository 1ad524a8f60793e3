"""Every page of every role, in Chromium, under the app's real CSP: no console error, no
CSP violation, no script error.

Each role's walk starts from its home page, the class pages of its classes (one in each
state) and its purchase pages, and follows every link it finds on the way (same origin,
GET). Chromium logs a CSP violation as a console error; the page also reports each one
through `securitypolicyviolation`, which an init script (Playwright's, not subject to the
page's CSP) turns into a console error of its own.
"""

from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect
from werkzeug.exceptions import HTTPException

from soma.classes import service as class_service
from soma.classes.machine import Action
from soma.purchases import service as purchase_service
from tests.browser.actions import log_in
from tests.builders import make_class, make_funded_user, make_user, paid_purchase
from tests.helpers import ShiftedClock

REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI}`
    + ` at ${event.sourceFile}:${event.lineNumber}`);
});
"""

# Links a walk does not follow: they download a file, or leave the page's role.
SKIPPED_ENDPOINTS = {"wallet.export_csv", "static"}

# What each role's walk must have seen, so that it cannot silently shrink.
EXPECTED = {
    "anonymous": {"main.index", "auth.login", "auth.signup"},
    "student": {
        "main.student_home",
        "classes.new",
        "classes.show",
        "purchases.buy",
        "purchases.history",
        "purchases.show",
        "purchases.sandbox",
        "wallet.index",
        "wallet.transactions",
        "gifts.new",
        "notifications.index",
    },
    "teacher": {
        "main.teacher_home",
        "earnings.index",
        "classes.show",
        "wallet.index",
        "wallet.transactions",
        "notifications.index",
    },
    "admin": {
        "admin.index",
        "admin.users",
        "admin.user_detail",
        "admin.purchase_list",
        "admin.purchase_detail",
        "admin.unmatched_payments",
        "admin.health",
        "admin.audit",
        "admin.pricing",
        "admin.packages",
        "admin.action_log",
        "admin.alerts",
        "classes.show",
        "notifications.index",
    },
}

MAX_PAGES = 80


@pytest.fixture
def shifted(app):
    clock = ShiftedClock()
    app.config["SOMA_CLOCK"] = clock
    return clock


@pytest.fixture
def site(app, shifted):
    """A student and a teacher with a class in every state, purchases, and an admin."""
    with app.app_context():
        student = make_funded_user(200, email="sam@example.com", name="Sam Student")
        teacher = make_user("teacher", email="tara@example.com", name="Tara Teacher")
        make_user("admin", email="ada@example.com", name="Ada Admin")
        now = shifted()
        classes = {}
        # Past classes a day apart; the live one started five minutes ago; one to come.
        for days, state in enumerate(["completed", "ended_early", "cancelled"], start=1):
            classes[state] = make_class(student, teacher, state, now=now - timedelta(days=days))
        booked = now - timedelta(days=4)
        aborted = make_class(student, teacher, "in_progress", now=booked)
        classes["aborted"] = class_service.act(
            aborted, Action.ABORT, teacher, now=booked + timedelta(minutes=15)
        )
        classes["in_progress"] = make_class(
            student, teacher, "in_progress", now=now - timedelta(minutes=10)
        )
        classes["scheduled"] = make_class(student, teacher, now=now + timedelta(days=1))
        # A paused class needs another teacher and student: one live class each at a time.
        classes["paused"] = make_class(
            make_funded_user(20),
            make_user("teacher"),
            "paused",
            now=now - timedelta(minutes=20),
        )
        paid_purchase(student)
        pending = purchase_service.start(
            student,
            purchase_service.package_quotes()[0],
            purchase_service.Provider.SANDBOX,
            "browser:pending",
        )
        ids = {state: session.id for state, session in classes.items()}
        return {"classes": ids, "pending": pending.id}


def endpoint_of(app, path: str) -> str | None:
    try:
        endpoint, _ = app.url_map.bind("localhost").match(path, method="GET")
    except HTTPException:
        return None
    return endpoint


def walk(
    app, page: Page, live_server: str, seeds: list[str], on_page=None
) -> tuple[set[str], list[str]]:
    """Visit the seeds and every same-origin link found on the way; the endpoints seen and
    the problems the browser reported, each named with its page. `on_page(path, endpoint)`,
    if given, looks at each page once it has settled (the phone walk measures it there)."""
    problems: list[str] = []
    current = {"path": ""}

    def on_console(message):
        if message.type == "error":
            problems.append(f"{current['path']}: console error: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"{current['path']}: {error}"))
    queue, seen, endpoints = list(seeds), set(), set()
    while queue and len(seen) < MAX_PAGES:
        path = queue.pop(0)
        endpoint = endpoint_of(app, urlsplit(path).path)
        if path in seen or endpoint is None or endpoint in SKIPPED_ENDPOINTS:
            continue
        seen.add(path)
        current["path"] = path
        response = page.goto(f"{live_server}{path}")
        assert response is not None and response.status < 400, (path, response and response.status)
        endpoints.add(endpoint_of(app, urlsplit(page.url).path))
        # Long enough for an open class's timer to poll and swap itself at least once.
        page.wait_for_timeout(1300 if endpoint == "classes.show" else 150)
        if on_page is not None:
            on_page(path, endpoint_of(app, urlsplit(page.url).path))
        for href in page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)"):
            link = urlsplit(href)
            if link.netloc == urlsplit(live_server).netloc:
                queue.append(link.path + (f"?{link.query}" if link.query else ""))
    return endpoints, problems


def class_pages(site) -> list[str]:
    return [f"/classes/{class_id}" for class_id in site["classes"].values()]


def seeds_for(page: Page, live_server: str, site, role: str) -> list[str]:
    """Log in as `role` (unless anonymous) and return where its walk starts."""
    emails = {"student": "sam@example.com", "teacher": "tara@example.com"}
    seeds = ["/"]
    if role != "anonymous":
        log_in(page, live_server, emails.get(role, "ada@example.com"))
        seeds = ["/dashboard", "/notifications/"]
        own = dict(site["classes"])
        if role != "admin":
            own.pop("paused")  # another teacher's and student's class
        seeds += [f"/classes/{class_id}" for class_id in own.values()]
    if role == "student":
        seeds += [f"/buy/sandbox/{site['pending']}", "/classes/new"]
    return seeds


@pytest.mark.parametrize("role", ["anonymous", "student", "teacher", "admin"])
def test_every_page_of_each_role_is_clean_under_the_csp(app, live_server, page: Page, site, role):
    page.add_init_script(REPORT_VIOLATIONS)
    seeds = seeds_for(page, live_server, site, role)

    endpoints, problems = walk(app, page, live_server, seeds)

    assert problems == []
    assert EXPECTED[role] <= endpoints, EXPECTED[role] - endpoints


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
    page.get_by_label("Start (UTC)").fill(f"{taken:%Y-%m-%dT%H:%M}")
    page.get_by_role("button", name="Book the class").click()
    expect(page.locator("#start-error")).to_have_text(
        f"Tara Teacher is already booked on {taken:%d %b %Y} from {taken:%H:%M} to "
        f"{taken + timedelta(hours=1):%H:%M} UTC. Choose another time."
    )
    # Chromium logs the page's own status, 422 as meant; nothing else, no CSP violation.
    assert problems == [
        "Failed to load resource: the server responded with a status of 422 (UNPROCESSABLE ENTITY)"
    ]
