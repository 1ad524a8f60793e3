"""Forgot password: the same answer for every email, a link mailed only to an account's, a
link that resets the password once, within 30 minutes, and ends every session."""

import re

from sqlalchemy import select

from soma import mail
from soma.auth import reset
from soma.extensions import db
from soma.models import OutboxMessage, User
from tests.builders import DEFAULT_PASSWORD, make_user
from tests.conftest import AuthActions
from tests.helpers import csrf_from, post_form, text_of

NEW_PASSWORD = "violet kettle harbour drum"
LINK = re.compile(r"https://soma\.test(/password/reset/[A-Za-z0-9._-]+)")


def ask(client, email: str):
    return post_form(client, "/password/forgot", {"email": email})


def mailed_link(app, smtp_server) -> str:
    """Send the outbox through SMTP; the reset link of the one message received."""
    with app.app_context():
        mail.drain()
    (message,) = smtp_server.messages
    assert message["Subject"] == "Reset your Soma password"
    found = LINK.findall(message.get_content())
    assert len(found) == 1, message.get_content()
    return found[0]


def logged_in(client) -> bool:
    return client.get("/dashboard").status_code == 200


def test_the_login_page_offers_a_reset(client):
    page = client.get("/login").get_data(as_text=True)
    assert 'href="/password/forgot"' in page
    assert "Forgot your password?" in page
    form = client.get("/password/forgot").get_data(as_text=True)
    assert "Reset your password" in text_of(form)


def test_the_answer_is_the_same_for_known_and_unknown_emails(app, client, smtp_on):
    with app.app_context():
        user = make_user("student", email="ann@example.com")
        user_id = user.id
    known = ask(client, "Ann@Example.com ")
    unknown = ask(client, "nobody@example.com")
    assert known.status_code == unknown.status_code == 200

    def answer(response, email):
        return text_of(response.get_data(as_text=True)).replace(email, "EMAIL")

    assert answer(known, "Ann@Example.com") == answer(unknown, "nobody@example.com")
    assert "If an account exists for EMAIL , we sent a link" in answer(known, "Ann@Example.com")
    with app.app_context():
        rows = list(db.session.scalars(select(OutboxMessage)))
        assert [(row.to_address, row.kind, row.user_id) for row in rows] == [
            ("ann@example.com", "password_reset", user_id)
        ]
    mailed_link(app, smtp_on)
    assert [message["To"] for message in smtp_on.messages] == ["ann@example.com"]


def test_the_link_resets_the_password_once_and_ends_every_session(app, client, smtp_on):
    with app.app_context():
        make_user("student", email="ann@example.com", name="Ann Reader")
    elsewhere = app.test_client()  # another device, logged in before the reset
    assert AuthActions(elsewhere).login("ann@example.com").status_code == 302
    ask(client, "ann@example.com")
    link = mailed_link(app, smtp_on)

    page = client.get(link)
    assert page.status_code == 200
    assert page.headers["Referrer-Policy"] == "strict-origin"
    assert "For the account ann@example.com ." in text_of(page.get_data(as_text=True))
    done = post_form(client, link, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert done.status_code == 302 and done.headers["Location"] == "/login"
    landing = client.get("/login").get_data(as_text=True)
    assert "Your password is changed" in landing

    assert not logged_in(elsewhere)  # the other device is logged out
    assert AuthActions(client).login("ann@example.com").status_code == 400  # old password
    assert AuthActions(client).login("ann@example.com", NEW_PASSWORD).status_code == 302
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "ann@example.com"))
        assert user.check_password(NEW_PASSWORD) and user.session_version == 1

    again = client.get(link)  # the link is used up
    assert again.status_code == 400
    assert "already used" in text_of(again.get_data(as_text=True))
    html = client.get("/password/forgot").get_data(as_text=True)
    replay = client.post(
        link,
        data={"password": "another fine passphrase", "confirm": "another fine passphrase",
              "csrf_token": csrf_from(html)},
    )  # fmt: skip
    assert replay.status_code == 400
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "ann@example.com"))
        assert user.check_password(NEW_PASSWORD)


