"""The timer poll, cut to what a fragment fetched every second needs, and no less safe:
what it shows each side, who it refuses, its headers, and its own rate limit."""

import os
import re
import socket
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from types import SimpleNamespace

import pytest
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy import create_engine, event, update

from soma.auth.freeze import freeze
from soma.auth.service import end_sessions
from soma.classes import service
from soma.classes.fast_poll import THROUGH_FLASK, TimerPoll
from soma.classes.machine import Action
from soma.classes.poll_cache import PollCache
from soma.classes.poll_limit import SCOPE, PollLimit
from soma.config import ConfigError, build_config
from soma.extensions import db, limiter
from soma.models import JournalEntry, User
from soma.security import CONTENT_SECURITY_POLICY
from tests.builders import make_class, make_funded_user, make_user
from tests.conftest import TEST_SETTINGS, AuthActions, make_app
from tests.helpers import DEFAULT_PASSWORD, csrf_from, post_form, text_of


@pytest.fixture
def lesson(app, clock):
    """A class in progress for 1 min 15 s, and a logged-in client for each of its sides,
    another teacher and no one."""
    with app.app_context():
        student = make_funded_user(25, email="sam@example.com", name="Sam Student")
        teacher = make_user("teacher", email="tara@example.com", name="Tara Teacher")
        make_user("teacher", email="otto@example.com", name="Otto Other")
        make_user("admin", email="ada@example.com", name="Ada Admin")
        class_id = make_class(student, teacher, "in_progress").id  # started at 09:05
    clock.now = clock.now.replace(minute=5, second=0) + timedelta(seconds=75)
    clients = {"nobody": app.test_client()}
    for who in ("sam", "tara", "otto", "ada"):
        client = app.test_client()
        assert AuthActions(client).login(f"{who}@example.com").status_code == 302
        clients[who] = client
    return class_id, clients


def poll(client, class_id, **headers):
    return client.get(f"/classes/{class_id}/timer?seen=in_progress", headers=headers)


def test_each_side_reads_elapsed_and_time_left_and_its_own_tokens(lesson):
    class_id, clients = lesson
    student = poll(clients["sam"], class_id, **{"HX-Request": "true"})
    assert student.status_code == 200
    html = student.get_data(as_text=True)
    assert "In progress Elapsed 01:15 Time left 58:45" in text_of(html)
    assert "10 tokens of yours are held for this class. Ended now, it would cost you 1 token" in (
        text_of(html)
    )
    assert 'data-testid="elapsed" data-tick="up" data-seconds="75"' in html
    assert 'data-testid="left" data-tick="down" data-seconds="3525"' in html
    # It keeps polling itself, and says nothing changed (the status seen is the class's).
    assert f'hx-get="/classes/{class_id}/timer?seen=in_progress"' in html
    assert 'hx-trigger="every 1s"' in html
    assert "HX-Trigger" not in student.headers
    # A fragment: no layout, no navigation, no footer.
    assert "<html" not in html and "<nav" not in html and "<footer" not in html

    teacher = text_of(poll(clients["tara"], class_id).get_data(as_text=True))
    assert "Elapsed 01:15 Time left 58:45" in teacher
    assert "Ended now, this class would earn you 1 token; 10 tokens if it runs its full time." in (
        teacher
    )
    admin = text_of(poll(clients["ada"], class_id).get_data(as_text=True))
    assert "10 tokens held from the student; 1 token charged if it ended now." in admin


def test_a_status_the_page_has_not_seen_fires_class_changed(lesson):
    class_id, clients = lesson
    answer = clients["sam"].get(f"/classes/{class_id}/timer?seen=scheduled")
    assert answer.headers["HX-Trigger"] == "class-changed"
    assert "Elapsed 01:15" in text_of(answer.get_data(as_text=True))


def test_anyone_else_gets_404_and_nothing_of_the_class(lesson):
    class_id, clients = lesson
    answer = poll(clients["otto"], class_id)
    assert answer.status_code == 404
    assert "Elapsed" not in answer.get_data(as_text=True)
    assert "Fractions" not in answer.get_data(as_text=True)
    assert poll(clients["sam"], class_id + 1000).status_code == 404


def test_no_one_logged_in_is_sent_to_log_in_and_shown_nothing(lesson):
    class_id, clients = lesson
    answer = poll(clients["nobody"], class_id)
    assert answer.status_code == 302
    assert answer.location.startswith("/login")
    assert "Elapsed" not in answer.get_data(as_text=True)


