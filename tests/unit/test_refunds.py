"""Refunds and disputes: tokens go back as far as the balance allows, never below zero."""

import re

import pytest
from sqlalchemy import func, select

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.models import (
    JournalEntry,
    Notification,
    PlatformAccount,
    ProviderEvent,
    Purchase,
    PurchaseReversal,
    User,
    Wallet,
)
from soma.purchases import reversals, service
from tests.builders import make_user
from tests.buying import checkout, point_credit_at, post_event
from tests.fakes.stripe_server import event
from tests.helpers import balances, confirm_post, csrf_from, text_of


def paid_purchase(app, tokens: int = 250) -> tuple[int, int]:
    """A student's sandbox purchase of the package of `tokens`, paid; (purchase id, user id)."""
    with app.app_context():
        user = make_user("student")
        chosen = next(q for q in service.package_quotes() if q.tokens == tokens)
        purchase = service.start(user, chosen, service.Provider.SANDBOX, f"paid-{user.id}")
        service.fulfil(purchase.id, "sandbox")
        return purchase.id, user.id


def platform(code: PlatformAccount) -> int:
    return db.session.scalar(select(func.sum(Wallet.available)).where(Wallet.code == code.value))


def refunds_of(purchase_id: int) -> list[tuple[str, int]]:
    """The entries of the purchase's reversals, in order: (kind, tokens)."""
    ids = select(PurchaseReversal.id).where(PurchaseReversal.purchase_id == purchase_id)
    rows = db.session.execute(
        select(JournalEntry.kind, JournalEntry.tokens)
        .where(JournalEntry.reference_type == "reversal", JournalEntry.reference_id.in_(ids))
        .order_by(JournalEntry.id)
    ).all()
    return [tuple(row) for row in rows]


def admin_refund(client, purchase_id: int, amount: str = "", key: str | None = None):
    page = client.get(f"/admin/purchases/{purchase_id}").get_data(as_text=True)
    shown = re.search(r'name="key" value="([^"]+)"', page)  # (no form: nothing to refund)
    key = key or (shown.group(1) if shown else "no-form-shown")
    return confirm_post(
        client,
        f"/admin/purchases/{purchase_id}/refund",
        {"csrf_token": csrf_from(page), "amount": amount, "key": key},
    )


def test_an_admin_refunds_in_part_then_in_full(app, client, auth):
    purchase_id, user_id = paid_purchase(app)
    with app.app_context():
        issuance, promotions = (
            platform(PlatformAccount.ISSUANCE),
            platform(PlatformAccount.PROMOTIONS),
        )
    auth.login_as("admin")

    response = admin_refund(client, purchase_id, "5.00")  # a fifth of $25.00
    assert response.status_code == 303
    with app.app_context():
        assert balances(user_id) == (260 - 52, 0)  # ceil(250/5) + ceil(10/5)
        assert db.session.get(Purchase, purchase_id).status == "paid"
    page = text_of(client.get(f"/admin/purchases/{purchase_id}").get_data(as_text=True))
    assert "Refunded $5.00" in page
    assert (
        "paid → paid · admin:" in page and "refunds $5.00, disputes $0.00; 52 tokens taken" in page
    )

    assert admin_refund(client, purchase_id).status_code == 303  # the rest
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        assert purchase.status == "refunded"
        found = reversals.reversals_of(purchase_id)
        assert [(r.kind, r.amount_minor, r.status, r.taken, r.shortfall) for r in found] == [
            ("refund", 500, "succeeded", 52, 0),
            ("refund", 2000, "succeeded", 208, 0),
        ]
        assert balances(user_id) == (0, 0)
        assert refunds_of(purchase_id) == [
            ("refund", 50),
            ("refund", 2),
            ("refund", 200),
            ("refund", 8),
        ]
        # Purchased tokens went back to issuance, bonus tokens to promotions.
        assert platform(PlatformAccount.ISSUANCE) == issuance + 250
        assert platform(PlatformAccount.PROMOTIONS) == promotions + 10
        messages = db.session.scalars(
            select(Notification.message).where(Notification.user_id == user_id)
        ).all()
        assert (
            f"Purchase #{purchase_id} was refunded or disputed: 208 tokens taken back from "
            "your wallet."
        ) in messages
        assert run_audit() == []
    again = admin_refund(client, purchase_id)  # a refunded purchase offers no more refund
    assert again.status_code == 422
    assert "Nothing is left to refund" in text_of(again.get_data(as_text=True))
    with app.app_context():
        assert balances(user_id) == (0, 0)


