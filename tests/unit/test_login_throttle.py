"""Log-in throttling: wrong passwords counted per account (whatever the address), only
failures counted per address, and sign-up's "email taken" answer limited per address."""

import re
import time

import pytest
from sqlalchemy import func, select

from soma.auth import throttle
from soma.auth.routes import SIGNUP_RATE_LIMIT, SIGNUP_TAKEN_RATE_LIMIT
from soma.extensions import db
from soma.models import User
from tests.builders import DEFAULT_PASSWORD, make_user
from tests.conftest import AuthActions
from tests.helpers import text_of

PAUSED = "log-in to it is paused to protect it"


class LimiterTime:
    """The rate-limit storage's clock (and the throttle's), moved by hand."""

    def __init__(self):
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def limiter_time(monkeypatch):
    fake = LimiterTime()
    monkeypatch.setattr("limits.storage.memory.time", fake)
    monkeypatch.setattr("soma.auth.throttle.time", fake)
    return fake


def from_address(app, address: str) -> AuthActions:
    """A browser at `address` (a school, a phone network, an attacker's machine)."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return AuthActions(client)


def guesses(app, email: str, count: int, addresses: int = 4, network: str = "203.0.113") -> list:
    """`count` wrong passwords for `email`, spread over `addresses` addresses in turn."""
    browsers = [from_address(app, f"{network}.{n + 1}") for n in range(addresses)]
    return [
        browsers[n % addresses].login(email, f"guess-number-{n}").status_code for n in range(count)
    ]


def masked(page: str, email: str) -> str:
    """`page` with the email and the wait's figures left out."""
    return re.sub(r"\d+", "N", page.replace(email, "EMAIL"))


@pytest.fixture
def sam(app):
    with app.app_context():
        return make_user("student", email="sam@example.com", name="Sam Student").email


def test_sixteen_guesses_from_four_addresses_are_not_all_processed(app, sam):
    statuses = guesses(app, sam, 16)
    assert statuses == [400] * 10 + [429] * 6

    # Now even the right password is refused, with when to try again.
    response = from_address(app, "198.51.100.9").login(sam)
    assert response.status_code == 429
    page = text_of(response.get_data(as_text=True))
    assert PAUSED in page
    assert "Try again in 15 minutes (from " in page
    assert 840 <= int(response.headers["Retry-After"]) <= 900
    assert "That email and password do not match" not in page


def test_an_unknown_email_is_paused_the_same_way(app, sam):
    """The pause says nothing about which emails have accounts."""
    guesses(app, "nobody@example.com", 10)
    unknown = text_of(from_address(app, "198.51.100.9").login("nobody@example.com").get_data(True))
    guesses(app, sam, 10, network="198.18.0")
    known = text_of(from_address(app, "198.51.100.9").login(sam).get_data(as_text=True))
    assert PAUSED in unknown and PAUSED in known
    # The same page, but for the email and the time to come back (a few seconds apart).
    assert masked(unknown, "nobody@example.com") == masked(known, sam)


def test_the_pause_is_for_that_account_alone(app, sam):
    with app.app_context():
        other = make_user("student", email="olga@example.com").email
    guesses(app, sam, 10)
    # The same addresses still log other people in.
    for n in range(4):
        browser = from_address(app, f"203.0.113.{n + 1}")
        assert browser.login(other).status_code == 302


def test_a_good_log_in_clears_the_accounts_count(app, sam):
    assert guesses(app, sam, 9) == [400] * 9
    assert from_address(app, "198.51.100.9").login(sam).status_code == 302
    assert guesses(app, sam, 9, network="198.18.0") == [400] * 9
    assert from_address(app, "198.51.100.10").login(sam).status_code == 302


