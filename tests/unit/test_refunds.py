"""Refunds and disputes: tokens go back as far as the balance allows, never below zero."""

import pytest
from sqlalchemy import select

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.models import JournalEntry, Notification, PlatformAccount, Purchase, User, Wallet
from soma.purchases import service
from tests.fakes.stripe_server import event
from tests.helpers import balances, csrf_from, make_user, text_of
from tests.unit.test_stripe import checkout, post_event


def paid_purchase(app, tokens: int = 250) -> tuple[int, int]:
    """A student's sandbox purchase of the package of `tokens`, paid; (purchase id, user id)."""
    with app.app_context():
        user = make_user("student")
        chosen = next(q for q in service.package_quotes() if q.tokens == tokens)
        purchase = service.start(user, chosen, service.Provider.SANDBOX, f"paid-{user.id}")
        service.fulfil(purchase.id, "sandbox")
        return purchase.id, user.id


def platform(code: PlatformAccount) -> int:
    return db.session.scalar(select(Wallet.available).where(Wallet.code == code.value))


def refunds_of(purchase_id: int) -> list[tuple[str, int]]:
    rows = db.session.execute(
        select(JournalEntry.kind, JournalEntry.tokens)
        .where(JournalEntry.reference_type == "purchase", JournalEntry.reference_id == purchase_id)
        .where(JournalEntry.kind.in_(["refund", "adjustment"]))
        .order_by(JournalEntry.id)
    ).all()
    return [tuple(row) for row in rows]


def admin_refund(client, purchase_id: int, amount: str = ""):
    page = client.get(f"/admin/purchases/{purchase_id}").get_data(as_text=True)
    return client.post(
        f"/admin/purchases/{purchase_id}/refund",
        data={"csrf_token": csrf_from(page), "amount": amount},
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
    assert "paid → paid · admin:" in page and "refunded $5.00 in all; 52 tokens taken back" in page

    assert admin_refund(client, purchase_id).status_code == 303  # the rest
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        assert (purchase.status, purchase.refunded_minor, purchase.shortfall_tokens) == (
            "refunded",
            2500,
            0,
        )
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
            f"Purchase #{purchase_id} was refunded ($25.00 in all); "
            "208 tokens were taken back from your wallet."
        ) in messages
        assert run_audit() == []
    again = admin_refund(client, purchase_id)  # a refunded purchase offers no more refund
    assert again.status_code == 422
    assert "nothing is left to refund" in text_of(again.get_data(as_text=True))
    with app.app_context():
        assert balances(user_id) == (0, 0)


def test_a_refund_after_the_tokens_were_spent_flags_the_account_and_never_goes_negative(app):
    purchase_id, user_id = paid_purchase(app, tokens=100)
    with app.app_context():
        friend = make_user("student").id
        ledger.transfer(user_id, friend, 70, key="spent")
        db.session.commit()
        service.refund(purchase_id, 1000, "stripe:evt_refund")
        service.refund(purchase_id, 1000, "stripe:evt_refund")  # the event again
        purchase = db.session.get(Purchase, purchase_id)
        assert (purchase.status, purchase.shortfall_tokens) == ("refunded", 70)
        assert balances(user_id) == (0, 0)
        assert refunds_of(purchase_id) == [("refund", 30)]
        user = db.session.get(User, user_id)
        assert user.flagged_at is not None
        assert user.flag_reason == f"Refund of purchase #{purchase_id}: 70 tokens already spent"
        assert run_audit() == []


