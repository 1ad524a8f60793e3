"""Failed log-ins counted per account, beside the limit per address.

Every wrong password given for an email counts against that email, whether or
not an account has it (so a pause says nothing about which emails exist). Past
10 failures in 15 minutes the email is paused; the pause grows with the
failures: 20 in an hour pause it up to an hour, 40 in a day up to a day. A
log-in that succeeds clears the count. A paused email is refused before its
password is checked, with the time to try again.

The counts live in Flask-Limiter's storage (RATELIMIT_STORAGE_URI): Redis in
production, so every gunicorn worker and host sees the same counts and a pause
holds whichever worker answers; memory:// in tests. They are kept in moving
windows (every failure expires on its own, exactly the window after it), and
under a hash of the email, never the email itself.
"""

import hashlib
import math
import time
from datetime import UTC, datetime, timedelta

from limits import RateLimitItem, parse
from limits.storage import MovingWindowSupport
from limits.strategies import MovingWindowRateLimiter, RateLimiter

from soma.errors import wait_text
from soma.extensions import limiter

ACCOUNT_FAILURE_LIMITS: tuple[RateLimitItem, ...] = tuple(
    parse(text) for text in ("10 per 15 minutes", "20 per hour", "40 per day")
)
_SCOPE = "soma-login-failures"


def _strategy() -> RateLimiter:
    """Moving windows on the limiter's storage, or its own strategy where that has none."""
    storage = limiter.storage
    if isinstance(storage, MovingWindowSupport):
        return MovingWindowRateLimiter(storage)
    return limiter.limiter


def _account_key(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def paused_until(email: str) -> datetime | None:
    """When log-in for `email` may be tried again, if it is paused now; else None."""
    strategy = _strategy()
    key = _account_key(email)
    resets = [
        strategy.get_window_stats(item, _SCOPE, key).reset_time
        for item in ACCOUNT_FAILURE_LIMITS
        if not strategy.test(item, _SCOPE, key)
    ]
    if not resets:
        return None
    return datetime.fromtimestamp(max(resets), tz=UTC)


def record_failure(email: str) -> None:
    """Count a wrong password given for `email`."""
    strategy = _strategy()
    key = _account_key(email)
    for item in ACCOUNT_FAILURE_LIMITS:
        strategy.hit(item, _SCOPE, key)


def clear_failures(email: str) -> None:
    """Forget the failures of `email`: its owner has just logged in."""
    strategy = _strategy()
    key = _account_key(email)
    for item in ACCOUNT_FAILURE_LIMITS:
        strategy.clear(item, _SCOPE, key)


def seconds_until(moment: datetime) -> int:
    """Whole seconds from now until `moment`, at least 1."""
    return max(1, math.ceil(moment.timestamp() - time.time()))


def pause_message(until: datetime) -> str:
    """What a paused account's log-in says: why, and when to try again."""
    seconds = seconds_until(until)
    minute_after = until.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return (
        "Too many wrong passwords were tried for this account, so log-in to it is "
        f"paused to protect it. Try again in {wait_text(seconds)} "
        f"(from {minute_after:%H:%M} UTC)."
    )


def allow(limit: str, key: str) -> bool:
    """Count one use of `key` against `limit` ("5 per hour"); False once it is spent."""
    return _strategy().hit(parse(limit), _SCOPE, key)
