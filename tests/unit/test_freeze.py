"""Frozen accounts: refused buying, gifting, booking, starting a class and withdrawing, with
the frozen message on the page and nothing changed; sessions ended; what is under way
(a class in progress, a payment for a purchase started before) still finishes."""

import html
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from soma.admin import actions
from soma.audit import run_audit
from soma.auth import freeze as freezing
from soma.classes import service as class_service
from soma.extensions import db
from soma.models import (
    AdminAction,
    ClassSession,
    Gift,
    JournalEntry,
    Notification,
    Purchase,
    User,
    Withdrawal,
)
from soma.purchases import service as purchase_service
from tests.builders import fund, make_class, make_user, payout_method
from tests.conftest import AuthActions
from tests.helpers import balances, csrf_from
from tests.helpers import text_of as tagless

SUPPORT = "support@soma.example"


@pytest.fixture
def people(app, clock):
    """A funded student (and a friend), a funded teacher with a sandbox method, an admin."""
    with app.app_context():
        student = make_user("student", email="sam@example.com", name="Sam Student")
        friend = make_user("student", email="bea@example.com", name="Bea Friend")
        teacher = make_user("teacher", email="tara@example.com", name="Tara Teacher")
        admin = make_user("admin", email="ada@example.com", name="Ada Admin")
        fund(student.id, 100)
        fund(teacher.id, 300)
        method = payout_method(teacher, now=clock() - timedelta(days=1))
        return {
            "student": student.id,
            "friend": friend.id,
            "teacher": teacher.id,
            "admin": admin.id,
            "method": method.id,
        }


def client_of(app, email: str):
    client = app.test_client()
    assert AuthActions(client).login(email).status_code == 302
    return client


def freeze(app, people, who: str, reason: str = "Chargebacks on three cards"):
    with app.app_context():
        admin = db.session.get(User, people["admin"])
        freezing.freeze(admin, people[who], reason)


def unfreeze(app, people, who: str, reason: str = "Cleared by the bank"):
    with app.app_context():
        admin = db.session.get(User, people["admin"])
        freezing.unfreeze(admin, people[who], reason)


def ledger_state(app, people) -> tuple:
    """Every balance of the people, and how many entries exist."""
    with app.app_context():
        return (
            {who: balances(people[who]) for who in ("student", "friend", "teacher")},
            db.session.scalar(select(func.count()).select_from(JournalEntry)),
        )


def text_of(page: str) -> str:
    """The page's text as a reader sees it (entities read too)."""
    return html.unescape(tagless(page))


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def assert_frozen_page(response, doing: str):
    page = text_of(response.get_data(as_text=True))
    assert response.status_code == 409, page
    assert f"Your account is frozen, so you cannot {doing}. Nothing was changed." in page
    assert f"Contact {SUPPORT}" in page


def buy(client, key="buy-1"):
    page = client.get("/buy/").get_data(as_text=True)
    package = page.split('name="package" value="')[1].split('"')[0]
    return client.post(
        "/buy/",
        data={"csrf_token": csrf_from(page), "package": package, "provider": "sandbox", "key": key},
    )


def review_gift(client, email="bea@example.com", tokens="20"):
    page = client.get("/gifts/new").get_data(as_text=True)
    return client.post(
        "/gifts/review",
        data={"csrf_token": csrf_from(page), "email": email, "tokens": tokens, "note": "hi"},
    )


def confirm_fields(html: str) -> dict:
    form = html.split('action="/gifts/confirm"')[1].split("</form>")[0]
    fields = {}
    for tag in form.split("<input")[1:]:
        name = tag.split('name="')[1].split('"')[0]
        fields[name] = tag.split('value="')[1].split('"')[0] if 'value="' in tag else ""
    return fields


def book(client, teacher_id: int, start="2026-11-24T10:00", key="book-1"):
    page = client.get("/classes/new").get_data(as_text=True)
    return client.post(
        "/classes/new",
        data={"csrf_token": csrf_from(page), "teacher": str(teacher_id), "title": "Algebra",
              "start": start, "duration": "60", "key": key},
    )  # fmt: skip


