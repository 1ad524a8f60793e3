"""Browser suite: Playwright drives Debian's Chromium against the app on a free local port."""

import os
import threading
from datetime import timedelta

import pytest
from werkzeug.serving import make_server

from soma.classes import service as class_service
from soma.classes.machine import Action
from soma.purchases import service as purchase_service
from tests.builders import make_class, make_funded_user, make_user, paid_purchase
from tests.helpers import ShiftedClock, require

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
