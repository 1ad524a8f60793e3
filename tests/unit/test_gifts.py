"""Gifts (SPEC §7): a student gives tokens to another student, after confirming."""

import re

import pytest
from sqlalchemy import func, select

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.gifts.routes import ADDRESS_RATE_LIMIT, NOT_REVIEWED, REVIEW_RATE_LIMIT
from soma.models import EntryKind, Gift, JournalEntry, Notification
from tests.builders import fund, make_user
from tests.conftest import AuthActions
from tests.helpers import balances, csrf_from, text_of


def review(client, email, tokens, note=""):
    page = client.get("/gifts/new").get_data(as_text=True)
    data = {"email": email, "tokens": tokens, "note": note, "csrf_token": csrf_from(page)}
    return client.post("/gifts/review", data=data)


def confirmation_of(html: str) -> dict:
    """The hidden fields of the confirmation form, as the browser would send them back."""
    form = re.search(r'action="/gifts/confirm".*?</form>', html, re.S).group(0)
    return dict(re.findall(r'name="(\w+)"[^>]*value="([^"]*)"', form)) | {
        name: value for value, name in re.findall(r'value="([^"]*)"[^>]*name="(\w+)"', form)
    }


@pytest.fixture
def giver(app, auth):
    student = auth.login_as("student", name="Ann Giver")
    with app.app_context():
        fund(student.id, 50)
        student.friend_id = make_user("student", email="bea@example.com", name="Bea Friend").id
    return student


def test_a_gift_is_reviewed_then_given_once(app, client, giver):
    html = review(client, "bea@example.com", "20", "Good luck!").get_data(as_text=True)
    page = text_of(html)
    assert "Confirm your gift" in page
    assert "Bea Friend (bea@example.com)" in page
    assert "20 tokens (worth $2.00)" in page
    assert "You keep 30 tokens available" in page
    with app.app_context():
        assert balances(giver.id) == (50, 0), "the review step moves nothing"

    fields = confirmation_of(html)
    assert set(fields) >= {"csrf_token", "email", "tokens", "note", "nonce"}
    response = client.post("/gifts/confirm", data=fields)
    assert response.status_code == 302 and response.location == "/wallet/"
    wallet = text_of(client.get("/wallet/").get_data(as_text=True))
    assert "You gave 20 tokens to Bea Friend." in wallet

    with app.app_context():
        assert balances(giver.id) == (30, 0)
        assert balances(giver.friend_id) == (20, 0)
        gift = db.session.scalar(select(Gift))
        assert (gift.sender_id, gift.recipient_id, gift.tokens, gift.note) == (
            giver.id, giver.friend_id, 20, "Good luck!",
        )  # fmt: skip
        entry = db.session.scalar(select(JournalEntry).where(JournalEntry.kind == EntryKind.GIFT))
        assert (entry.tokens, entry.reference_type, entry.reference_id) == (20, "gift", gift.id)
        assert entry.memo == "Gift from Ann Giver to Bea Friend: Good luck!"
        assert entry.actor_id == giver.id and entry.usd_cents == 200
        note = db.session.scalar(
            select(Notification).where(Notification.user_id == gift.recipient_id)
        )
        assert note.message == "Ann Giver gave you 20 tokens: “Good luck!”"
        assert note.read_at is None and note.link == "/wallet/history?kind=gift"
        assert run_audit() == []

    # Submitting the same confirmation again (a double click) gives nothing more.
    again = client.post("/gifts/confirm", data=fields)
    assert again.status_code == 302
    assert "That gift was already sent" in text_of(client.get("/wallet/").get_data(as_text=True))
    with app.app_context():
        assert balances(giver.id) == (30, 0)
        assert db.session.scalar(select(func.count()).select_from(Gift)) == 1
        assert db.session.scalar(select(func.count()).select_from(Notification)) == 1


def test_the_recipient_sees_the_gift_in_history_and_notifications(app, client, auth, giver):
    fields = confirmation_of(
        review(client, "bea@example.com", "7", "Thanks").get_data(as_text=True)
    )
    client.post("/gifts/confirm", data=fields)
    auth.logout()
    auth.login("bea@example.com")

    home = client.get("/student").get_data(as_text=True)
    assert re.search(r'Notifications <span class="count-badge">1</span>', home)
    history = text_of(client.get("/wallet/history?kind=gift").get_data(as_text=True))
    assert "Gift Gift from Ann Giver: “Thanks” +7 tokens +$0.70 7 tokens" in history

    notes = client.get("/notifications/").get_data(as_text=True)
    assert "Ann Giver gave you 7 tokens: “Thanks”" in notes
    up_to = re.search(r'name="up_to" value="(\d+)"', notes).group(1)
    client.post("/notifications/read", data={"up_to": up_to, "csrf_token": csrf_from(notes)})
    assert "count-badge" not in client.get("/student").get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(Notification.read_at)) is not None


