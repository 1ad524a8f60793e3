"""The phone menu: one line beside the brand, closed; its links and the log-out form work
when it is open. (Every page of every role is checked on a phone, and pictured, by the
walk in test_csp_browser.py: tests/browser/walk.py's PhoneCheck.)"""

from playwright.sync_api import Page, expect

from tests.browser.walk import NAV_HEIGHT, PHONE, seeds_for


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