def test_an_htmx_poll_with_no_one_logged_in_sends_the_whole_page_to_log_in(lesson):
    """htmx follows a redirect itself and would swap the log-in page into the timer; the
    poll gets 401 and HX-Redirect instead, back to the class page, not the fragment."""
    class_id, clients = lesson
    page = f"http://localhost/classes/{class_id}"
    answer = poll(clients["nobody"], class_id, **{"HX-Request": "true", "HX-Current-URL": page})
    assert answer.status_code == 401
    assert answer.headers["HX-Redirect"] == f"/login?next=%2Fclasses%2F{class_id}"
    assert "Location" not in answer.headers
    assert answer.get_data(as_text=True) == ""
    assert answer.headers["Content-Security-Policy"]
    # Two polls refused before the page goes: the log-in page says why once.
    poll(clients["nobody"], class_id, **{"HX-Request": "true", "HX-Current-URL": page})
    login = clients["nobody"].get(f"/login?next=%2Fclasses%2F{class_id}")
    assert text_of(login.get_data(as_text=True)).count("Please log in to see that page.") == 1


@pytest.mark.parametrize(
    "current",
    [
        None,
        "http://localhost//evil.example/x",
        "http://localhost/\\evil.example",
        "http://localhost/a\x01b",
        "http://[broken",
        "http://localhost/" + "a" * 3000,
    ],
)
def test_an_htmx_poll_from_no_safe_page_is_sent_to_log_in_alone(lesson, current):
    class_id, clients = lesson
    headers = {"HX-Request": "true"} | ({"HX-Current-URL": current} if current else {})
    answer = poll(clients["nobody"], class_id, **headers)
    assert answer.status_code == 401
    assert answer.headers["HX-Redirect"] == "/login"


def test_an_htmx_poll_keeps_only_the_path_of_its_page(lesson):
    """Behind a proxy the page's host may not be the one the app sees: only its path is
    used, and it is a path on this site whatever the host said."""
    class_id, clients = lesson
    current = f"https://soma.example/classes/{class_id}"
    answer = poll(clients["nobody"], class_id, **{"HX-Request": "true", "HX-Current-URL": current})
    assert answer.headers["HX-Redirect"] == f"/login?next=%2Fclasses%2F{class_id}"


def test_a_poll_without_htmx_or_restoring_history_is_redirected_as_before(lesson):
    """Not htmx, or htmx restoring its history (which reads no HX-Redirect): Flask-Login's
    own redirect, back to the address asked for, with its message."""
    class_id, clients = lesson
    for headers in ({}, {"HX-Request": "true", "HX-History-Restore-Request": "true"}):
        answer = poll(clients["nobody"], class_id, **headers)
        assert answer.status_code == 302 and "HX-Redirect" not in answer.headers
        assert answer.location == (
            f"/login?next=%2Fclasses%2F{class_id}%2Ftimer%3Fseen%3Din_progress"
        )
    with clients["nobody"].session_transaction() as session:
        assert session["_flashes"] == [("info", "Please log in to see that page.")] * 2


def test_an_htmx_poll_of_an_ended_session_logs_out_and_sends_the_page_to_log_in(app, lesson):
    class_id, clients = lesson
    with app.app_context():
        end_sessions(db.session.scalar(db.select(User).where(User.email == "sam@example.com")))
        db.session.commit()
    page = f"http://localhost/classes/{class_id}?from=calendar"
    answer = poll(clients["sam"], class_id, **{"HX-Request": "true", "HX-Current-URL": page})
    assert answer.status_code == 401
    assert answer.headers["HX-Redirect"] == (
        f"/login?next=%2Fclasses%2F{class_id}%3Ffrom%3Dcalendar"
    )
    assert "Elapsed" not in answer.get_data(as_text=True)
    # Logged out: the class page itself now sends the browser to log in.
    assert clients["sam"].get(f"/classes/{class_id}").status_code == 302


def test_a_frozen_account_is_logged_out_by_its_next_poll(app, lesson):
    class_id, clients = lesson
    assert poll(clients["sam"], class_id).status_code == 200
    with app.app_context():
        admin = db.session.scalar(db.select(User).where(User.email == "ada@example.com"))
        student = db.session.scalar(db.select(User).where(User.email == "sam@example.com"))
        freeze(admin, student.id, "Chargebacks")
    answer = poll(clients["sam"], class_id)
    assert answer.status_code == 302 and answer.location.startswith("/login")
    assert "Elapsed" not in answer.get_data(as_text=True)
    # The session is over: the next poll is not let in either.
    assert poll(clients["sam"], class_id).status_code == 302


def test_the_fragment_carries_every_security_header_and_is_never_stored(lesson):
    class_id, clients = lesson
    headers = poll(clients["sam"], class_id, **{"HX-Request": "true"}).headers
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cache-Control"] == "no-store"


def test_a_poll_does_not_set_the_session_cookie_again(lesson):
    class_id, clients = lesson
    answer = poll(clients["sam"], class_id)
    assert answer.status_code == 200
    assert not [c for c in answer.headers.getlist("Set-Cookie") if c.startswith("session=")]


