"""The timer poll, cut to what a fragment fetched every second needs, and no less safe:
what it shows each side, who it refuses, its headers, and its own rate limit."""

import time
from datetime import timedelta

import pytest
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from soma.auth.freeze import freeze
from soma.classes.fast_poll import THROUGH_FLASK, TimerPoll
from soma.classes.poll_limit import SCOPE, PollLimit
from soma.config import ConfigError, build_config
from soma.extensions import db, limiter
from soma.models import JournalEntry, User
from soma.security import CONTENT_SECURITY_POLICY
from tests.builders import make_class, make_funded_user, make_user
from tests.conftest import TEST_SETTINGS, AuthActions, make_app
from tests.helpers import text_of


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


def test_the_poll_has_a_limit_per_user(app, clock):
    """Past TIMER_RATE_LIMIT a user's polls are refused (429, no figures); another user's
    polls are not, and a new window lets them in again."""
    limited = make_app(app.config["SQLALCHEMY_DATABASE_URI"], TIMER_RATE_LIMIT="3 per minute")
    try:
        with limited.app_context():
            limiter.reset()
            student = make_funded_user(25, email="sam@example.com")
            teacher = make_user("teacher", email="tara@example.com")
            class_id = make_class(student, teacher, "in_progress").id
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
    finally:
        with limited.app_context():
            db.session.remove()
            db.engine.dispose()


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
    limited = make_app(app.config["SQLALCHEMY_DATABASE_URI"], TIMER_RATE_LIMIT="3 per minute")
    try:
        with limited.app_context():
            limiter.reset()
            student = make_funded_user(25, email="sam@example.com")
            teacher = make_user("teacher", email="tara@example.com")
            class_id = make_class(student, teacher, "in_progress").id
        sam = limited.test_client()
        assert AuthActions(sam).login("sam@example.com").status_code == 302
        assert poll(sam, class_id + 1000).status_code == 404
        assert poll(sam, class_id + 1001).status_code == 404
        assert poll(sam, class_id).status_code == 200
        assert answered == [False, False, True]
        refused = poll(sam, class_id)
        assert refused.status_code == 429 and answered[-1] is False
        assert "Elapsed" not in refused.get_data(as_text=True)
    finally:
        with limited.app_context():
            db.session.remove()
            db.engine.dispose()


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
