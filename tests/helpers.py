"""Helpers shared by the suites: service checks, CSRF-aware posting, test data builders."""

import os
import re

import pytest

from soma.auth import service
from soma.models import User

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}

DEFAULT_PASSWORD = "correct-horse-battery"

_CSRF_META = re.compile(r'"X-CSRFToken": "([^"]+)"')


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


def text_of(html: str) -> str:
    """The page's text with tags removed and whitespace collapsed, as a reader sees it."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def post_form(client, url: str, data: dict | None = None, page: str | None = None, **kwargs):
    """POST `data` to `url` the way a browser would: with the CSRF token of `page`."""
    html = client.get(page or url, follow_redirects=True).get_data(as_text=True)
    return client.post(url, data={**(data or {}), "csrf_token": csrf_from(html)}, **kwargs)


def make_user(
    role: str = "student",
    email: str | None = None,
    name: str | None = None,
    password: str = DEFAULT_PASSWORD,
) -> User:
    """Create a user straight through the service (needs an app context)."""
    make_user.counter += 1
    email = email or f"{role}{make_user.counter}@example.com"
    return service.create_user(email, name or f"{role.title()} {make_user.counter}", password, role)


make_user.counter = 0


def fund(user_id: int, tokens: int, key: str | None = None, **kwargs):
    """Credit `tokens` to a user through the ledger, as a purchase (needs an app context)."""
    from soma import ledger

    fund.counter += 1
    with ledger.atomic():
        return ledger.credit(user_id, tokens, key=key or f"test:fund:{fund.counter}", **kwargs)


fund.counter = 0


def balances(user_id: int) -> tuple[int, int]:
    """The user's (available, locked), read fresh from the database."""
    from sqlalchemy import select

    from soma.extensions import db
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