@contextmanager
def polls_limited_to_three(app):
    """An app on `app`'s database whose timer allows 3 polls a minute, and Sam's class with
    Tara in progress: (that app, the class's id)."""
    limited = make_app(app.config["SQLALCHEMY_DATABASE_URI"], TIMER_RATE_LIMIT="3 per minute")
    try:
        with limited.app_context():
            limiter.reset()
            student = make_funded_user(25, email="sam@example.com")
            teacher = make_user("teacher", email="tara@example.com")
            class_id = make_class(student, teacher, "in_progress").id
        yield limited, class_id
    finally:
        with limited.app_context():
            db.session.remove()
            db.engine.dispose()


def test_the_poll_has_a_limit_per_user(app, clock):
    """Past TIMER_RATE_LIMIT a user's polls are refused (429, no figures); another user's
    polls are not, and a new window lets them in again."""
    with polls_limited_to_three(app) as (limited, class_id):
        sam, tara = limited.test_client(), limited.test_client()
        assert AuthActions(sam).login("sam@example.com").status_code == 302
        assert AuthActions(tara).login("tara@example.com").status_code == 302
        for _ in range(3):
            assert poll(sam, class_id).status_code == 200
        refused = poll(sam, class_id, **{"HX-Request": "true"})
        assert refused.status_code == 429
        assert "Elapsed" not in refused.get_data(as_text=True)
        assert "You have tried too often." in text_of(refused.get_data(as_text=True))
        assert refused.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        # The teacher's own polls are counted apart.
        assert "Elapsed" in text_of(poll(tara, class_id).get_data(as_text=True))
        # No one logged in is counted by address, and refused past the limit as well.
        nobody = limited.test_client()
        assert [poll(nobody, class_id).status_code for _ in range(4)] == [302, 302, 302, 429]


def test_polls_are_counted_in_the_store_a_batch_at_a_time(app, monkeypatch):
    """60 a minute: counted two at a time, so one poll past the limit may go through
    before the store says no; after that the worker refuses without asking again."""
    storage = MemoryStorage()
    monkeypatch.setattr(type(limiter), "storage", property(lambda _: storage))
    counted = FixedWindowRateLimiter(storage)
    item = parse("60 per minute")
    monkeypatch.setattr("soma.classes.poll_limit.time.time", lambda: 600.0)  # mid-window
    with app.app_context():
        limit = PollLimit("60 per minute")
        assert limit.batch == 2
        allowed = [limit.allow("user:7") for _ in range(70)]
        assert allowed == [True] * 61 + [False] * 9
        # 31 batches reached the store; the refused polls were not sent.
        assert counted.get_window_stats(item, SCOPE, "user:7").remaining == 0
        assert storage.get(item.key_for(SCOPE, "user:7")) == 62
        # Another user is untouched.
        assert limit.allow("user:8")
        # The next window: the worker asks the store again (a new window there too).
        storage.reset()
        monkeypatch.setattr("soma.classes.poll_limit.time.time", lambda: 660.0)
        assert limit.allow("user:7")


def test_small_limits_are_counted_poll_by_poll():
    assert PollLimit("5 per minute").batch == 1
    assert PollLimit("300 per minute").batch == 10
    assert PollLimit("100000 per minute").batch == 10


@pytest.mark.parametrize("value", ["lots", "0 per minute", "per minute"])
def test_an_unreadable_timer_limit_stops_the_app_starting(value, tmp_path):
    with pytest.raises(ConfigError, match="TIMER_RATE_LIMIT"):
        build_config({**TEST_SETTINGS, "TIMER_RATE_LIMIT": value}, str(tmp_path))


def test_the_timer_limit_defaults_to_five_pages_a_user(tmp_path):
    assert build_config(dict(TEST_SETTINGS), str(tmp_path))["TIMER_RATE_LIMIT"] == (
        "300 per minute"
    )


# The poll answered beneath Flask (soma.classes.fast_poll) ---------------------------------


@pytest.fixture
def answered(monkeypatch):
    """Whether the WSGI layer answered each timer poll itself (True) or handed it to Flask."""
    seen = []
    answer = TimerPoll.answer

    def watched(self, environ):
        result = answer(self, environ)
        seen.append(result is not None)
        return result

    monkeypatch.setattr(TimerPoll, "answer", watched)
    return seen


def through_flask(client, url, **headers):
    return client.get(url, headers=headers, environ_overrides={THROUGH_FLASK: True})


def assert_same_answer(fast, slow):
    assert fast.status == slow.status
    assert fast.headers.to_wsgi_list() == slow.headers.to_wsgi_list()
    assert fast.get_data() == slow.get_data()


