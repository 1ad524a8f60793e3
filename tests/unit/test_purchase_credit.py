"""A purchase's credit and all it writes: its entries, status history, notification, email
and credited entry, written once and together (on PostgreSQL in one round trip; on SQLite
in one transaction), however often and late the confirmation comes."""

import pytest
from sqlalchemy import delete, func, select, update

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.ledger import core
from soma.ledger.errors import IdempotencyConflict, InvalidPosting
from soma.ledger.operations import credit_legs
from soma.models import (
    JournalEntry,
    Notification,
    OutboxMessage,
    Purchase,
    PurchaseEvent,
    User,
    Wallet,
)
from soma.notifications.service import email_text
from soma.purchases import service
from tests.builders import make_user
from tests.buying import credits_of, replay_credits, sandbox_purchase
from tests.helpers import balances


def bought(tokens: int = 250, bonus: bool = True) -> tuple[int, int]:
    """A pending sandbox purchase of a new student's: (purchase id, user id)."""
    purchase_id = sandbox_purchase(tokens=tokens, bonus=bonus)
    return purchase_id, db.session.get(Purchase, purchase_id).user_id


# What `after_the_credit` finds of a purchase no credit wrote anything for.
UNTOUCHED = {
    "status": "pending",
    "history": ["pending"],
    "notifications": 0,
    "mails": 0,
    "credited_entry": False,
}


def after_the_credit(purchase_id: int) -> dict:
    """What the credit and its follow-up wrote for the purchase."""
    db.session.expire_all()
    purchase = db.session.get(Purchase, purchase_id)
    link = f"/buy/purchases/{purchase_id}"
    notes = db.session.scalars(
        select(Notification.id).where(
            Notification.kind == "purchase_credited", Notification.link == link
        )
    ).all()
    mails = db.session.scalar(
        select(func.count())
        .select_from(OutboxMessage)
        .where(OutboxMessage.key.in_([f"notification:{note}" for note in notes]))
    )
    history = db.session.scalars(
        select(PurchaseEvent.to_status)
        .where(PurchaseEvent.purchase_id == purchase_id)
        .order_by(PurchaseEvent.id)
    ).all()
    tokens_entry = db.session.scalar(
        select(JournalEntry.id).where(
            JournalEntry.idempotency_key == f"purchase:{purchase_id}:tokens"
        )
    )
    return {
        "status": purchase.status,
        "history": history,
        "notifications": len(notes),
        "mails": mails,
        "credited_entry": purchase.credited_entry_id is not None
        and purchase.credited_entry_id == tokens_entry,
    }


DONE = {
    "status": "paid",
    "history": ["pending", "paid"],
    "notifications": 1,
    "mails": 1,
    "credited_entry": True,
}


def crash_after_the_credit(monkeypatch, purchase_id: int) -> None:
    """Credit the purchase, the worker dying right after the credit's round trip."""

    def crash(purchase_or_row):
        raise ConnectionError("the worker died after the credit")

    with monkeypatch.context() as patch:
        patch.setattr(service, "fresh", crash)  # the step after the credit on SQLite
        patch.setattr(service, "_as_loaded", crash)  # and on PostgreSQL
        with pytest.raises(ConnectionError):
            service.fulfil(purchase_id, "stripe:evt_1", receipt=f"R-{purchase_id}")
    db.session.rollback()


def test_a_credit_writes_its_entries_history_notification_and_email_once(app):
    with app.app_context():
        purchase_id, user_id = bought()
        first = service.fulfil(purchase_id, "stripe:evt_1", receipt="R-1")
        again = service.fulfil(purchase_id, "stripe:evt_1", receipt="R-1")  # the replay
        late = service.fulfil(purchase_id, "mpesa:query:late")

        assert (first.status, first.receipt, again.status, late.receipt) == (
            "paid",
            "R-1",
            "paid",
            "R-1",
        )
        assert balances(user_id) == (260, 0)
        assert after_the_credit(purchase_id) == DONE
        assert run_audit() == []
    assert credits_of(app, purchase_id) == [("purchase", 250), ("bonus", 10)]


def test_a_purchase_without_a_bonus_is_credited_by_one_entry(app):
    with app.app_context():
        purchase_id, user_id = bought(40, bonus=False)
        service.fulfil(purchase_id, "sandbox", receipt="S-1")
        assert balances(user_id) == (40, 0)
        assert after_the_credit(purchase_id) == DONE
        assert run_audit() == []
    assert credits_of(app, purchase_id) == [("purchase", 40)]


