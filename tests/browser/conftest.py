"""Browser suite: Playwright drives Debian's Chromium against the app on a free local port."""

import os
import threading

import pytest
from werkzeug.serving import make_server

from tests.helpers import require

CHROMIUM = os.environ.get("SOMA_CHROMIUM", "/usr/bin/chromium")

# Chromium's own calls home are refused on a closed network; keep it quiet and local.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Launch Debian's Chromium; Playwright's own browser download is never used."""
    if not os.access(CHROMIUM, os.X_OK):
        require("Chromium", f"{CHROMIUM} not found (apt-get install chromium)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture
def live_server(app):
    """Serve `app` on 127.0.0.1 on a free port, in a thread; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _quick_failures(page):
    """Fail in seconds, not Playwright's default 30, when something never shows."""
    page.set_default_timeout(10_000)
    page.set_default_navigation_timeout(10_000)