def report(purchase_id, ref, status, amount, source="stripe:evt"):
    return reversals.report(purchase_id, ref, status, amount, source)


def test_a_refund_after_the_tokens_were_spent_flags_the_account_and_never_goes_negative(app):
    purchase_id, user_id = paid_purchase(app, tokens=100)
    with app.app_context():
        friend = make_user("student").id
        ledger.transfer(user_id, friend, 70, key="spent")
        db.session.commit()
        report(purchase_id, "re_1", "succeeded", 1000)
        report(purchase_id, "re_1", "succeeded", 1000)  # the event again
        purchase = db.session.get(Purchase, purchase_id)
        (refund,) = reversals.reversals_of(purchase_id)
        assert (purchase.status, refund.taken, refund.shortfall) == ("refunded", 30, 70)
        assert balances(user_id) == (0, 0)
        assert refunds_of(purchase_id) == [("refund", 30)]
        user = db.session.get(User, user_id)
        assert user.flagged_at is not None
        assert user.flag_reason == f"Purchase #{purchase_id}: 70 tokens reversed were already spent"
        assert run_audit() == []


@pytest.mark.parametrize(
    ("amount", "message"),
    [("30.00", "At most $25.00 is left to refund."), ("abc", "Enter the amount to refund"),
     ("0", "Enter a positive amount in whole cents"), ("1.005", "whole cents"),
     ("sNaN", "Enter the amount to refund"), ("1e999999999", "Enter the amount to refund")],
)  # fmt: skip
def test_a_bad_refund_amount_is_refused_and_moves_nothing(app, client, auth, amount, message):
    purchase_id, user_id = paid_purchase(app)
    auth.login_as("admin")
    response = admin_refund(client, purchase_id, amount)
    assert response.status_code == 422
    assert message in text_of(response.get_data(as_text=True))
    with app.app_context():
        assert balances(user_id) == (260, 0)
        assert refunds_of(purchase_id) == []


def test_only_admins_refund(app, client, auth):
    purchase_id, _ = paid_purchase(app)
    auth.login_as("student")
    assert client.get(f"/admin/purchases/{purchase_id}").status_code == 403
    assert client.post(f"/admin/purchases/{purchase_id}/refund").status_code in (400, 403)


def stripe_paid(app, client, auth, stripe_on) -> tuple[int, dict]:
    auth.login_as("student")
    purchase_id, session_id = checkout(app, client)
    paid = stripe_on.pay(session_id)
    assert post_event(client, event("checkout.session.completed", paid)).status_code == 200
    auth.logout()
    return purchase_id, paid


def test_stripe_refunds_through_the_admin_and_the_webhook_take_tokens_back_once(
    app, client, auth, stripe_on
):
    purchase_id, paid = stripe_paid(app, client, auth, stripe_on)
    auth.login_as("admin")
    assert admin_refund(client, purchase_id, "4.00").status_code == 303
    assert stripe_on.refunds() == [
        {"payment_intent": paid["payment_intent"], "amount": "400",
         "metadata": {"purchase_id": str(purchase_id)}}
    ]  # fmt: skip
    (ours,) = stripe_on.refund_objects.values()
    other = stripe_on.add_refund(paid["payment_intent"], 600)  # made in Stripe's dashboard
    charge = {"id": "ch_1", "object": "charge", "payment_intent": paid["payment_intent"],
              "amount_refunded": 1000}  # fmt: skip
    post_event(client, event("charge.refunded", charge))  # lists both refunds from Stripe
    post_event(client, event("refund.updated", ours))  # the admin's, again
    post_event(client, event("refund.created", other))  # the other, again
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        assert purchase.status == "refunded"
        assert {r.provider_ref: r.taken for r in reversals.reversals_of(purchase_id)} == {
            ours["id"]: 40,
            other["id"]: 60,
        }
        assert sorted(refunds_of(purchase_id)) == [("refund", 40), ("refund", 60)]
        assert balances(purchase.user_id) == (0, 0)
        assert run_audit() == []


