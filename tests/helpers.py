"""Helpers shared by the suites: service checks, CSRF-aware posting, reading balances, clocks.

Test data is built in tests/builders.py; `make_user`, `fund` and `DEFAULT_PASSWORD` are
importable from here too, for the modules that still import them from here.
"""

import html as html_module
import os
import re
import threading
from collections.abc import Callable

import pytest

from soma.extensions import db
from soma.ledger import atomic
from tests.builders import DEFAULT_PASSWORD, fund, make_user

__all__ = ["DEFAULT_PASSWORD", "fund", "make_user"]  # re-exported from tests.builders

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
POSTGRES_DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

_CSRF_META = re.compile(r'"X-CSRFToken": "([^"]+)"')


def postgres_server_url() -> str:
    """The PostgreSQL server the tests use (SOMA_TEST_POSTGRES_URL), at its maintenance database."""
    return os.environ.get("SOMA_TEST_POSTGRES_URL", POSTGRES_DEFAULT_URL)


def require(service_name: str, reason: str):
    """Skip the test when a service is missing; in CI, fail it instead."""
    if IN_CI:
        pytest.fail(f"{service_name} is required in CI: {reason}", pytrace=False)
    pytest.skip(f"{service_name} not available: {reason}")


def csrf_from(html: str) -> str:
    """Return the CSRF token that the base layout gives htmx."""
    match = _CSRF_META.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


def hidden_fields(html: str) -> dict[str, str]:
    """The hidden inputs of the page's forms, by name: what a browser sends back unseen."""
    found = {}
    for tag in re.findall(r"<input[^>]*>", html):
        if 'type="hidden"' in tag:
            name = re.search(r'name="([^"]*)"', tag)
            value = re.search(r'value="([^"]*)"', tag)
            if name:
                found[name.group(1)] = html_module.unescape(value.group(1)) if value else ""
    return found


def text_of(html: str) -> str:
    """The page's text with tags removed and whitespace collapsed, as a reader sees it."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def post_form(client, url: str, data: dict | None = None, page: str | None = None, **kwargs):
    """POST `data` to `url` the way a browser would: with the CSRF token of `page`."""
    html = client.get(page or url, follow_redirects=True).get_data(as_text=True)
    return client.post(url, data={**(data or {}), "csrf_token": csrf_from(html)}, **kwargs)


def confirm_post(client, url: str, data: dict, **kwargs):
    """POST an admin form, then confirm it the way the admin does: the confirmation page
    must come back (the first POST acts on nothing), and its hidden fields are posted
    again. A refusal before the confirmation step is returned as it is."""
    first = client.post(url, data=data)
    html = first.get_data(as_text=True)
    if first.status_code != 200 or 'data-testid="admin-confirm"' not in html:
        return first
    return client.post(url, data=hidden_fields(html), **kwargs)


def balances(user_id: int) -> tuple[int, int]:
    """The user's (available, locked), read fresh from the database."""
    from sqlalchemy import select

    from soma.models import Wallet

    row = db.session.execute(
        select(Wallet.available, Wallet.locked).where(Wallet.user_id == user_id)
    ).one()
    return row.available, row.locked


class FakeClock:
    """A clock a test moves by hand; install it as the app's `SOMA_CLOCK`."""

    def __init__(self, start=None):
        from datetime import UTC, datetime

        self.now = start or datetime(2026, 11, 24, 9, 0, tzinfo=UTC)

    def __call__(self):
        return self.now

    def advance(self, seconds: float = 0, minutes: float = 0):
        from datetime import timedelta

        self.now += timedelta(seconds=seconds, minutes=minutes)
        return self.now


class ShiftedClock:
    """The real time plus an offset a test can move: timers run, and days pass at will."""

    def __init__(self):
        from datetime import timedelta

        self.offset = timedelta()

    def __call__(self):
        from soma.models import utcnow

        return utcnow() + self.offset

    def advance(self, seconds: float = 0, minutes: float = 0):
        from datetime import timedelta

        self.offset += timedelta(seconds=seconds, minutes=minutes)


THREAD_TIMEOUT = 60


def race(app, work: list[Callable[[], object]], how: dict | None = None):
    """Run each callable in its own thread and transaction, all released at once.

    Returns, in order, ("ok", result) or ("error", exception) for each. With
    `how` asking for own transactions, the operations take their own pooled
    connections, so the session does not hold one of its own.
    """
    barrier = threading.Barrier(len(work))
    outcomes: list[tuple[str, object] | None] = [None] * len(work)

    def run(index: int, fn: Callable[[], object]) -> None:
        with app.app_context():
            if not how:
                db.session.connection()  # connect before the start line, not after it
            barrier.wait(timeout=THREAD_TIMEOUT)
            try:
                with atomic():
                    outcomes[index] = ("ok", fn())
            except Exception as error:
                outcomes[index] = ("error", error)

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(work)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a worker hung (deadlock?)"
    assert all(outcome is not None for outcome in outcomes), outcomes
    return outcomes


def ok(outcomes):
    return [value for status, value in outcomes if status == "ok"]


def errors(outcomes):
    return [value for status, value in outcomes if status == "error"]


def wallet_row(user_id: int):
    """The user's wallet row, read fresh."""
    from sqlalchemy import select

    from soma.models import Wallet

    db.session.expire_all()
    return db.session.scalar(select(Wallet).where(Wallet.user_id == user_id))


def postings_of(wallet_id: int) -> list:
    """A wallet's postings in the order of its chain."""
    from sqlalchemy import select

    from soma.models import Posting

    return db.session.scalars(
        select(Posting).where(Posting.wallet_id == wallet_id).order_by(Posting.seq)
    ).all()


def audit_scope():
    """An incremental audit run's scope, the entries it checks and its late entries (see
    soma.audit.checkpoint), as prepared in the run's snapshot (then rolled back)."""
    from sqlalchemy import select, text

    from soma.audit import checkpoint
    from soma.models import JournalEntry

    checkpoint.begin_snapshot()
    scope, found = checkpoint.prepare(full=False)
    assert found == [] and not scope.full
    entries = set(db.session.scalars(select(JournalEntry.id).where(scope.entries(JournalEntry.id))))
    late = set(db.session.scalars(text("SELECT entry_id FROM audit_scope_entries")))
    checkpoint.finish_scope()
    checkpoint.rollback()
    return scope, entries, late