def control(client, class_id: int, name: str):
    page = client.get(f"/classes/{class_id}").get_data(as_text=True)
    return client.post(
        f"/classes/{class_id}/{name}",
        data={"csrf_token": csrf_from(page)},
        headers={"HX-Request": "true"},
    )


def review_withdrawal(client, method_id: int, amount="10"):
    page = client.get("/withdrawals/new").get_data(as_text=True)
    return client.post(
        "/withdrawals/review",
        data={"csrf_token": csrf_from(page), "amount": amount, "method": str(method_id)},
    )


def confirm_withdrawal(client, method_id: int, key="wd-1"):
    page = client.get("/withdrawals/new").get_data(as_text=True)
    return client.post(
        "/withdrawals",
        data={"csrf_token": csrf_from(page), "amount": "10", "method": str(method_id),
              "key": key, "tokens": "250"},
    )  # fmt: skip


# Sessions and the record -------------------------------------------------------------------


def test_a_freeze_ends_the_sessions_records_it_and_tells_the_user(app, people, clock):
    student = client_of(app, "sam@example.com")
    assert student.get("/student").status_code == 200

    freeze(app, people, "student", "Chargebacks on three cards")

    response = student.get("/student")  # the next request is logged out
    assert response.status_code == 302 and "/login" in response.location
    with app.app_context():
        user = db.session.get(User, people["student"])
        assert user.frozen_at == clock() and user.frozen_reason == "Chargebacks on three cards"
        (record,) = db.session.scalars(select(AdminAction)).all()
        assert (record.admin_id, record.action, record.object_type, record.object_id) == (
            people["admin"], "freeze", "user", people["student"])  # fmt: skip
        assert actions.values(record.before) == {"frozen_at": None, "frozen_reason": None}
        assert actions.values(record.after) == {
            "frozen_at": clock().isoformat(),
            "frozen_reason": "Chargebacks on three cards",
        }
        assert record.reason == "Chargebacks on three cards"
        note = db.session.scalars(
            select(Notification).where(Notification.user_id == people["student"])
        ).one()
        assert note.kind == "account_frozen" and "Your account was frozen" in note.message

    # They may log in again, and are told at once that the account is frozen.
    again = client_of(app, "sam@example.com")
    page = text_of(again.get("/student").get_data(as_text=True))
    assert "Your account is frozen." in page and SUPPORT in page

    clock.advance(minutes=5)
    unfreeze(app, people, "student", "Cleared by the bank")
    with app.app_context():
        user = db.session.get(User, people["student"])
        assert (user.frozen_at, user.frozen_reason) == (None, None)
        records = db.session.scalars(select(AdminAction).order_by(AdminAction.id)).all()
        assert [r.action for r in records] == ["freeze", "unfreeze"]
        assert actions.values(records[1].before) == actions.values(records[0].after)
        assert actions.values(records[1].after) == {"frozen_at": None, "frozen_reason": None}
        assert records[1].reason == "Cleared by the bank"
    assert "Your account is frozen." not in text_of(again.get("/student").get_data(as_text=True))


def test_a_freeze_that_cannot_be_made_leaves_no_record(app, people):
    freeze(app, people, "student")
    with app.app_context():
        admin = db.session.get(User, people["admin"])
        other_admin = make_user("admin")
        version = db.session.get(User, people["student"]).session_version
        with pytest.raises(freezing.FreezeRefused, match=r"already frozen .* by Ada Admin"):
            freezing.freeze(admin, people["student"], "Again")
        with pytest.raises(freezing.FreezeRefused, match="not frozen"):
            freezing.unfreeze(admin, people["friend"], "Never was")
        with pytest.raises(freezing.FreezeRefused, match="your own account"):
            freezing.freeze(admin, admin.id, "Myself")
        with pytest.raises(freezing.FreezeRefused, match="Admin accounts cannot be frozen"):
            freezing.freeze(admin, other_admin.id, "A colleague")
        db.session.expire_all()
        assert db.session.scalar(select(func.count()).select_from(AdminAction)) == 1
        assert db.session.get(User, people["student"]).session_version == version
        assert db.session.get(User, people["friend"]).frozen_at is None
        assert db.session.get(User, other_admin.id).frozen_at is None


# Each action refused -------------------------------------------------------------------------


