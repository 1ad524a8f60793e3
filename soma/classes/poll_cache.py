"""What the timer poll reads, kept by each worker until PostgreSQL says it changed.

The poll reads the class and the viewer's row (soma.classes.service.view_for) every
second for every open class page, though a class changes a few times in its life.
A worker keeps each (viewer, class) read here, and drops it when either row changes:

- migration 0026 puts triggers on `class_sessions` (any update or delete) and on
  `users` (an update of `session_version` or `role`, a delete) that NOTIFY
  `soma_timer` with `c:<class id>` or `u:<user id>`; PostgreSQL delivers a
  notification when the transaction that made it commits, to every listener;
- each worker holds one connection that LISTENs, in a thread of its own, and
  drops what each notification names;
- a commit of the worker's own (a SQLAlchemy transaction on its engine) empties
  the whole cache, before the database commits and again once its connection is
  back in the pool, so a request that follows a change in the same worker never
  waits for the notification (a poll read while the commit was under way is not
  kept past it);
- a read begun before a change is never kept after it: a read is stored only if
  no notification naming its class or viewer (and no emptying) came since it
  began;
- while the listening connection is down, or before it listens, nothing is
  kept or served; when it listens again the cache starts empty.

Staleness: a poll can show a row older than the newest commit for as long as the
notification takes to arrive (milliseconds). Should notifications stop without
the connection failing (a network that drops packets silently), nothing is
served older than CACHE_SECONDS: each entry is read again after that. The
listener also checks its connection every PING_SECONDS.

Only on PostgreSQL (SQLite has no notifications: every poll reads), and only
with TIMER_POLL_CACHE on (the default, but in tests, which turn it on where they
test it: a listening connection per test app would be many).
"""

import logging
import os
import threading
import time
import weakref
from collections import deque

import psycopg
from sqlalchemy import event

log = logging.getLogger(__name__)

CHANNEL = "soma_timer"
CACHE_SECONDS = 10.0
PING_SECONDS = 1.0
MAX_ENTRIES = 50_000  # emptied when full
RECENT = 1024  # notifications remembered, to refuse a read that began before one
RETRY_SECONDS = (0.5, 1, 2, 5)
TRIGGERS = ["class_sessions_timer_notify", "users_timer_notify"]  # migration 0026
_COMMITTED = "soma_timer_committed"  # a connection's mark: it committed since its checkout