@pytest.mark.parametrize(
    ("email", "tokens", "message"),
    [
        ("nobody@example.com", "5", "There is no Soma account with the email nobody@example.com."),
        ("SELF", "5", "You cannot give tokens to yourself."),
        ("TEACHER", "5", "is not a student account; gifts go from student to student."),
        ("bea@example.com", "abc", "Enter a whole number of tokens, 1 or more."),
        ("bea@example.com", "1.5", "Enter a whole number of tokens, 1 or more."),
        ("bea@example.com", "0", "Enter a whole number of tokens, 1 or more."),
        ("bea@example.com", "-3", "Enter a whole number of tokens, 1 or more."),
        ("bea@example.com", "", "Enter a whole number of tokens, 1 or more."),
        ("bea@example.com", "51", "You have 50 tokens available, so you cannot give 51."),
    ],
)
def test_a_gift_that_cannot_be_given_explains_why_and_moves_nothing(
    app, client, giver, email, tokens, message
):
    if email == "SELF":
        email = giver.email
    if email == "TEACHER":
        with app.app_context():
            email = make_user("teacher").email
    response = review(client, email, tokens)
    assert response.status_code == 422
    assert message in text_of(response.get_data(as_text=True))
    with app.app_context():
        assert balances(giver.id) == (50, 0)
        assert db.session.scalar(select(func.count()).select_from(Gift)) == 0


def test_a_balance_spent_after_review_is_checked_again_at_confirmation(app, client, giver):
    fields = confirmation_of(review(client, "bea@example.com", "40").get_data(as_text=True))
    with app.app_context(), ledger.atomic():
        ledger.hold(giver.id, 20, key="meanwhile")
    response = client.post("/gifts/confirm", data=fields)
    assert response.status_code == 422
    assert "You have 30 tokens available, so you cannot give 40." in text_of(
        response.get_data(as_text=True)
    )
    with app.app_context():
        assert balances(giver.id) == (30, 20)
        assert balances(giver.friend_id) == (0, 0)
        assert db.session.scalar(select(func.count()).select_from(Gift)) == 0


def test_a_tampered_confirmation_with_a_used_nonce_is_refused(app, client, giver):
    fields = confirmation_of(review(client, "bea@example.com", "5").get_data(as_text=True))
    client.post("/gifts/confirm", data=fields)
    tampered = client.post("/gifts/confirm", data={**fields, "tokens": "45"})
    assert tampered.status_code == 422
    assert NOT_REVIEWED in text_of(tampered.get_data(as_text=True))
    with app.app_context():
        assert balances(giver.id) == (45, 0)
        assert balances(giver.friend_id) == (5, 0)


@pytest.mark.parametrize(
    "change",
    [
        {"nonce": "self-made-nonce-0123456789"},
        {"nonce": "A" * 48},
        {"email": "cid@example.com"},
        {"note": "a different note"},
        {"tokens": "6"},
    ],
)
def test_a_confirmation_review_did_not_issue_is_refused_and_moves_nothing(
    app, client, giver, change
):
    """A self-made nonce, or a real one sent with another gift than the one reviewed."""
    with app.app_context():
        make_user("student", email="cid@example.com")
    fields = confirmation_of(review(client, "bea@example.com", "5").get_data(as_text=True))
    response = client.post("/gifts/confirm", data={**fields, **change})
    assert response.status_code == 422
    assert NOT_REVIEWED in text_of(response.get_data(as_text=True))
    with app.app_context():
        assert balances(giver.id) == (50, 0)
        assert db.session.scalar(select(func.count()).select_from(Gift)) == 0
        assert db.session.scalar(select(func.count()).select_from(JournalEntry)) == 1  # the fund


def test_a_self_made_nonce_tells_nothing_about_an_email(app, client, giver):
    """Confirmation used to say whether an email was unknown, a teacher's or a student's."""
    with app.app_context():
        teacher_email = make_user("teacher").email
    page = client.get("/gifts/new").get_data(as_text=True)
    answers = set()
    for email in ("nobody@example.com", teacher_email, "bea@example.com"):
        data = {"email": email, "tokens": "5", "note": "", "nonce": "made-up-nonce-12345678"}
        response = client.post("/gifts/confirm", data={**data, "csrf_token": csrf_from(page)})
        assert response.status_code == 422
        text = text_of(response.get_data(as_text=True))
        answers.add(text.replace(email, "EMAIL"))
    assert len(answers) == 1
    with app.app_context():
        assert balances(giver.id) == (50, 0)


