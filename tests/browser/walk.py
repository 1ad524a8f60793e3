"""The walk of every page a role can reach: where each role starts, and every same-origin
link followed from there; on each page, the phone check (`PhoneCheck`). The world it walks
(the `site` and `shifted` fixtures) is in conftest.py."""

from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Page
from werkzeug.exceptions import HTTPException

from tests.browser.actions import log_in, screenshot

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


PAGES = Path(__file__).resolve().parents[2] / "test-results" / "pages"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
NAV_HEIGHT = 80  # one line with the menu closed (it was three lines, about 260 px)

# The document's width, and each element that reaches past the window's edges without an
# ancestor that scrolls or clips sideways inside the window; the widest first.
OVERFLOW = """
() => {
  const width = document.documentElement.clientWidth;
  const contained = (element) => {
    for (let up = element.parentElement; up && up !== document.body; up = up.parentElement) {
      const style = getComputedStyle(up);
      if (style.overflowX !== "visible" && style.overflowX !== "clip") {
        const box = up.getBoundingClientRect();
        if (box.left >= -1 && box.right <= width + 1) return true;
      }
    }
    return false;
  };
  const name = (element) => {
    let text = element.tagName.toLowerCase();
    if (element.id) text += "#" + element.id;
    for (const cls of element.classList) text += "." + cls;
    const testid = element.getAttribute("data-testid");
    if (testid) text += `[data-testid=${testid}]`;
    const words = (element.innerText || "").trim().replace(/\\s+/g, " ").slice(0, 40);
    return words ? `${text} "${words}"` : text;
  };
  const wide = [];
  for (const element of document.body.querySelectorAll("*")) {
    const box = element.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    if (box.right <= width + 1 && box.left >= -1) continue;
    if (contained(element)) continue;
    wide.push({element: name(element), width: Math.round(box.width),
               left: Math.round(box.left), right: Math.round(box.right)});
  }
  wide.sort((a, b) => b.width - a.width);
  return {scrollWidth: document.documentElement.scrollWidth, width, wide: wide.slice(0, 3)};
}
"""


class PhoneCheck:
    """Every page on a phone (390 by 844): nothing makes the page scroll sideways.

    The document must be no wider than the window, and no element may reach past the
    window's edges unless it sits inside an element that scrolls (or clips) sideways
    itself, like the console's section line or a wide table; the navigation is one line.
    A problem names the page and its widest element. With `pictures`, it also saves a
    full-page screenshot of each page, once per role and endpoint, at 390 and 1280 px, to
    test-results/pages/<role>-<endpoint>-<width>.png, so that a reviewer can look at the
    whole product in one folder (test-results/ is not committed).
    """

    def __init__(self, page: Page, role: str, pictures: bool = True):
        self.page, self.role = page, role
        self.pictures = pictures
        self.problems: list[str] = []
        self.measured: list[str] = []
        self.pictured: set[str] = set()
        PAGES.mkdir(parents=True, exist_ok=True)

    def file_name(self, endpoint: str, width: int) -> Path:
        return PAGES / f"{self.role}-{endpoint}-{width}.png"

    def __call__(self, path: str, endpoint: str) -> None:
        page = self.page
        page.set_viewport_size(PHONE)
        self.measured.append(path)
        found = page.evaluate(OVERFLOW)
        if found["scrollWidth"] > found["width"] or found["wide"]:
            widest = found["wide"][0] if found["wide"] else None
            self.problems.append(
                f"{path} ({endpoint}): the page is {found['scrollWidth']} px wide in a "
                f"{found['width']} px window; widest element: {widest}"
            )
        nav = page.locator("header.site-header nav").bounding_box()
        if nav is None or nav["height"] > NAV_HEIGHT:
            tall = round(nav["height"]) if nav else None
            self.problems.append(f"{path} ({endpoint}): the navigation is {tall} px tall")
        if self.pictures and endpoint not in self.pictured:
            self.pictured.add(endpoint)
            screenshot(page, self.file_name(endpoint, 390))
            page.set_viewport_size(DESKTOP)
            screenshot(page, self.file_name(endpoint, 1280))
        page.set_viewport_size(DESKTOP)