class PollCache:
    """One worker's cache of timer reads for one app (see the module)."""

    def __init__(self, url: str, engine):
        self.url = url
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, int], tuple[object, int, float]] = {}
        self._by_class: dict[int, set[tuple[int, int]]] = {}
        self._by_user: dict[int, set[tuple[int, int]]] = {}
        self._seq = 0  # counts every notification and every emptying
        self._emptied = 0  # the count at the last emptying
        self._recent: deque[tuple[int, str, int]] = deque(maxlen=RECENT)
        self.live = False  # listening: entries may be served and stored
        self._pid = None
        self.listening = threading.Event()  # set once LISTEN is in place (tests wait on it)
        event.listen(engine, "commit", self._on_commit)
        event.listen(engine, "checkin", self._on_checkin)

    # The poll's side ---------------------------------------------------------------------

    def get(self, user_id: int, class_id: int):
        """(class view, session version) if kept and fresh, else None."""
        self._start()
        if not self.live:
            return None
        found = self._entries.get((user_id, class_id))
        if found is None or time.monotonic() - found[2] > CACHE_SECONDS:
            return None
        return found[0], found[1]

    def mark(self) -> int:
        """Taken before a read: `put` stores the read only if nothing changed since."""
        return self._seq

    def put(self, user_id: int, class_id: int, view, session_version: int, mark: int) -> None:
        with self._lock:
            if not self.live or self._emptied > mark:
                return
            if not self._unchanged(user_id, class_id, mark):
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._empty()
                return
            key = (user_id, class_id)
            self._entries[key] = (view, session_version, time.monotonic())
            self._by_class.setdefault(class_id, set()).add(key)
            self._by_user.setdefault(user_id, set()).add(key)

    def _unchanged(self, user_id: int, class_id: int, mark: int) -> bool:
        """Whether no notification since `mark` names the class or the user."""
        if self._seq == mark:
            return True
        oldest_kept = self._recent[0][0] if self._recent else self._seq + 1
        if oldest_kept > mark + 1:  # some were forgotten: they may have named it
            return False
        for seq, kind, ident in reversed(self._recent):
            if seq <= mark:
                break
            if (kind == "c" and ident == class_id) or (kind == "u" and ident == user_id):
                return False
        return True

    # What changes it ---------------------------------------------------------------------

    def forget(self, payload: str) -> None:
        """Drop what a notification (`c:<class id>` or `u:<user id>`) names."""
        kind, _, ident = payload.partition(":")
        try:
            number = int(ident)
        except ValueError:
            self.empty()
            return
        with self._lock:
            self._seq += 1
            self._recent.append((self._seq, kind, number))
            index = self._by_class if kind == "c" else self._by_user if kind == "u" else None
            if index is None:
                self._empty()
                return
            for key in index.pop(number, ()):
                self._entries.pop(key, None)
                other = self._by_user if kind == "c" else self._by_class
                keys = other.get(key[0] if kind == "c" else key[1])
                if keys is not None:
                    keys.discard(key)

    def empty(self) -> None:
        with self._lock:
            self._empty()

    def _empty(self) -> None:
        self._seq += 1
        self._emptied = self._seq
        self._entries.clear()
        self._by_class.clear()
        self._by_user.clear()

    def _on_commit(self, connection) -> None:
        # SQLAlchemy says so before the database commits; a poll of another thread may
        # read the rows as they were in between and store them. So the cache is emptied
        # again once the connection is back in the pool, its commit done: anything read
        # before then is dropped, or refused by `put` (its mark is older).
        connection.info[_COMMITTED] = True
        self.empty()

    def _on_checkin(self, _dbapi_connection, record) -> None:
        if record is not None and record.info.pop(_COMMITTED, False):
            self.empty()

    # The listener --------------------------------------------------------------------------

    def _start(self) -> None:
        """Start this process's listener once (again in a forked child)."""
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            self._pid = pid
            self.live = False
            self.listening.clear()
            self._empty()
        thread = threading.Thread(
            target=_listen, args=(weakref.ref(self), self.url), name="soma-timer", daemon=True
        )
        thread.start()

    def _down(self) -> None:
        with self._lock:
            self.live = False
            self.listening.clear()
            self._empty()

    def _up(self) -> None:
        with self._lock:
            self._empty()
            self.live = True
            self.listening.set()


class MissingTriggers(Exception):
    """The database has no triggers to notify the cache (migration 0026 not applied)."""


def _listen(ref, url: str) -> None:
    """The listener thread: LISTEN, apply each notification, check the connection; on any
    failure stop serving, and try again. Ends when its cache is gone."""
    attempt = 0
    while ref() is not None:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
                # Without the triggers (the code is newer than the database: run `flask
                # db upgrade`) nothing would ever be heard: keep serving nothing.
                found = connection.execute(
                    "SELECT count(*) FROM pg_trigger WHERE tgname = ANY(%s) AND tgenabled <> 'D'",
                    (TRIGGERS,),
                ).fetchone()[0]
                if found != len(TRIGGERS):
                    raise MissingTriggers(
                        "the timer cache's triggers are missing (flask db upgrade): "
                        "every poll reads the database"
                    )
                connection.execute(f"LISTEN {CHANNEL}")
                cache = ref()
                if cache is None:
                    return
                cache._up()
                del cache
                attempt = 0
                while True:
                    for notification in connection.notifies(timeout=PING_SECONDS):
                        cache = ref()
                        if cache is None:
                            return
                        cache.forget(notification.payload)
                        del cache
                    if ref() is None:
                        return
                    connection.execute("SELECT 1")
        except MissingTriggers as missing:
            if attempt == 0:
                log.warning("%s", missing)
        except Exception as error:  # the connection failed, or the database is gone
            if attempt == 0:  # once per outage; every poll reads the database meanwhile
                log.warning("timer cache listener lost its connection: %s", error)
            log.debug("timer cache listener lost its connection", exc_info=True)
        cache = ref()
        if cache is None:
            return
        cache._down()
        del cache
        time.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
        attempt += 1