def test_another_students_confirmation_is_refused(app, client, auth, giver):
    fields = confirmation_of(review(client, "bea@example.com", "5").get_data(as_text=True))
    auth.logout()
    thief = auth.login_as("student")
    with app.app_context():
        fund(thief.id, 50)
    page = client.get("/gifts/new").get_data(as_text=True)
    response = client.post("/gifts/confirm", data={**fields, "csrf_token": csrf_from(page)})
    assert response.status_code == 422
    with app.app_context():
        assert balances(thief.id) == (50, 0)
        assert balances(giver.friend_id) == (0, 0)


def test_confirming_gifts_is_rate_limited_per_student_like_reviewing(app, client, giver):
    allowed = int(REVIEW_RATE_LIMIT.split()[0])
    page = client.get("/gifts/new").get_data(as_text=True)
    data = {"email": "nobody@example.com", "tokens": "1", "nonce": "made-up-nonce-12345678"}
    for _ in range(allowed):
        response = client.post("/gifts/confirm", data={**data, "csrf_token": csrf_from(page)})
        assert response.status_code == 422
    refused = client.post("/gifts/confirm", data={**data, "csrf_token": csrf_from(page)})
    assert refused.status_code == 429
    assert "Too many attempts" in refused.get_data(as_text=True)


def test_gift_steps_are_rate_limited_per_address(app, client, auth, giver):
    """Students behind one address share its limit; each keeps their own too."""
    allowed = int(ADDRESS_RATE_LIMIT.split()[0])
    per_student = int(REVIEW_RATE_LIMIT.split()[0])
    for _ in range(allowed // per_student):
        auth.logout()
        auth.login_as("student")
        for _ in range(per_student):
            assert review(client, "nobody@example.com", "1").status_code == 422
    auth.logout()
    auth.login_as("student")
    assert review(client, "nobody@example.com", "1").status_code == 429
    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "198.51.100.7"
    AuthActions(elsewhere).login_as("student")
    assert review(elsewhere, "nobody@example.com", "1").status_code == 422


def test_a_confirmation_without_its_nonce_is_refused(app, client, giver):
    fields = confirmation_of(review(client, "bea@example.com", "5").get_data(as_text=True))
    del fields["nonce"]
    assert client.post("/gifts/confirm", data=fields).status_code == 422
    with app.app_context():
        assert balances(giver.id) == (50, 0)


def test_teachers_and_admins_cannot_give_tokens(client, auth):
    auth.login_as("teacher")
    assert client.get("/gifts/new").status_code == 403
    auth.logout()
    auth.login_as("admin")
    assert client.get("/gifts/new").status_code == 403


def test_the_audit_notices_a_gift_that_moved_no_tokens(app, giver, runner):
    with app.app_context():
        db.session.add(
            Gift(key="forged", sender_id=giver.id, recipient_id=giver.friend_id, tokens=3)
        )
        db.session.commit()
        assert [v.check for v in run_audit()] == ["gift-not-transferred-once"]
    result = runner.invoke(args=["soma", "audit"])
    assert result.exit_code == 1
    assert "gift-not-transferred-once" in result.output


def test_a_repeat_that_races_the_first_gift_gets_the_first_gift_not_an_error(
    app, giver, monkeypatch
):
    """The repeat misses the first gift, then finds the balance spent by it: still a repeat."""
    from soma.gifts import service
    from soma.models import User

    with app.app_context():
        sender = db.session.get(User, giver.id)
        first, created = service.give_gift(sender, "bea@example.com", 45, "", "race-nonce-123456")
        assert created

        real = service._first_outcome
        calls = []

        def misses_once(*args):
            calls.append(args)
            return None if len(calls) == 1 else real(*args)

        monkeypatch.setattr(service, "_first_outcome", misses_once)
        again, created = service.give_gift(sender, "bea@example.com", 45, "", "race-nonce-123456")
        assert (again.id, created) == (first.id, False)
        assert len(calls) == 2
        assert balances(giver.id) == (5, 0)
        assert balances(giver.friend_id) == (45, 0)


def test_reviewing_gifts_is_rate_limited_per_student(app, client, giver):
    allowed = int(REVIEW_RATE_LIMIT.split()[0])
    for _ in range(allowed):
        assert review(client, "nobody@example.com", "1").status_code == 422
    refused = review(client, "nobody@example.com", "1")
    assert refused.status_code == 429
    assert "Too many attempts" in refused.get_data(as_text=True)
