"""Every page of every role on a phone (390 by 844): nothing makes the page scroll sideways.

The walk is the CSP suite's (tests/browser/walk.py: same world, same seeds, every link
followed). On each page
the document must be no wider than the window, and no element may reach past the
window's edges unless it sits inside an element that scrolls (or clips) sideways itself,
like the console's section line or a wide table. A failure names the page and its
widest element.

The same walk saves a full-page screenshot of each page, once per role and endpoint, at
390 and at 1280 px, to test-results/pages/<role>-<endpoint>-<width>.png, so that a
reviewer can look at the whole product in one folder (test-results/ is not committed).
"""

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.walk import seeds_for, walk

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


def file_name(role: str, endpoint: str, width: int) -> Path:
    return PAGES / f"{role}-{endpoint}-{width}.png"


# The layout is the same whatever the database: the walk runs once, on SQLite (the CSP
# walk covers both databases).
@pytest.mark.backends("sqlite")
@pytest.mark.parametrize("role", ["anonymous", "student", "teacher", "admin"])
def test_no_page_of_any_role_scrolls_sideways_on_a_phone(app, live_server, page: Page, site, role):
    PAGES.mkdir(parents=True, exist_ok=True)
    seeds = seeds_for(page, live_server, site, role)
    page.set_viewport_size(PHONE)
    problems: list[str] = []
    pictured: set[str] = set()
    measured: list[str] = []

    def on_page(path: str, endpoint: str) -> None:
        measured.append(path)
        found = page.evaluate(OVERFLOW)
        if found["scrollWidth"] > found["width"] or found["wide"]:
            widest = found["wide"][0] if found["wide"] else None
            problems.append(
                f"{path} ({endpoint}): the page is {found['scrollWidth']} px wide in a "
                f"{found['width']} px window; widest element: {widest}"
            )
        nav = page.locator("header.site-header nav").bounding_box()
        if nav is None or nav["height"] > NAV_HEIGHT:
            tall = round(nav["height"]) if nav else None
            problems.append(f"{path} ({endpoint}): the navigation is {tall} px tall, not one line")
        if endpoint in pictured:
            return
        pictured.add(endpoint)
        page.screenshot(path=file_name(role, endpoint, 390), full_page=True)
        page.set_viewport_size(DESKTOP)
        page.screenshot(path=file_name(role, endpoint, 1280), full_page=True)
        page.set_viewport_size(PHONE)

    endpoints, _problems = walk(app, page, live_server, seeds, on_page=on_page)

    # A page that is not found, as this role meets it: its links fit too.
    response = page.goto(f"{live_server}/no-such-page")
    assert response is not None and response.status == 404
    on_page("/no-such-page", "error-404")

    assert problems == []
    assert len(measured) >= len(seeds)
    assert all(file_name(role, endpoint, 390).exists() for endpoint in endpoints)
    assert all(file_name(role, endpoint, 1280).exists() for endpoint in endpoints)


@pytest.mark.backends("sqlite")
def test_the_phone_menu_opens_to_the_links_and_logs_out(app, live_server, page: Page, site):
    """Closed, the menu is one line beside the brand; open, its links and the log-out
    form work (a POST with its CSRF token)."""
    seeds_for(page, live_server, site, "student")
    page.set_viewport_size(PHONE)
    page.goto(f"{live_server}/dashboard")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Buy tokens")).to_be_hidden()
    header = page.locator("header.site-header nav").bounding_box()
    assert header is not None and header["height"] <= NAV_HEIGHT  # one line, not three
    nav.get_by_text("Menu").click()
    nav.get_by_role("link", name="Buy tokens").click()
    expect(page.get_by_role("heading", name="Buy tokens")).to_be_visible()
    nav.get_by_text("Menu").click()
    nav.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("navigation", name="Main").get_by_text("Menu")).to_be_visible()
    page.get_by_role("navigation", name="Main").get_by_text("Menu").click()
    expect(nav.get_by_role("link", name="Log in")).to_be_visible()
    expect(page.get_by_test_id("nav-user")).to_have_count(0)