def test_a_stripe_refund_that_fails_later_gives_the_tokens_back(app, client, auth, stripe_on):
    purchase_id, _ = stripe_paid(app, client, auth, stripe_on)
    auth.login_as("admin")
    assert admin_refund(client, purchase_id, "10.00").status_code == 303
    with app.app_context():
        user_id = db.session.get(Purchase, purchase_id).user_id
        assert balances(user_id) == (0, 0)
    (refund,) = stripe_on.refund_objects.values()
    failed = stripe_on.refund(refund["id"], status="failed")
    assert post_event(client, event("charge.refund.updated", failed)).status_code == 200
    post_event(client, event("refund.updated", {**failed, "status": "succeeded"}))  # older news
    with app.app_context():
        assert db.session.get(Purchase, purchase_id).status == "paid"
        assert balances(user_id) == (100, 0)
        assert refunds_of(purchase_id) == [("refund", 100), ("adjustment", 100)]
        assert run_audit() == []
    page = text_of(client.get(f"/admin/purchases/{purchase_id}").get_data(as_text=True))
    assert "Refund failed" in page


def test_an_mpesa_purchase_cannot_be_refunded_from_soma_and_keeps_its_tokens(app, client, auth):
    with app.app_context():
        user = make_user("student")
        purchase = service.Purchase(
            idempotency_key="mpesa-1", user_id=user.id, tokens=100, bonus_tokens=0,
            amount_minor=1295, currency="KES", provider="mpesa", phone="254712345678",
        )  # fmt: skip
        db.session.add(purchase)
        db.session.commit()
        service.fulfil(purchase.id, "mpesa:test", receipt="NLJ0001")
        purchase_id, user_id = purchase.id, user.id
    auth.login_as("admin")
    response = admin_refund(client, purchase_id, "")
    assert response.status_code == 409
    assert "M-Pesa payments cannot be refunded from Soma yet" in text_of(
        response.get_data(as_text=True)
    )
    with app.app_context():
        assert balances(user_id) == (100, 0)
        assert reversals.reversals_of(purchase_id) == []


def test_a_stripe_purchase_with_no_payment_on_record_is_not_refunded(app, client, auth, stripe_on):
    purchase_id, _ = stripe_paid(app, client, auth, stripe_on)
    with app.app_context():
        db.session.execute(
            Purchase.__table__.update()
            .where(Purchase.id == purchase_id)
            .values(payment_intent_id=None)
        )
        db.session.commit()
        user_id = db.session.get(Purchase, purchase_id).user_id
    auth.login_as("admin")
    response = admin_refund(client, purchase_id, "")
    assert response.status_code == 409
    assert "Stripe has no payment on record" in text_of(response.get_data(as_text=True))
    assert stripe_on.refunds() == []
    with app.app_context():
        assert balances(user_id) == (100, 0)


@pytest.mark.parametrize("outcome", ["won", "lost"])
def test_a_dispute_holds_the_tokens_back_until_it_is_decided(app, client, auth, stripe_on, outcome):
    purchase_id, paid = stripe_paid(app, client, auth, stripe_on)
    dispute = {"id": "dp_1", "object": "dispute", "payment_intent": paid["payment_intent"],
               "amount": 1000, "status": "needs_response"}  # fmt: skip
    assert post_event(client, event("charge.dispute.created", dispute)).status_code == 200
    post_event(client, event("charge.dispute.created", dispute))  # again: nothing more
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        (held,) = reversals.reversals_of(purchase_id)
        assert (purchase.status, held.status, held.taken) == ("disputed", "open", 100)
        assert balances(purchase.user_id) == (0, 0)
    post_event(client, event("charge.dispute.closed", {**dispute, "status": outcome}))
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        if outcome == "won":
            assert purchase.status == "paid"
            assert balances(purchase.user_id) == (100, 0)
            assert refunds_of(purchase_id) == [("refund", 100), ("adjustment", 100)]
        else:
            assert purchase.status == "disputed"
            assert balances(purchase.user_id) == (0, 0)
        assert run_audit() == []