@pytest.mark.parametrize(
    "state", ["scheduled", "in_progress", "paused", "ended_early", "completed", "cancelled"]
)
def test_the_poll_beneath_flask_answers_as_flask_does_in_every_state(app, clock, answered, state):
    """Same status, same headers in the same order, same bytes, for each side and for a
    page that has seen the status or not, or holds an old panel."""
    with app.app_context():
        student = make_funded_user(25, email="sam@example.com")
        teacher = make_user("teacher", email="tara@example.com")
        make_user("admin", email="ada@example.com")
        session = make_class(student, teacher, state)
        class_id, status = session.id, session.status
    clock.advance(minutes=7)  # two minutes into a class that started
    for who in ("sam", "tara", "ada"):
        client = app.test_client()
        assert AuthActions(client).login(f"{who}@example.com").status_code == 302
        for query in (f"seen={status}", "seen=scheduled", f"seen={status}&panel=x", ""):
            url = f"/classes/{class_id}/timer?{query}"
            fast = client.get(url, headers={"HX-Request": "true"})
            assert answered[-1] is True
            assert fast.status_code == 200
            assert_same_answer(fast, through_flask(client, url, **{"HX-Request": "true"}))
            assert (fast.headers.get("HX-Trigger") == "class-changed") == (
                query != f"seen={status}"
            )
            assert fast.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert fast.headers["Cache-Control"] == "no-store"