def test_a_late_confirmation_credits_an_expired_or_failed_purchase_and_records_from_where(app):
    with app.app_context():
        expired, expired_user = bought()
        service.expire(expired, "sweeper")
        failed, failed_user = bought(40, bonus=False)
        service.fail(failed, "stripe:evt_f", "declined")

        service.fulfil(expired, "stripe:evt_late")
        service.fulfil(failed, "stripe:evt_late2", payment_intent_id="pi_2")
        service.fail(failed, "stripe:evt_f", "declined")  # the failure again, later still

        assert balances(expired_user) == (260, 0)
        assert balances(failed_user) == (40, 0)
        assert after_the_credit(expired)["history"] == ["pending", "expired", "paid"]
        assert after_the_credit(failed) == {**DONE, "history": ["pending", "failed", "paid"]}
        purchase = db.session.get(Purchase, failed)
        assert (purchase.failure_reason, purchase.payment_intent_id) == (None, "pi_2")
        moved_from = db.session.scalars(
            select(PurchaseEvent.from_status).where(
                PurchaseEvent.purchase_id == failed, PurchaseEvent.to_status == "paid"
            )
        ).all()
        assert moved_from == ["failed"]
        assert run_audit() == []


def test_a_refunded_purchase_is_not_credited_again_by_a_late_confirmation(app):
    with app.app_context():
        purchase_id, user_id = bought()
        service.fulfil(purchase_id, "stripe:evt_1")
        db.session.execute(
            update(Purchase).where(Purchase.id == purchase_id).values(status="refunded")
        )
        db.session.commit()

        service.fulfil(purchase_id, "stripe:evt_1")
        assert balances(user_id) == (260, 0)
        assert after_the_credit(purchase_id)["history"] == ["pending", "paid"]
    assert credits_of(app, purchase_id) == [("purchase", 250), ("bonus", 10)]


def test_a_crash_after_the_credit_leaves_it_whole_and_a_resent_event_changes_nothing(
    app, monkeypatch
):
    with app.app_context():
        purchase_id, user_id = bought()
        crash_after_the_credit(monkeypatch, purchase_id)

        # Credited once, with its history, notification, email and credited entry.
        assert balances(user_id) == (260, 0)
        assert after_the_credit(purchase_id) == DONE
        assert run_audit() == []

        again = service.fulfil(purchase_id, "stripe:evt_1", receipt=f"R-{purchase_id}")
        assert (again.status, again.receipt) == ("paid", f"R-{purchase_id}")
        assert balances(user_id) == (260, 0)
        assert after_the_credit(purchase_id) == DONE
        assert run_audit() == []
    assert credits_of(app, purchase_id) == [("purchase", 250), ("bonus", 10)]


@pytest.mark.parametrize("part", ["tokens", "bonus"])
def test_a_credit_whose_entry_key_was_used_writes_nothing(app, part):
    with app.app_context():
        purchase_id, user_id = bought(40, bonus=False) if part == "tokens" else bought()
        # Not a purchase's entry, but under the key of one of its parts (with other
        # content): the purchase must not move, nor its other part go, without it.
        ledger.credit(user_id, 5, key=f"purchase:{purchase_id}:{part}")
        db.session.commit()

        with pytest.raises(IdempotencyConflict):
            service.fulfil(purchase_id, "sandbox")
        db.session.rollback()
        assert balances(user_id) == (5, 0)
        assert after_the_credit(purchase_id) == UNTOUCHED
    assert credits_of(app, purchase_id) == []


def written_for(purchase_id: int) -> dict:
    """Every row the credit wrote for the purchase, as stored."""
    db.session.expire_all()
    purchase = db.session.get(Purchase, purchase_id)
    entries = db.session.execute(
        select(
            JournalEntry.id,
            JournalEntry.kind,
            JournalEntry.idempotency_key,
            JournalEntry.tokens,
            JournalEntry.memo,
            JournalEntry.request_digest,
        )
        .where(JournalEntry.reference_type == "purchase", JournalEntry.reference_id == purchase_id)
        .order_by(JournalEntry.id)
    ).all()
    note = db.session.execute(
        select(
            Notification.id, Notification.user_id, Notification.message, Notification.link
        ).where(Notification.link == f"/buy/purchases/{purchase_id}")
    ).one()
    mails = db.session.execute(
        select(
            OutboxMessage.to_address,
            OutboxMessage.subject,
            OutboxMessage.body,
            OutboxMessage.kind,
            OutboxMessage.user_id,
        ).where(OutboxMessage.key == f"notification:{note.id}")
    ).all()
    return {"purchase": purchase, "entries": entries, "note": note, "mails": mails}