def test_regression_a_dispute_closed_won_before_it_was_created_takes_nothing(
    app, client, auth, stripe_on
):
    purchase_id, paid = stripe_paid(app, client, auth, stripe_on)
    dispute = {"id": "dp_9", "object": "dispute", "payment_intent": paid["payment_intent"],
               "amount": 1000, "status": "won"}  # fmt: skip
    post_event(client, event("charge.dispute.closed", dispute))
    post_event(client, event("charge.dispute.created", {**dispute, "status": "needs_response"}))
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        (closed,) = reversals.reversals_of(purchase_id)
        assert (purchase.status, closed.status, closed.taken) == ("paid", "won", 0)
        assert balances(purchase.user_id) == (100, 0)
        assert refunds_of(purchase_id) == []
        assert run_audit() == []


def test_regression_a_refund_during_a_dispute_takes_nothing_twice(app):
    purchase_id, user_id = paid_purchase(app, tokens=100)
    with app.app_context():
        ledger.credit(user_id, 500, key="more-tokens")  # other tokens the student holds
        db.session.commit()
        report(purchase_id, "dp_1", "open", 1000)
        assert balances(user_id) == (500, 0)
        report(purchase_id, "re_1", "succeeded", 1000)  # the same money, refunded
        assert balances(user_id) == (500, 0)
        assert db.session.get(Purchase, purchase_id).status == "disputed"
        report(purchase_id, "dp_1", "won", 1000)
        assert balances(user_id) == (500, 0)  # won, but the money was refunded: nothing back
        assert db.session.get(Purchase, purchase_id).status == "refunded"
        assert db.session.get(User, user_id).flagged_at is None
        assert run_audit() == []


def test_regression_a_refund_failed_after_the_tokens_were_spent_returns_them(app):
    purchase_id, user_id = paid_purchase(app, tokens=100)
    with app.app_context():
        report(purchase_id, "re_2", "pending", 1000)
        assert balances(user_id) == (0, 0)
        friend = make_user("student").id
        ledger.credit(user_id, 30, key="topped-up")
        ledger.transfer(user_id, friend, 30, key="spent-again")
        db.session.commit()
        report(purchase_id, "re_2", "failed", 1000)
        assert balances(user_id) == (100, 0)  # every token it took comes back
        assert db.session.get(Purchase, purchase_id).status == "paid"
        assert run_audit() == []


def test_a_won_dispute_returns_its_own_tokens_clears_its_shortfall_and_the_flag(app):
    purchase_id, user_id = paid_purchase(app, tokens=250)
    with app.app_context():
        before = platform(PlatformAccount.ISSUANCE), platform(PlatformAccount.PROMOTIONS)
        friend = make_user("student").id
        ledger.transfer(user_id, friend, 200, key="spent")
        db.session.commit()
        report(purchase_id, "dp_2", "open", 2500)
        (dispute,) = reversals.reversals_of(purchase_id)
        assert (dispute.tokens_taken, dispute.bonus_taken, dispute.shortfall) == (60, 0, 200)
        assert db.session.get(User, user_id).flagged_at is not None
        report(purchase_id, "dp_2", "won", 2500)
        (dispute,) = reversals.reversals_of(purchase_id)
        assert (dispute.taken, dispute.shortfall) == (0, 0)
        assert balances(user_id) == (60, 0)
        assert (platform(PlatformAccount.ISSUANCE), platform(PlatformAccount.PROMOTIONS)) == before
        assert db.session.get(User, user_id).flagged_at is None
        assert db.session.get(Purchase, purchase_id).status == "paid"
        assert run_audit() == []


def test_a_refund_stripe_reports_before_the_payment_is_credited_comes_back_later(
    app, client, auth, stripe_on
):
    auth.login_as("student")
    purchase_id, session_id = checkout(app, client)
    paid = stripe_on.pay(session_id)
    refund = stripe_on.add_refund(paid["payment_intent"], 1000)
    refunded = event("refund.created", refund)
    assert post_event(client, refunded).status_code == 503  # not credited yet: send it again
    post_event(client, event("checkout.session.completed", paid))
    assert post_event(client, refunded).status_code == 200  # Stripe's retry
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        assert purchase.status == "refunded"
        assert balances(purchase.user_id) == (0, 0)
        kept = db.session.scalars(
            select(ProviderEvent).where(ProviderEvent.event_id == refunded["id"])
        ).one()
        assert (kept.status, kept.attempts) == ("handled", 2)
        assert run_audit() == []