def test_what_the_poll_beneath_flask_hands_to_flask(app, lesson, answered, monkeypatch):
    """No session, a forged or a stolen one, another's class, a HEAD: Flask answers, as
    before, and nothing of the class is shown."""
    class_id, clients = lesson
    url = f"/classes/{class_id}/timer?seen=in_progress"
    assert poll(clients["sam"], class_id).status_code == 200 and answered == [True]

    assert clients["nobody"].get(url).status_code == 302 and answered[-1] is False
    assert poll(clients["otto"], class_id).status_code == 404 and answered[-1] is False
    assert clients["sam"].head(url).status_code == 200  # Flask's own HEAD

    cookie = clients["sam"].get_cookie("session").value
    forged = app.test_client()
    forged.set_cookie("session", cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB"))
    answer = forged.get(url)
    assert answer.status_code == 302 and answered[-1] is False
    assert "Elapsed" not in answer.get_data(as_text=True)

    # The cookie taken to another browser: strong session protection logs it out.
    stolen = app.test_client()
    stolen.set_cookie("session", cookie)
    answer = stolen.get(url, headers={"User-Agent": "Another browser"})
    assert answer.status_code == 302 and answered[-1] is False
    assert "Elapsed" not in answer.get_data(as_text=True)
    # The same cookie from its own browser is still answered beneath Flask.
    assert poll(clients["sam"], class_id).status_code == 200 and answered[-1] is True


def test_a_remembered_cookie_is_refused_once_it_is_too_old(app, lesson, answered, monkeypatch):
    """A checked cookie is remembered by the worker, but its age is checked on every poll,
    as Flask checks it: past PERMANENT_SESSION_LIFETIME it is no session at all."""
    class_id, clients = lesson
    assert poll(clients["sam"], class_id).status_code == 200
    assert poll(clients["sam"], class_id).status_code == 200 and answered == [True, True]
    lifetime = app.permanent_session_lifetime.total_seconds()
    later = time.time() + lifetime + 5
    monkeypatch.setattr(time, "time", lambda: later)
    answer = poll(clients["sam"], class_id)
    assert answer.status_code == 302 and answer.location.startswith("/login")
    assert answered[-1] is False
    assert "Elapsed" not in answer.get_data(as_text=True)


def test_a_poll_handed_to_flask_is_counted_once(app, clock, answered):
    """The WSGI layer counts the poll, then hands a 404 to Flask, which does not count it
    again: three polls under a limit of three, the fourth refused."""
    with polls_limited_to_three(app) as (limited, class_id):
        sam = limited.test_client()
        assert AuthActions(sam).login("sam@example.com").status_code == 302
        assert poll(sam, class_id + 1000).status_code == 404
        assert poll(sam, class_id + 1001).status_code == 404
        assert poll(sam, class_id).status_code == 200
        assert answered == [False, False, True]
        refused = poll(sam, class_id)
        assert refused.status_code == 429 and answered[-1] is False
        assert "Elapsed" not in refused.get_data(as_text=True)


def class_entries(app, class_id: int) -> list[tuple[str, int]]:
    with app.app_context():
        rows = db.session.execute(
            db.select(JournalEntry.kind, JournalEntry.tokens)
            .where(JournalEntry.reference_type == "class", JournalEntry.reference_id == class_id)
            .order_by(JournalEntry.id)
        ).all()
    return [tuple(row) for row in rows]


def test_a_class_that_falls_due_is_settled_by_flask_once(app, lesson, answered, clock):
    """The poll beneath Flask never settles: a class whose time has run is handed to the
    Flask view, which completes it; the next polls show it completed, beneath Flask."""
    class_id, clients = lesson
    clock.advance(minutes=60)
    answer = poll(clients["sam"], class_id)
    assert answered[-1] is False
    assert answer.headers["HX-Trigger"] == "class-changed"
    assert "Completed" in text_of(answer.get_data(as_text=True))
    again = clients["tara"].get(f"/classes/{class_id}/timer?seen=completed")
    assert answered[-1] is True
    assert "Completed Active time 60:00" in text_of(again.get_data(as_text=True))
    assert "HX-Trigger" not in again.headers
    with app.app_context():
        entries = db.session.execute(
            db.select(JournalEntry.kind, JournalEntry.tokens)
            .where(JournalEntry.reference_type == "class", JournalEntry.reference_id == class_id)
            .order_by(JournalEntry.id)
        ).all()
    assert [tuple(row) for row in entries] == [("class_hold", 10), ("class_settle", 10)]


def test_the_poll_beneath_flask_knows_its_client_as_flask_login_does(app, lesson, answered):
    """Strong session protection hashes the client's first forwarded address and its user
    agent: a session made behind a proxy, in a browser whose name is not ASCII, is answered
    beneath Flask from that browser, and logged out from any other."""
    class_id, _ = lesson
    client = app.test_client()
    client.environ_base.update(
        HTTP_USER_AGENT="Navigateur (é) 1.0".encode().decode("latin1"),
        HTTP_X_FORWARDED_FOR="203.0.113.9, 10.0.0.1",
    )
    assert AuthActions(client).login("sam@example.com").status_code == 302
    url = f"/classes/{class_id}/timer?seen=in_progress"
    fast = client.get(url)
    assert fast.status_code == 200 and answered[-1] is True
    assert_same_answer(fast, through_flask(client, url))
    client.environ_base["HTTP_X_FORWARDED_FOR"] = "198.51.100.7"
    moved = client.get(url)
    assert moved.status_code == 302 and answered[-1] is False
    assert "Elapsed" not in moved.get_data(as_text=True)


# The worker's cache of timer reads (soma.classes.poll_cache) -----------------------------


def wait_until(condition, seconds: float = 10.0) -> bool:
    """Whether `condition()` came true within `seconds` (a notification's delivery)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def cached(app, clock, monkeypatch):
    """An app with the timer cache on (tests have it off), a class in progress, its two
    sides logged in, another app on the same database (another worker, or the sweeper),
    and how many times the poll read the database."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    cached_app = make_app(url, TIMER_POLL_CACHE="1", SOMA_CLOCK=clock)
    other = make_app(url, SOMA_CLOCK=clock)
    reads = []
    view_for = service.view_for

    def counted(*args):
        reads.append(args)
        return view_for(*args)

    monkeypatch.setattr(service, "view_for", counted)
    with app.app_context():
        student = make_funded_user(25, email="sam@example.com")
        teacher = make_user("teacher", email="tara@example.com")
        class_id = make_class(student, teacher, "in_progress").id
        ids = {"sam": student.id, "tara": teacher.id}
    clock.now = clock.now.replace(minute=5, second=0) + timedelta(seconds=75)
    clients = {}
    for who in ("sam", "tara"):
        clients[who] = cached_app.test_client()
        assert AuthActions(clients[who]).login(f"{who}@example.com").status_code == 302
    assert poll(clients["sam"], class_id).status_code == 200  # starts the listener
    with cached_app.app_context():
        cache = cached_app.wsgi_app.cache()
    if cache is not None:
        assert cache.listening.wait(10)
    yield SimpleNamespace(
        app=cached_app,
        other=other,
        cache=cache,
        class_id=class_id,
        clients=clients,
        ids=ids,
        reads=reads,
    )
    for each in (cached_app, other):
        with each.app_context():
            db.session.remove()
            db.engine.dispose()


def test_the_cache_is_kept_only_on_postgresql_and_serves_repeated_polls(app, cached):
    postgres = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
    assert (cached.cache is not None) == postgres
    cached.reads.clear()
    for _ in range(3):
        answer = poll(cached.clients["sam"], cached.class_id)
        assert "In progress Elapsed 01:15" in text_of(answer.get_data(as_text=True))
    # On PostgreSQL the first read is kept and the next polls use it; SQLite reads each.
    assert len(cached.reads) == (1 if postgres else 3)


def test_a_change_by_another_worker_is_shown_once_its_notification_arrives(app, cached, clock):
    """The teacher pauses in another worker: this worker hears of it and its next poll
    reads the class again and shows it paused."""
    poll(cached.clients["sam"], cached.class_id)
    with cached.other.app_context():
        session = service.class_for(db.session.get(User, cached.ids["tara"]), cached.class_id)
        service.act(session, Action.PAUSE, db.session.get(User, cached.ids["tara"]))
    if cached.cache is not None:
        assert wait_until(lambda: cached.cache.get(cached.ids["sam"], cached.class_id) is None)
    answer = poll(cached.clients["sam"], cached.class_id)
    assert answer.headers["HX-Trigger"] == "class-changed"
    assert "Paused Elapsed 01:15" in text_of(answer.get_data(as_text=True))


def control_post(client, class_id: int, name: str):
    page = client.get(f"/classes/{class_id}").get_data(as_text=True)
    return client.post(
        f"/classes/{class_id}/{name}",
        data={"csrf_token": csrf_from(page)},
        headers={"HX-Request": "true"},
    )


def test_a_change_in_the_same_worker_is_shown_by_the_very_next_poll(cached, clock):
    poll(cached.clients["tara"], cached.class_id)
    assert control_post(cached.clients["tara"], cached.class_id, "end").status_code in (200, 303)
    answer = poll(cached.clients["tara"], cached.class_id)  # no wait: the commit emptied the cache
    html = answer.get_data(as_text=True)
    assert "Ended early" in text_of(html) and "hx-trigger" not in html


def test_an_ended_session_is_refused_once_its_notification_arrives(app, cached):
    assert poll(cached.clients["sam"], cached.class_id).status_code == 200
    with cached.other.app_context():
        end_sessions(db.session.get(User, cached.ids["sam"]))
        db.session.commit()
    if cached.cache is not None:
        assert wait_until(lambda: cached.cache.get(cached.ids["sam"], cached.class_id) is None)
    answer = poll(cached.clients["sam"], cached.class_id)
    assert answer.status_code == 302 and answer.location.startswith("/login")
    assert "Elapsed" not in answer.get_data(as_text=True)


def test_a_class_the_sweeper_completes_is_shown_completed_and_settled_once(app, cached, clock):
    poll(cached.clients["sam"], cached.class_id)
    clock.advance(minutes=60)
    with cached.other.app_context():
        assert service.sweep().completed == 1
    if cached.cache is not None:
        assert wait_until(lambda: cached.cache.get(cached.ids["sam"], cached.class_id) is None)
    for who in ("sam", "tara", "sam"):
        answer = poll(cached.clients[who], cached.class_id)
        assert "Completed Active time 60:00" in text_of(answer.get_data(as_text=True))
    assert class_entries(app, cached.class_id) == [("class_hold", 10), ("class_settle", 10)]


def test_a_class_that_falls_due_is_settled_once_though_its_read_is_kept(app, cached, clock):
    """The kept read says the class has run its time: the poll goes to the Flask view,
    which settles it once; the polls after show it completed."""
    poll(cached.clients["sam"], cached.class_id)
    clock.advance(minutes=60)
    for who in ("sam", "tara", "sam", "tara"):
        answer = poll(cached.clients[who], cached.class_id)
        assert "Completed Active time 60:00" in text_of(answer.get_data(as_text=True))
    assert class_entries(app, cached.class_id) == [("class_hold", 10), ("class_settle", 10)]


def test_another_users_class_is_never_served_from_the_cache(app, cached):
    """Kept reads are the viewer's own: a read kept for the student is not another
    teacher's, who gets 404."""
    with app.app_context():
        make_user("teacher", email="otto@example.com")
    otto = cached.app.test_client()
    assert AuthActions(otto).login("otto@example.com").status_code == 302
    poll(cached.clients["sam"], cached.class_id)
    for _ in range(2):
        answer = poll(otto, cached.class_id)
        assert answer.status_code == 404 and "Elapsed" not in answer.get_data(as_text=True)


def test_a_read_begun_before_a_change_is_not_kept():
    """The race the marks close: a read that began before a notification (or an emptying)
    naming its class or its viewer is not stored; others are."""
    engine = create_engine("sqlite://")
    cache = PollCache("postgresql://unused", engine)
    cache._pid = os.getpid()  # no listener thread: this test plays it
    cache._up()
    mark = cache.mark()
    cache.forget("c:5")
    cache.put(1, 5, "class 5 as read before", 0, mark)
    cache.put(1, 6, "class 6", 0, mark)
    assert cache.get(1, 5) is None and cache.get(1, 6) == ("class 6", 0)
    mark = cache.mark()
    cache.forget("u:2")
    cache.put(2, 6, "user 2's view", 0, mark)
    assert cache.get(2, 6) is None
    # A notification drops what it names, and only that.
    cache.put(3, 7, "class 7", 0, cache.mark())
    cache.forget("c:6")
    assert cache.get(1, 6) is None and cache.get(3, 7) == ("class 7", 0)
    # A commit of this worker empties it, and refuses reads begun before.
    mark = cache.mark()
    with engine.begin() as connection:
        connection.exec_driver_sql("SELECT 1")
    assert cache.get(3, 7) is None
    cache.put(3, 7, "class 7 as read before", 0, mark)
    assert cache.get(3, 7) is None
    # Too many notifications since the read began to know what they named: not kept.
    mark = cache.mark()
    for number in range(2000):
        cache.forget(f"c:{1000 + number}")
    cache.put(1, 5, "class 5", 0, mark)
    assert cache.get(1, 5) is None
    # While the listener is down nothing is served or kept.
    cache.put(1, 5, "class 5", 0, cache.mark())
    assert cache.get(1, 5) == ("class 5", 0)
    cache._down()
    assert cache.get(1, 5) is None
    cache.put(1, 5, "class 5", 0, cache.mark())
    cache._up()
    assert cache.get(1, 5) is None


@pytest.mark.backends("postgresql")
def test_the_cache_stops_serving_when_its_connection_is_lost(app, cached):
    """The listening connection killed: nothing is served until it listens again, and
    then it starts empty."""
    assert cached.cache is not None
    poll(cached.clients["sam"], cached.class_id)
    assert cached.cache.get(cached.ids["sam"], cached.class_id) is not None
    with app.app_context():
        db.session.execute(
            db.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND query IN ('LISTEN soma_timer', 'SELECT 1')"
            )
        )
        db.session.commit()
    assert wait_until(lambda: not cached.cache.live)
    assert cached.cache.get(cached.ids["sam"], cached.class_id) is None
    assert wait_until(lambda: cached.cache.live)
    assert cached.cache.get(cached.ids["sam"], cached.class_id) is None
    answer = poll(cached.clients["sam"], cached.class_id)
    assert "In progress Elapsed 01:15" in text_of(answer.get_data(as_text=True))


