"""The timer poll's rate limit: generous, per user, and cheap enough to ask every second.

Every open class page polls its timer every second, so the poll has a limit of its
own, TIMER_RATE_LIMIT (300 per minute by default: five open class pages polling
every second) per logged-in user, or per client address when the session names no
one. Flask-Limiter's path (its limits resolved, a round trip to the store to count,
another for its headers) would cost more than the whole poll otherwise does.

So the count lives in the limiter's store (Redis in production, shared by every
worker) as a fixed window, but a worker adds its polls to it a batch at a time:
it counts them itself and sends the batch's total in one round trip. A key the
store reports over its limit is refused by that worker until its local window
(the same length, on the clock) ends, without asking the store again. A worker's
unsent polls, fewer than a batch, go uncounted when its window turns, so a client
gets at most the limit plus a batch less one per worker in a window. Small limits
(tests') are counted one poll at a time, exactly.
"""

import threading
import time
from functools import wraps

from flask import abort, current_app, request, session
from limits import RateLimitItem, parse
from limits.strategies import FixedWindowRateLimiter

from soma.extensions import limiter

SCOPE = "soma-timer-poll"
# The verdict on a poll already counted, left in the WSGI environ (soma.classes.fast_poll).
VERDICT = "soma.timer_poll.allowed"
BATCH_MAX = 10
# Limits under BATCH_MAX * this many polls a window are counted a poll at a time.
BATCH_SHARE = 30


class PollLimit:
    """The timer poll's limit for one app in one worker process (see the module)."""

    def __init__(self, text: str):
        self.item: RateLimitItem = parse(text)
        self.batch = max(1, min(BATCH_MAX, self.item.amount // BATCH_SHARE))
        self.seconds = self.item.get_expiry()
        self._lock = threading.Lock()
        self._window = -1
        self._unsent: dict[str, int] = {}
        self._refused: set[str] = set()
        self._counter: FixedWindowRateLimiter | None = None

    def allow(self, key: str) -> bool:
        """Count one poll of `key`; False when `key` is over the limit."""
        window = int(time.time()) // self.seconds
        with self._lock:
            if window != self._window:
                self._window = window
                self._unsent.clear()
                self._refused.clear()
            if key in self._refused:
                return False
            unsent = self._unsent.get(key, 0) + 1
            if unsent < self.batch:
                self._unsent[key] = unsent
                return True
            self._unsent.pop(key, None)
        # The round trip to the store, outside the lock: other threads carry on.
        if self._counter_for(limiter.storage).hit(self.item, SCOPE, key, cost=unsent):
            return True
        with self._lock:
            if window == self._window:
                self._refused.add(key)
        return False

    def _counter_for(self, storage) -> FixedWindowRateLimiter:
        """The fixed-window counter on `storage`, made once (and again if the store changes)."""
        counter = self._counter
        if counter is None or counter.storage is not storage:
            counter = self._counter = FixedWindowRateLimiter(storage)
        return counter


def poll_limit() -> PollLimit:
    """The app's PollLimit, made on first use."""
    return poll_limit_of(current_app)


def poll_limit_of(app) -> PollLimit:
    """`app`'s PollLimit, made on first use."""
    found = app.extensions.get("soma_timer_poll_limit")
    if found is None:
        found = app.extensions.setdefault(
            "soma_timer_poll_limit", PollLimit(app.config["TIMER_RATE_LIMIT"])
        )
    return found


def poll_limited(view):
    """Count each call of `view` against its user (or, with no one logged in, its
    address), before anything else: past the limit, 429.

    A poll the WSGI layer (soma.classes.fast_poll) has counted and handed on is not
    counted again: its verdict is in the environ."""

    @wraps(view)
    def limited(*args, **kwargs):
        allowed = request.environ.get(VERDICT)
        if allowed is None:
            user_id = session.get("_user_id")
            key = f"user:{user_id}" if user_id is not None else f"address:{request.remote_addr}"
            allowed = poll_limit().allow(key)
        if not allowed:
            abort(429)
        return view(*args, **kwargs)

    return limited