def test_a_refund_form_sent_twice_refunds_once_and_a_failed_refund_can_be_redone(
    app, client, auth, stripe_on
):
    purchase_id, _ = stripe_paid(app, client, auth, stripe_on)
    auth.login_as("admin")
    assert admin_refund(client, purchase_id, "5.00", key="form-key-1").status_code == 303
    assert admin_refund(client, purchase_id, "5.00", key="form-key-1").status_code == 303
    assert len(stripe_on.refunds()) == 1  # one refund at Stripe, one in Soma
    (first,) = stripe_on.refund_objects.values()
    other = admin_refund(client, purchase_id, "3.00", key="form-key-1")  # reused, other amount
    assert other.status_code == 502
    with app.app_context():
        assert [r.amount_minor for r in reversals.reversals_of(purchase_id)] == [500]
    failed = stripe_on.refund(first["id"], status="failed")
    post_event(client, event("charge.refund.updated", failed))
    again = admin_refund(client, purchase_id, "5.00")  # a new form: a new refund
    assert again.status_code == 303
    assert len(stripe_on.refunds()) == 2
    with app.app_context():
        found = reversals.reversals_of(purchase_id)
        assert [(r.amount_minor, r.status) for r in found] == [
            (500, "failed"),
            (500, "succeeded"),
        ]
        assert balances(db.session.get(Purchase, purchase_id).user_id) == (50, 0)
        assert run_audit() == []


def test_regression_a_refund_then_a_dispute_won_on_the_same_money_keeps_the_refund(app):
    purchase_id, user_id = paid_purchase(app, tokens=250)
    with app.app_context():
        report(purchase_id, "re_1", "succeeded", 2500)
        report(purchase_id, "dp_1", "open", 2500)  # what the refund held moves to the dispute
        assert balances(user_id) == (0, 0)
        report(purchase_id, "dp_1", "won", 2500)  # and back: nothing for the student
        assert balances(user_id) == (0, 0)
        found = reversals.reversals_of(purchase_id)
        assert [(r.provider_ref, r.taken, r.shortfall) for r in found] == [
            ("re_1", 260, 0),
            ("dp_1", 0, 0),
        ]
        assert db.session.get(User, user_id).flagged_at is None
        assert db.session.get(Purchase, purchase_id).status == "refunded"
        assert run_audit() == []


def test_regression_what_one_refund_returns_another_takes_with_no_false_shortfall(app):
    purchase_id, user_id = paid_purchase(app, tokens=250)
    with app.app_context():
        report(purchase_id, "re_b", "succeeded", 1)
        report(purchase_id, "re_a", "pending", 1)
        friend = make_user("student").id
        ledger.transfer(user_id, friend, balances(user_id)[0], key="all-spent")
        db.session.commit()
        report(purchase_id, "re_a", "failed", 1)
        assert balances(user_id) == (0, 0)
        assert sum(r.shortfall for r in reversals.reversals_of(purchase_id)) == 0
        assert db.session.get(User, user_id).flagged_at is None
        assert run_audit() == []


# The audit of reversals ------------------------------------------------------------------


def codes(violations) -> set[str]:
    return {violation.check for violation in violations}


def test_the_audit_names_a_stray_refund_entry_that_names_a_purchase(app):
    purchase_id, user_id = paid_purchase(app, tokens=100)
    with app.app_context():
        report(purchase_id, "re_1", "succeeded", 500)
        assert run_audit() == []
        ledger.debit(  # tokens taken back through the ledger, but by no reversal
            user_id, 5, key="stray", kind="refund", reference=("purchase", purchase_id)
        )
        db.session.commit()
        found = run_audit()
        assert codes(found) == {"reversal-entries"}
        assert str(found[0]) == (
            f"reversal-entries: purchase {purchase_id}'s refund entries hold back 55 tokens "
            "and 0 bonus, its reversals say 50 and 0"
        )


def test_the_audit_names_a_refund_entry_that_names_no_reversal(app):
    _, user_id = paid_purchase(app, tokens=100)
    with app.app_context():
        ledger.debit(user_id, 3, key="orphan", kind="refund", reference=("reversal", 999))
        db.session.commit()
        assert codes(run_audit()) == {"reversal-stray"}