@pytest.mark.backends("postgresql")
def test_without_its_triggers_the_cache_serves_nothing_and_says_so(app, clock, caplog):
    """Code newer than its database (migration 0026 not applied, or its triggers turned
    off): LISTEN would hear nothing, so the cache never serves, every poll reads, and
    the worker's log says why."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    with app.app_context():
        student = make_funded_user(25, email="sam@example.com")
        class_id = make_class(student, make_user("teacher"), "in_progress").id
        student_id = student.id
        db.session.execute(db.text("ALTER TABLE class_sessions DISABLE TRIGGER USER"))
        db.session.commit()
    clock.now = clock.now.replace(minute=5, second=0) + timedelta(seconds=75)
    cached_app = make_app(url, TIMER_POLL_CACHE="1", SOMA_CLOCK=clock)
    try:
        client = cached_app.test_client()
        assert AuthActions(client).login("sam@example.com").status_code == 302
        with caplog.at_level("WARNING", logger="soma.classes.poll_cache"):
            assert poll(client, class_id).status_code == 200  # starts the listener
            with cached_app.app_context():
                cache = cached_app.wsgi_app.cache()
            assert wait_until(lambda: "triggers are missing" in caplog.text)
        assert not cache.live
        for _ in range(3):
            answer = poll(client, class_id)
            assert "In progress Elapsed 01:15" in text_of(answer.get_data(as_text=True))
        assert cache.get(student_id, class_id) is None
    finally:
        with app.app_context():
            db.session.execute(db.text("ALTER TABLE class_sessions ENABLE TRIGGER USER"))
            db.session.commit()
        with cached_app.app_context():
            db.session.remove()
            db.engine.dispose()


# From the review of the poll beneath Flask and its cache (2026-12-01) ------------------


@pytest.mark.backends("postgresql")
def test_a_poll_read_during_a_commit_in_the_same_worker_is_not_kept(cached, monkeypatch):
    """The engine's `commit` event runs before the database commits. A poll of another
    tab in the same worker that reads the class in that window reads it as it was; the
    cache is emptied again once the committed connection is back in the pool, so the
    very next poll after the teacher's "End" shows the class ended, even with the
    notification held back (as a slow listener would hold it)."""
    assert cached.cache is not None
    release = threading.Event()
    forget = cached.cache.forget

    def slow_listener(payload):
        release.wait(20)
        forget(payload)

    monkeypatch.setattr(cached.cache, "forget", slow_listener)
    tara = cached.clients["tara"]
    other_tab = cached.app.test_client()
    other_tab.set_cookie("session", tara.get_cookie("session").value)
    page = tara.get(f"/classes/{cached.class_id}").get_data(as_text=True)
    polled_during_commit = []

    def poll_from_the_other_tab(_connection):
        if polled_during_commit:
            return
        thread = threading.Thread(
            target=lambda: polled_during_commit.append(
                text_of(poll(other_tab, cached.class_id).get_data(as_text=True))
            )
        )
        thread.start()
        thread.join(10)

    with cached.app.app_context():
        engine = db.engine
    event.listen(engine, "commit", poll_from_the_other_tab)
    try:
        ended = tara.post(
            f"/classes/{cached.class_id}/end",
            data={"csrf_token": csrf_from(page)},
            headers={"HX-Request": "true"},
        )
        assert ended.status_code == 200
        assert polled_during_commit and "In progress" in polled_during_commit[0]
        after = text_of(poll(tara, cached.class_id).get_data(as_text=True))
        assert "Ended early" in after, after
    finally:
        release.set()
        event.remove(engine, "commit", poll_from_the_other_tab)


def test_the_poll_url_under_a_non_ascii_script_name_is_the_one_flask_builds(lesson, answered):
    """Mounted under a prefix that is not ASCII (SCRIPT_NAME, in WSGI's latin-1 form),
    the poll beneath Flask writes the next poll's URL as url_for does, decoded."""
    class_id, clients = lesson
    url = f"/classes/{class_id}/timer?seen=in_progress"
    root = "/école".encode().decode("latin1")
    fast = clients["sam"].get(url, environ_overrides={"SCRIPT_NAME": root})
    slow = clients["sam"].get(url, environ_overrides={"SCRIPT_NAME": root, THROUGH_FLASK: True})
    assert answered[-1] is True and fast.status_code == slow.status_code == 200
    pattern = r'hx-get="([^"]*)"'
    assert re.findall(pattern, fast.get_data(as_text=True)) == re.findall(
        pattern, slow.get_data(as_text=True)
    )


def test_a_due_class_polled_at_once_in_two_caching_workers_is_settled_once(app, cached, clock):
    """Both sides' reads kept in two workers, the class falls due, eight polls at once
    across them: one settlement, every poll shows it completed."""
    second = make_app(app.config["SQLALCHEMY_DATABASE_URI"], TIMER_POLL_CACHE="1", SOMA_CLOCK=clock)
    try:
        for who in ("sam", "tara"):
            assert poll(cached.clients[who], cached.class_id).status_code == 200
        clock.advance(minutes=60)
        clients = []
        for who in ("sam", "tara"):
            cookie = cached.clients[who].get_cookie("session").value
            for worker in (cached.app, second, cached.app, second):
                client = worker.test_client()
                client.set_cookie("session", cookie)
                clients.append(client)
        start = threading.Barrier(len(clients))
        shown: list = [None] * len(clients)

        def run(index, client):
            start.wait(10)
            answer = poll(client, cached.class_id)
            shown[index] = (answer.status_code, text_of(answer.get_data(as_text=True)))

        threads = [threading.Thread(target=run, args=pair) for pair in enumerate(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert all(s is not None and s[0] == 200 for s in shown), shown
        assert all("Completed Active time 60:00" in s[1] for s in shown), shown
        assert class_entries(app, cached.class_id) == [("class_hold", 10), ("class_settle", 10)]
    finally:
        with second.app_context():
            db.session.remove()
            db.engine.dispose()


def test_an_admin_demoted_in_another_worker_is_refused_once_notified(app, cached):
    """An admin's read of a class not theirs is kept; their role changed elsewhere, the
    next poll (after the notification) is 404 and shows nothing of the class."""
    with app.app_context():
        make_user("admin", email="ada@example.com")
    ada = cached.app.test_client()
    assert AuthActions(ada).login("ada@example.com").status_code == 302
    assert poll(ada, cached.class_id).status_code == 200
    assert poll(ada, cached.class_id).status_code == 200
    with cached.other.app_context():
        admin_id = db.session.scalar(db.select(User.id).where(User.email == "ada@example.com"))
        db.session.execute(update(User).where(User.id == admin_id).values(role="teacher"))
        db.session.commit()
    if cached.cache is not None:
        assert wait_until(lambda: cached.cache.get(admin_id, cached.class_id) is None)
    answer = poll(ada, cached.class_id)
    assert answer.status_code == 404
    assert "Elapsed" not in answer.get_data(as_text=True)


def _redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.backends("postgresql")
def test_in_production_behind_a_proxy_the_poll_answers_as_flask_does(app, clock):
    """Production (HSTS, secure cookie, the cache on by default, the limit in Redis) and
    ProxyFix outside the layer: the same status, headers in the same order, and bytes."""
    if not _redis_up():
        if os.environ.get("CI", "").lower() in {"1", "true"}:
            pytest.fail("Redis at 127.0.0.1:6379 is required in CI (CI=true)")
        pytest.skip("production's rate limit store (Redis) is not running")
    production = make_app(
        app.config["SQLALCHEMY_DATABASE_URI"],
        SOMA_ENV="production",
        RATELIMIT_STORAGE_URI="redis://127.0.0.1:6379/13",
        PROXY_FIX_X_FOR="1",
        SOMA_CLOCK=clock,
    )
    try:
        with production.app_context():
            student = make_funded_user(25, email="sam@example.com")
            teacher = make_user("teacher", email="tara@example.com")
            class_id = make_class(student, teacher, "in_progress").id
        client = production.test_client()
        client.environ_base.update(
            {"HTTP_X_FORWARDED_FOR": "203.0.113.9", "HTTP_X_FORWARDED_PROTO": "https"}
        )
        https = {"base_url": "https://localhost"}
        login = post_form(
            client,
            "/login",
            {"email": "sam@example.com", "password": DEFAULT_PASSWORD},
            page="/login",
            headers={"Referer": "https://localhost/login"},
            **https,
        )
        assert login.status_code == 302
        url = f"/classes/{class_id}/timer?seen=in_progress"
        for _ in range(2):  # the second from the worker's cache
            fast = client.get(url, **https)
            assert fast.status_code == 200
            assert_same_answer(
                fast, client.get(url, environ_overrides={THROUGH_FLASK: True}, **https)
            )
            assert fast.headers["Strict-Transport-Security"].startswith("max-age=")
            assert not fast.headers.getlist("Set-Cookie")
    finally:
        with production.app_context():
            db.session.remove()
            db.engine.dispose()