def test_a_frozen_student_cannot_buy(app, people):
    freeze(app, people, "student")
    student = client_of(app, "sam@example.com")
    before = ledger_state(app, people)

    assert_frozen_page(buy(student), "buy tokens")

    assert count(app, Purchase) == 0
    assert ledger_state(app, people) == before


def test_a_frozen_student_cannot_give_tokens_but_can_receive_them(app, people):
    student = client_of(app, "sam@example.com")
    reviewed = review_gift(student)  # reviewed before the freeze, confirmed after
    assert reviewed.status_code == 200
    fields = confirm_fields(reviewed.get_data(as_text=True))
    freeze(app, people, "student")
    student = client_of(app, "sam@example.com")
    before = ledger_state(app, people)

    assert_frozen_page(review_gift(student), "give tokens")
    fields["csrf_token"] = csrf_from(student.get("/gifts/new").get_data(as_text=True))
    assert_frozen_page(student.post("/gifts/confirm", data=fields), "give tokens")

    assert count(app, Gift) == 0
    assert ledger_state(app, people) == before

    # A gift to the frozen student is incoming: it arrives.
    with app.app_context():
        fund(people["friend"], 10)
    friend = client_of(app, "bea@example.com")
    html = review_gift(friend, email="sam@example.com", tokens="10").get_data(as_text=True)
    response = friend.post("/gifts/confirm", data=confirm_fields(html))
    assert response.status_code == 302
    with app.app_context():
        assert balances(people["student"]) == (110, 0)


def test_a_frozen_student_cannot_book_nor_book_a_frozen_teacher(app, people):
    freeze(app, people, "student")
    student = client_of(app, "sam@example.com")
    assert_frozen_page(book(student, people["teacher"]), "book a class")
    assert count(app, ClassSession) == 0

    unfreeze(app, people, "student")
    freeze(app, people, "teacher")
    student = client_of(app, "sam@example.com")
    response = book(student, people["teacher"])
    assert response.status_code == 409
    assert "Tara Teacher cannot take bookings right now. Choose another teacher." in text_of(
        response.get_data(as_text=True)
    )
    assert count(app, ClassSession) == 0


@pytest.mark.parametrize("who", ["student", "teacher"])
def test_a_class_does_not_start_when_either_side_is_frozen(app, people, clock, who):
    student = client_of(app, "sam@example.com")
    response = book(student, people["teacher"])
    assert response.status_code == 303
    class_id = int(response.location.rsplit("/", 1)[1])
    freeze(app, people, who)
    teacher = client_of(app, "tara@example.com")
    clock.now = clock.now.replace(hour=10)
    before = ledger_state(app, people)

    response = control(teacher, class_id, "start")

    page = text_of(response.get_data(as_text=True))
    assert response.status_code == 409, page
    if who == "teacher":
        assert "Your account is frozen, so you cannot start a class. Nothing was changed." in page
    else:
        assert "The student's account is frozen, so this class cannot start." in page
    assert f"contact {SUPPORT}" in page.lower()
    with app.app_context():
        assert db.session.get(ClassSession, class_id).status == "scheduled"
    assert ledger_state(app, people) == before

    # The booked class can still be cancelled, free of charge.
    assert control(teacher, class_id, "cancel").status_code == 200
    with app.app_context():
        assert db.session.get(ClassSession, class_id).status == "cancelled"
    assert ledger_state(app, people) == before


def test_the_start_is_checked_in_its_own_transaction_after_the_hold(app, people, clock):
    """A freeze that lands between the teacher's click and the hold is still seen: the
    service's check under the lock refuses, and the hold is rolled back."""
    with app.app_context():
        student, teacher = (db.session.get(User, people[who]) for who in ("student", "teacher"))
        class_id = make_class(student, teacher).id
    before = ledger_state(app, people)
    freeze(app, people, "student")
    with app.app_context():
        session = db.session.get(ClassSession, class_id)
        move = class_service.decide(
            class_service.clock_of(session),
            class_service.Action.START,
            session.scheduled_start,
            class_service.pause_limit(),
        )
        with pytest.raises(freezing.AccountFrozen):
            # Straight to the transaction that holds the tokens (past the early check).
            class_service._apply(session, session.version, move, people["teacher"])
        db.session.rollback()
        assert db.session.get(ClassSession, class_id).status == "scheduled"
    assert ledger_state(app, people) == before