@pytest.mark.parametrize(
    ("amount", "message"),
    [("30.00", "At most $25.00 is left to refund."), ("abc", "Enter the amount to refund"),
     ("0", "Enter a positive amount in whole cents"), ("1.005", "whole cents")],
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


def test_stripe_refunds_through_the_admin_and_the_webhook_take_tokens_back_once(
    app, client, auth, stripe_on
):
    auth.login_as("student")
    purchase_id, session_id = checkout(app, client)
    paid = stripe_on.pay(session_id)
    post_event(client, event("checkout.session.completed", paid))
    auth.logout()
    auth.login_as("admin")

    assert admin_refund(client, purchase_id, "4.00").status_code == 303
    assert stripe_on.refunds() == [{"payment_intent": paid["payment_intent"], "amount": "400"}]
    charge = {"id": "ch_1", "object": "charge", "payment_intent": paid["payment_intent"],
              "amount_refunded": 400}  # fmt: skip
    post_event(client, event("charge.refunded", charge))  # Stripe confirms the same refund
    post_event(client, event("charge.refunded", {**charge, "amount_refunded": 1000}))
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        assert (purchase.status, purchase.refunded_minor) == ("refunded", 1000)
        assert refunds_of(purchase_id) == [("refund", 40), ("refund", 60)]
        assert balances(purchase.user_id) == (0, 0)
        assert run_audit() == []


@pytest.mark.parametrize("outcome", ["won", "lost"])
def test_a_dispute_holds_the_tokens_back_until_it_is_decided(app, client, auth, stripe_on, outcome):
    auth.login_as("student")
    purchase_id, session_id = checkout(app, client)
    paid = stripe_on.pay(session_id)
    post_event(client, event("checkout.session.completed", paid))
    dispute = {"id": "dp_1", "object": "dispute", "payment_intent": paid["payment_intent"],
               "amount": 1000, "status": "needs_response"}  # fmt: skip
    assert post_event(client, event("charge.dispute.created", dispute)).status_code == 200
    post_event(client, event("charge.dispute.created", dispute))  # again: nothing more
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        assert (purchase.status, purchase.dispute_tokens) == ("disputed", 100)
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


def test_a_refund_during_a_dispute_takes_nothing_twice(app):
    purchase_id, user_id = paid_purchase(app, tokens=100)
    with app.app_context():
        ledger.credit(user_id, 500, key="more-tokens")  # other tokens the student holds
        db.session.commit()
        service.dispute_opened(purchase_id, "dp_1", 1000, "stripe:evt_d")
        assert balances(user_id) == (500, 0)
        service.refund(purchase_id, 1000, "stripe:evt_r")  # the same money, refunded
        assert balances(user_id) == (500, 0)
        purchase = db.session.get(Purchase, purchase_id)
        assert (purchase.status, purchase.shortfall_tokens) == ("disputed", 0)
        service.dispute_closed(purchase_id, "dp_1", True, "stripe:evt_w")
        assert balances(user_id) == (500, 0)  # won, but the money was refunded: nothing back
        assert db.session.get(Purchase, purchase_id).status == "refunded"
        assert db.session.get(User, user_id).flagged_at is None
        assert run_audit() == []


def test_a_won_dispute_returns_bonus_tokens_to_where_they_came_from(app):
    purchase_id, user_id = paid_purchase(app, tokens=250)
    with app.app_context():
        before = platform(PlatformAccount.ISSUANCE), platform(PlatformAccount.PROMOTIONS)
        service.dispute_opened(purchase_id, "dp_2", 2500, "stripe:evt_d")
        assert balances(user_id) == (0, 0)
        service.dispute_closed(purchase_id, "dp_2", True, "stripe:evt_w")
        assert balances(user_id) == (260, 0)
        assert (platform(PlatformAccount.ISSUANCE), platform(PlatformAccount.PROMOTIONS)) == before
        assert db.session.get(Purchase, purchase_id).status == "paid"


def test_a_refund_stripe_reports_before_the_payment_is_credited_comes_back_later(
    app, client, auth, stripe_on
):
    auth.login_as("student")
    purchase_id, session_id = checkout(app, client)
    paid = stripe_on.pay(session_id)
    charge = {"id": "ch_2", "object": "charge", "payment_intent": paid["payment_intent"],
              "amount_refunded": 1000}  # fmt: skip
    refunded = event("charge.refunded", charge)
    assert post_event(client, refunded).status_code == 503  # not credited yet: send it again
    post_event(client, event("checkout.session.completed", paid))
    assert post_event(client, refunded).status_code == 200  # Stripe's retry
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        assert (purchase.status, purchase.refunded_minor) == ("refunded", 1000)
        assert balances(purchase.user_id) == (0, 0)
        assert run_audit() == []


def test_two_admins_refunding_at_once_cannot_both_refund_at_stripe(app, client, auth, stripe_on):
    import stripe

    from soma.purchases import stripe_checkout

    auth.login_as("student")
    purchase_id, session_id = checkout(app, client)
    post_event(client, event("checkout.session.completed", stripe_on.pay(session_id)))
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        stripe_checkout.refund_payment(purchase, 500)  # one admin: $5
        with pytest.raises(stripe.StripeError):
            stripe_checkout.refund_payment(purchase, 1000)  # the other, from the same start: $10
    assert len(stripe_on.refunds()) == 1