def test_the_audit_names_a_reversal_whose_record_and_entries_disagree(app):
    purchase_id, _ = paid_purchase(app, tokens=100)
    with app.app_context():
        report(purchase_id, "re_1", "succeeded", 500)
        db.session.execute(
            PurchaseReversal.__table__.update()
            .where(PurchaseReversal.provider_ref == "re_1")
            .values(tokens_taken=40, tokens_short=10)
        )
        db.session.commit()
        assert codes(run_audit()) == {"reversal-entries"}


def test_the_audit_names_a_purchase_whose_status_its_reversals_do_not_make(app):
    purchase_id, _ = paid_purchase(app, tokens=100)
    with app.app_context():
        report(purchase_id, "re_1", "succeeded", 1000)
        db.session.execute(
            Purchase.__table__.update().where(Purchase.id == purchase_id).values(status="paid")
        )
        db.session.commit()
        (found,) = run_audit()
        assert str(found) == (
            f"purchase-status: purchase {purchase_id} is paid; its reversals say refunded"
        )


def test_the_audit_names_a_reversal_that_holds_back_other_than_it_is_due(app):
    purchase_id, _ = paid_purchase(app, tokens=100)
    with app.app_context():
        report(purchase_id, "re_1", "succeeded", 500)
        db.session.execute(  # (the record says so, and so do the entries: only the due differs)
            PurchaseReversal.__table__.update()
            .where(PurchaseReversal.provider_ref == "re_1")
            .values(amount_minor=400)
        )
        db.session.commit()
        assert codes(run_audit()) == {"reversal-due"}


def test_a_refund_stripe_may_have_made_is_sent_again_with_the_same_key(
    app, client, auth, stripe_on
):
    purchase_id, _ = stripe_paid(app, client, auth, stripe_on)
    auth.login_as("admin")
    stripe_on.fail_next = 3  # Stripe answers 500 to the request and both of the SDK's retries
    response = admin_refund(client, purchase_id, "4.00", key="form-key-unknown")
    assert response.status_code == 502
    page = response.get_data(as_text=True)
    assert "the refund may or may not have been made" in text_of(page)
    assert 'name="key" value="form-key-unknown"' in page
    assert admin_refund(client, purchase_id, "4.00", key="form-key-unknown").status_code == 303
    assert admin_refund(client, purchase_id, "4.00", key="form-key-unknown").status_code == 303
    assert len(stripe_on.refunds()) == 1
    with app.app_context():
        assert [r.amount_minor for r in reversals.reversals_of(purchase_id)] == [400]


def test_a_refund_id_already_on_another_purchase_is_ignored_not_retried_forever(
    app, client, auth, stripe_on
):
    first, _ = stripe_paid(app, client, auth, stripe_on)
    with app.app_context():
        report(first, "re_shared", "succeeded", 100)
    auth.login_as("student")
    other, session_id = checkout(app, client, tokens=250)
    other_paid = stripe_on.pay(session_id)
    assert post_event(client, event("checkout.session.completed", other_paid)).status_code == 200
    refund = {"id": "re_shared", "object": "refund", "amount": 100, "status": "succeeded",
              "payment_intent": other_paid["payment_intent"]}  # fmt: skip
    assert post_event(client, event("refund.updated", refund)).status_code == 200
    with app.app_context():
        assert reversals.reversals_of(other) == []
        kept = db.session.scalars(
            select(ProviderEvent).where(ProviderEvent.kind == "refund.updated")
        ).one()
        assert kept.status == "ignored"


@pytest.mark.parametrize(
    ("ref", "status", "made"), [("re_1", "succeeded", "refunded"), ("dp_1", "open", "disputed")]
)
def test_the_audit_names_a_reversed_purchase_that_names_no_credit(app, ref, status, made):
    """Refunded or disputed, a purchase still names the entry that credited it."""
    purchase_id, _ = paid_purchase(app, tokens=100)
    with app.app_context():
        report(purchase_id, ref, status, 1000)
        purchase = db.session.get(Purchase, purchase_id)
        credit = purchase.credited_entry_id
        assert purchase.status == made
        assert credit is not None and run_audit() == []
        point_credit_at(purchase_id, None)
        assert [str(v) for v in run_audit()] == [
            f"purchase-credit: purchase {purchase_id} is {made} and was credited by entry "
            f"{credit}, but names no entry as its credit"
        ]
