"""The walk of every page a role can reach, shared by the CSP and the phone suites: where
each role starts, and every same-origin link followed from there. The world it walks
(the `site` and `shifted` fixtures) is in conftest.py."""

from urllib.parse import urlsplit

from playwright.sync_api import Page
from werkzeug.exceptions import HTTPException

from tests.browser.actions import log_in

# Links a walk does not follow: they download a file, or leave the page's role.
SKIPPED_ENDPOINTS = {"wallet.export_csv", "static"}

MAX_PAGES = 80


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