def test_a_weak_password_is_refused_and_the_link_still_works(app, client, smtp_on):
    with app.app_context():
        make_user("student", email="ann@example.com")
    ask(client, "ann@example.com")
    link = mailed_link(app, smtp_on)
    weak = post_form(client, link, {"password": "password123", "confirm": "password123"})
    assert weak.status_code == 400
    assert "too easy to guess" in weak.get_data(as_text=True)
    differ = post_form(client, link, {"password": NEW_PASSWORD, "confirm": "something else"})
    assert "The two passwords differ." in differ.get_data(as_text=True)
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "ann@example.com"))
        assert user.check_password(DEFAULT_PASSWORD)
    good = post_form(client, link, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert good.status_code == 302


def test_an_expired_link_is_refused(app, client, smtp_on, clock):
    with app.app_context():
        make_user("student", email="ann@example.com")
    ask(client, "ann@example.com")
    link = mailed_link(app, smtp_on)
    clock.advance(minutes=29)
    assert client.get(link).status_code == 200
    clock.advance(minutes=1, seconds=1)
    expired = client.get(link)
    assert expired.status_code == 400
    assert "has expired: links work for 30 minutes" in text_of(expired.get_data(as_text=True))
    refused = post_form(client, link, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
                        page="/password/forgot")  # fmt: skip
    assert refused.status_code == 400
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == "ann@example.com"))
        assert user.check_password(DEFAULT_PASSWORD)


def test_a_tampered_or_foreign_token_is_refused(app, client):
    with app.app_context():
        victim = make_user("student", email="victim@example.com")
        other = make_user("student", email="other@example.com")
        token = reset.make_token(other)
        payload, _, _signature = token.partition(".")
        forged_for_victim = reset._serializer().dumps({"u": victim.id, "f": "0" * 32})
    # A character of the signature changed: its first, which carries six bits of it (the
    # last one's low bits are padding, so changing them may leave the signature as it was).
    head, _, signature = token.rpartition(".")
    flipped = f"{head}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    for bad in (flipped, forged_for_victim, "x", "a" * 2000, f"{payload}.", token + ".x"):
        response = client.get(f"/password/reset/{bad}")
        assert response.status_code == 400, bad
        assert "not valid" in text_of(response.get_data(as_text=True))
    assert client.get(f"/password/reset/{token}").status_code == 200


def test_a_token_signed_for_something_else_is_refused(app, client):
    from itsdangerous import URLSafeTimedSerializer

    with app.app_context():
        user = make_user("student")
        other_salt = URLSafeTimedSerializer(app.secret_key, salt="another-purpose")
        fingerprint = reset._fingerprint(user.id, user.password_hash)
        token = other_salt.dumps({"u": user.id, "f": fingerprint})
    assert client.get(f"/password/reset/{token}").status_code == 400


def test_asking_needs_csrf_and_a_valid_email(app, client):
    with app.app_context():
        make_user("student", email="ann@example.com")
    no_token = client.post("/password/forgot", data={"email": "ann@example.com"})
    assert no_token.status_code == 400
    bad = ask(client, "not an email")
    assert bad.status_code == 400
    assert "Enter a valid email address." in bad.get_data(as_text=True)
    long = ask(client, "a" * 300 + "@example.com")
    assert long.status_code == 400
    with app.app_context():
        assert db.session.scalars(select(OutboxMessage)).all() == []


def test_asking_is_rate_limited_per_address_and_per_email(app, client):
    with app.app_context():
        make_user("student", email="ann@example.com")
    statuses = [ask(client, f"someone{n}@example.com").status_code for n in range(6)]
    assert statuses == [200] * 5 + [429]
    # From many addresses, one mailbox is sent a few links an hour, whether it has an
    # account or not; past that the answer is the same (no 429 that would keep the owner's
    # own request out), and no more mail is queued.
    for email in ("ann@example.com", "nobody@example.com"):
        answers = []
        for n in range(7):
            other = app.test_client()
            other.environ_base["REMOTE_ADDR"] = f"198.51.100.{n + 1}"
            answer = ask(other, email)
            answers.append(
                (
                    answer.status_code,
                    "check your email" in text_of(answer.get_data(as_text=True)).lower(),
                )
            )
        assert answers == [(200, True)] * 7, email
    with app.app_context():
        rows = db.session.scalars(select(OutboxMessage)).all()
        assert [row.to_address for row in rows] == ["ann@example.com"] * 5