def test_a_frozen_teacher_cannot_withdraw(app, people):
    freeze(app, people, "teacher")
    teacher = client_of(app, "tara@example.com")
    before = ledger_state(app, people)

    assert_frozen_page(review_withdrawal(teacher, people["method"]), "withdraw your earnings")
    assert_frozen_page(confirm_withdrawal(teacher, people["method"]), "withdraw your earnings")

    assert count(app, Withdrawal) == 0
    assert ledger_state(app, people) == before


def test_unfreezing_gives_every_action_back(app, people, clock):
    freeze(app, people, "student")
    freeze(app, people, "teacher")
    unfreeze(app, people, "student")
    unfreeze(app, people, "teacher")
    student = client_of(app, "sam@example.com")
    teacher = client_of(app, "tara@example.com")

    assert buy(student).status_code == 303
    html = review_gift(student).get_data(as_text=True)
    assert student.post("/gifts/confirm", data=confirm_fields(html)).status_code == 302
    booked = book(student, people["teacher"])
    assert booked.status_code == 303
    clock.now = clock.now.replace(hour=10)
    assert control(teacher, int(booked.location.rsplit("/", 1)[1]), "start").status_code == 200
    assert confirm_withdrawal(teacher, people["method"]).status_code == 303

    assert (count(app, Purchase), count(app, Gift), count(app, Withdrawal)) == (1, 1, 1)
    with app.app_context():
        assert balances(people["student"]) == (100 - 20 - 10, 10)  # gift, class hold
        assert balances(people["teacher"]) == (300 - 250, 250)  # the withdrawal's hold
        assert run_audit() == []


# What is under way still finishes -----------------------------------------------------------


def test_a_class_in_progress_settles_after_a_freeze_of_both_sides(app, people, clock):
    with app.app_context():
        student, teacher = (db.session.get(User, people[who]) for who in ("student", "teacher"))
        session = make_class(student, teacher, "in_progress")
        class_id, start = session.id, session.scheduled_start
        assert balances(student.id) == (90, 10)
    freeze(app, people, "student")
    freeze(app, people, "teacher")

    # The frozen teacher pauses and resumes it; then it runs its time and the sweeper settles it.
    teacher_client = client_of(app, "tara@example.com")
    clock.now = start + timedelta(minutes=20)
    assert control(teacher_client, class_id, "pause").status_code == 200
    assert control(teacher_client, class_id, "resume").status_code == 200
    clock.advance(minutes=45)
    with app.app_context():
        result = class_service.sweep()
        assert (result.completed, result.failed) == (1, 0)
        assert db.session.get(ClassSession, class_id).status == "completed"
        assert balances(people["student"]) == (90, 0)
        assert balances(people["teacher"]) == (310, 0)
        assert run_audit() == []


def test_a_purchase_started_before_the_freeze_is_credited_when_paid(app, people):
    student = client_of(app, "sam@example.com")
    response = buy(student)
    assert response.status_code == 303
    purchase_id = int(response.location.rsplit("/", 1)[1])
    freeze(app, people, "student")

    # The sandbox's Pay goes through the providers' fulfilment path, which never checks.
    student = client_of(app, "sam@example.com")
    page = student.get(f"/buy/sandbox/{purchase_id}").get_data(as_text=True)
    paid = student.post(f"/buy/sandbox/{purchase_id}/pay", data={"csrf_token": csrf_from(page)})
    assert paid.status_code == 303

    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        assert purchase.status == "paid"
        assert balances(people["student"]) == (100 + purchase.total_tokens, 0)
        # And the service itself credits a frozen account's pending purchase.
        other = purchase_service.start(
            db.session.get(User, people["friend"]),
            purchase_service.package_quotes()[0],
            purchase_service.Provider.SANDBOX,
            "friend-1",
        ).id
    freeze(app, people, "friend")
    with app.app_context():
        paid = purchase_service.fulfil(other, "stripe:webhook")
        assert paid.status == "paid"
        assert balances(people["friend"]) == (paid.total_tokens, 0)
        assert run_audit() == []