def test_the_pause_grows_with_the_failures(app, sam, limiter_time):
    guesses(app, sam, 10)
    message = text_of(from_address(app, "198.51.100.9").login(sam).get_data(as_text=True))
    assert "Try again in 15 minutes" in message

    limiter_time.advance(15 * 60 + 1)
    # Ten more in the same hour: paused until the first of the hour's twenty is an hour old.
    assert guesses(app, sam, 11, network="198.18.0") == [400] * 10 + [429]
    message = text_of(from_address(app, "198.51.100.9").login(sam).get_data(as_text=True))
    assert "Try again in 45 minutes" in message

    limiter_time.advance(45 * 60)
    assert from_address(app, "198.51.100.9").login(sam).status_code == 302


def test_forty_failures_in_a_day_pause_the_account_for_the_rest_of_it(app, limiter_time):
    with app.app_context():
        for _ in range(4):
            for _ in range(10):
                assert throttle.paused_until("sam@example.com") is None
                throttle.record_failure("sam@example.com")
            limiter_time.advance(60 * 60 + 1)
        until = throttle.paused_until("SAM@example.com ")
    assert until is not None
    assert "Try again in 20 hours" in throttle.pause_message(until)


def test_good_log_ins_from_one_address_never_lock_anyone_out(app):
    """Three good log-ins and three typos from one school's address: everyone gets in."""
    with app.app_context():
        pupils = [make_user("student").email for _ in range(8)]
    school = "192.0.2.44"
    for email in pupils[:3]:
        assert from_address(app, school).login(email).status_code == 302
    for email in pupils[3:6]:
        assert from_address(app, school).login(email, "typo-in-password").status_code == 400
    for email in pupils:
        assert from_address(app, school).login(email).status_code == 302
    # Failures still count against the address: a guesser there is stopped.
    statuses = [
        from_address(app, school).login(pupils[0], f"guess-{n}").status_code for n in range(3)
    ]
    assert statuses == [400, 400, 429]
    assert from_address(app, school).login(pupils[1]).status_code == 429
    assert from_address(app, "192.0.2.45").login(pupils[1]).status_code == 302


def count_users(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(User))


def test_sign_up_says_taken_only_a_few_times_per_address(app):
    with app.app_context():
        taken = [make_user("student").email for _ in range(12)]
    allowed = int(SIGNUP_TAKEN_RATE_LIMIT.split()[0])
    for email in taken[:allowed]:
        response = from_address(app, "192.0.2.60").signup(email=email, name="Eve")
        assert response.status_code == 400
        assert "An account with this email already exists" in response.get_data(as_text=True)
    refused = from_address(app, "192.0.2.60").signup(email=taken[allowed], name="Eve")
    assert refused.status_code == 429
    assert "An account with this email" not in refused.get_data(as_text=True)
    # Another address is not affected.
    other = from_address(app, "192.0.2.61").signup(email=taken[allowed], name="Eve")
    assert "An account with this email already exists" in other.get_data(as_text=True)
    assert count_users(app) == 12


def test_sign_ups_that_succeed_or_fix_a_typo_do_not_use_the_taken_limit(app):
    """A class signing up together from one address: refusals that reveal nothing do not count."""
    school = "192.0.2.70"
    for n in range(12):
        weak = from_address(app, school).signup(
            email=f"pupil{n}@example.com", password="password12"
        )
        assert weak.status_code == 400
        assert "This password is too easy to guess." in weak.get_data(as_text=True)
        assert from_address(app, school).signup(email=f"pupil{n}@example.com").status_code == 302
    assert count_users(app) == 12


def test_sign_ups_are_limited_per_address(app):
    allowed = int(SIGNUP_RATE_LIMIT.split()[0])
    school = "192.0.2.80"
    for n in range(allowed):
        response = from_address(app, school).signup(email=f"bulk{n}@example.com")
        assert response.status_code == 302
    refused = from_address(app, school).signup(email="one-more@example.com")
    assert refused.status_code == 429
    assert count_users(app) == allowed


def test_the_right_password_after_a_pause_logs_in(app, sam, limiter_time):
    guesses(app, sam, 10)
    limiter_time.advance(15 * 60 + 1)
    response = from_address(app, "198.51.100.9").login(sam, DEFAULT_PASSWORD)
    assert response.status_code == 302