def expected_entry(purchase: Purchase, part: str, kind: str, tokens: int, memo: str) -> tuple:
    """An entry of the purchase's credit as `ledger.credit` would write it, digest included."""
    source = dict(service.PARTS)[part]
    legs = credit_legs(purchase.user_id, tokens, source)
    digest = core._digest(kind, tokens, legs, ("purchase", purchase.id), None)
    return (kind, f"purchase:{purchase.id}:{part}", tokens, memo, digest)


@pytest.mark.parametrize("currency", ["USD", "KES"])
def test_a_credit_writes_the_words_python_writes_in_every_row(app, currency):
    """On PostgreSQL the words come from SQL, on SQLite from Python: the same either way."""
    with app.app_context():
        student = make_user("student", name="Ann 'O%s' \\ Mbeki,  Jr.")
        chosen = next(q for q in service.package_quotes() if q.bonus_tokens)
        purchase = service.start(student, chosen, service.Provider.SANDBOX, "buy-words")
        # Large numbers, for the thousands' commas; each provider's label; both currencies.
        provider = "mpesa" if currency == "KES" else "stripe"
        db.session.execute(
            update(Purchase)
            .where(Purchase.id == purchase.id)
            .values(tokens=1234567, bonus_tokens=1000, amount_minor=123456705,
                    currency=currency, provider=provider)
        )  # fmt: skip
        db.session.commit()
        purchase_id, user_id = purchase.id, student.id

        done = service.fulfil(purchase_id, f"{provider}:evt_1", receipt="R-1")
        found = written_for(purchase_id)
        purchase = found["purchase"]

        assert (done.status, done.receipt, done.credited_entry_id) == (
            "paid",
            "R-1",
            found["entries"][0].id,
        )
        price = "$1,234,567.05" if currency == "USD" else "KES 123,456,705"
        label = "Card (Stripe)" if currency == "USD" else "M-Pesa"
        memo = f"Bought 1,234,567 tokens for {price} ({label})"
        assert memo == service._memo(purchase)
        assert [tuple(row[1:]) for row in found["entries"]] == [
            expected_entry(purchase, "tokens", "purchase", 1234567, memo),
            expected_entry(purchase, "bonus", "bonus", 1000, f"Bonus with purchase #{purchase_id}"),
        ]
        assert balances(user_id) == (1235567, 0)
        message = f"1,235,567 tokens were added to your wallet (purchase #{purchase_id})."
        link = f"/buy/purchases/{purchase_id}"
        assert tuple(found["note"][1:]) == (user_id, message, link)
        subject, body = email_text(student.display_name, message, link)
        assert [tuple(mail) for mail in found["mails"]] == [
            (student.email, subject, body, "purchase_credited", user_id)
        ]
        assert "Hello Ann 'O%s' \\ Mbeki,  Jr.," in body
        assert after_the_credit(purchase_id) == DONE
        assert run_audit() == []


def test_a_student_who_wants_no_email_gets_the_notification_only(app):
    with app.app_context():
        purchase_id, user_id = bought(40, bonus=False)
        db.session.get(User, user_id).email_notifications = False
        db.session.commit()

        service.fulfil(purchase_id, "sandbox", receipt="S-1")
        found = written_for(purchase_id)
        assert balances(user_id) == (40, 0)
        assert found["note"].user_id == user_id
        assert found["mails"] == []
        assert after_the_credit(purchase_id) == {**DONE, "mails": 0}


def test_a_credits_entry_replayed_through_the_ledger_is_the_same_entry(app):
    """The digest written with the credit is the one `ledger.credit` computes: the same
    credit asked again through the ledger is a replay, not a refusal."""
    with app.app_context():
        purchase_id, user_id = bought()
        service.fulfil(purchase_id, "stripe:evt_1")
        replay_credits(purchase_id, user_id, 250, 10)
        assert balances(user_id) == (260, 0)
        assert run_audit() == []


def test_a_credit_to_a_student_without_a_wallet_is_refused_and_writes_nothing(app):
    with app.app_context():
        purchase_id, user_id = bought()
        db.session.execute(delete(Wallet).where(Wallet.user_id == user_id))
        db.session.commit()

        with pytest.raises(InvalidPosting, match="no wallet"):
            service.fulfil(purchase_id, "stripe:evt_1")
        db.session.rollback()
        assert after_the_credit(purchase_id) == UNTOUCHED
    assert credits_of(app, purchase_id) == []
