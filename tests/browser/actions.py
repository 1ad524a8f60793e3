"""What a person does in the browser, in more than one test."""

from playwright.sync_api import Locator, Page, expect

from tests.builders import DEFAULT_PASSWORD


def log_in(page: Page, live_server: str, email: str):
    page.goto(f"{live_server}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    page.locator("main form").get_by_role("button", name="Log in").click()
    # On a phone the user's name is inside the closed menu: there, not necessarily in view.
    expect(page.get_by_test_id("nav-user")).to_be_attached()


def main_nav(page: Page) -> Locator:
    """The site's navigation with its links in view: on a phone its menu is opened first."""
    # Its stylesheet applied first: before it is, the phone's menu button shows at any
    # width, and a click on it races the styles that hide it (seen once in CI at 1280 px).
    page.wait_for_load_state("load")
    nav = page.get_by_role("navigation", name="Main")
    menu = nav.locator("details.nav-menu")
    if nav.locator("details.nav-menu > summary").is_visible() and not menu.evaluate("m => m.open"):
        nav.locator("details.nav-menu > summary").click()
    return nav


# A picture of the page for people to look at, not a timing: on a busy machine (the
# suite's two workers, PostgreSQL and Chromium on two cores) a full-page capture has
# taken more than the 10 s every other step is given.
SCREENSHOT_TIMEOUT_MS = 30_000


def screenshot(page: Page, path) -> None:
    """A full-page screenshot at `path`, animations stopped (each picture the same)."""
    page.screenshot(path=path, full_page=True, animations="disabled", timeout=SCREENSHOT_TIMEOUT_MS)
