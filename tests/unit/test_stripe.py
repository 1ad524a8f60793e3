"""Stripe Checkout with the real `stripe` SDK against a fake Stripe server on 127.0.0.1.

Webhooks are signed the way Stripe signs them. Duplicates and reordering are
expected; a purchase is credited once.
"""

import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from soma.audit import run_audit
from soma.extensions import db
from soma.models import Purchase, PurchaseEvent, User, utcnow
from soma.purchases import service
from tests.buying import buy, checkout, credits_of, package_id, post_event
from tests.conftest import STRIPE_WEBHOOK_SECRET as SECRET
from tests.fakes.stripe_server import event, signed
from tests.helpers import balances, text_of


@pytest.fixture
def student(app, auth, stripe_on):
    return auth.login_as("student", name="Cara Card")


def status_of(app, purchase_id: int) -> str:
    with app.app_context():
        return db.session.get(Purchase, purchase_id).status


def test_checkout_session_is_created_once_with_everything_stripe_needs(
    app, client, student, stripe_on
):
    text = text_of(client.get("/buy/").get_data(as_text=True))
    assert "Card (Stripe)" in text and "sandbox" not in text
    purchase_id, _ = checkout(app, client, tokens=250)
    (request,) = stripe_on.created()
    params = request["params"]
    assert request["authorization"] == "Bearer sk_test_soma"
    assert request["idempotency_key"] == f"soma-purchase-{purchase_id}"
    assert params["mode"] == "payment"
    assert params["client_reference_id"] == str(purchase_id)
    assert params["metadata"] == {"purchase_id": str(purchase_id)}
    assert params["payment_intent_data"] == {"metadata": {"purchase_id": str(purchase_id)}}
    (item,) = params["line_items"]
    assert item["price_data"] == {
        "currency": "usd",
        "unit_amount": "2500",
        "product_data": {"name": "250 Soma tokens + 10 bonus"},
    }
    assert params["success_url"] == (
        f"http://localhost/buy/purchases/{purchase_id}?session_id={{CHECKOUT_SESSION_ID}}"
    )
    assert params["cancel_url"] == f"http://localhost/buy/purchases/{purchase_id}?cancelled=1"
    assert status_of(app, purchase_id) == "pending"
    assert credits_of(app, purchase_id) == []


@pytest.mark.parametrize("case", ["bad signature", "no signature", "stale", "other secret"])
def test_a_webhook_not_signed_now_by_stripe_is_refused_and_moves_nothing(
    app, client, student, stripe_on, case
):
    purchase_id, session_id = checkout(app, client)
    payload = event("checkout.session.completed", stripe_on.pay(session_id))
    if case == "bad signature":
        body, header = signed(payload, SECRET)
        response = client.post("/webhooks/stripe", data=body + b" ",
                               headers={"Stripe-Signature": header})  # fmt: skip
    elif case == "no signature":
        response = client.post("/webhooks/stripe", data=json.dumps(payload))
    elif case == "stale":
        response = post_event(client, payload, timestamp=int(time.time()) - 600)
    else:
        response = post_event(client, payload, secret="whsec_someone_else")
    assert response.status_code == 400
    assert status_of(app, purchase_id) == "pending"
    assert credits_of(app, purchase_id) == []


def test_the_same_event_five_times_credits_once(app, client, student, stripe_on):
    purchase_id, session_id = checkout(app, client, tokens=250)
    payload = event("checkout.session.completed", stripe_on.pay(session_id))
    answers = [post_event(client, payload) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert [a.get_json().get("duplicate", False) for a in answers] == [False] + [True] * 4
    assert credits_of(app, purchase_id) == [("purchase", 250), ("bonus", 10)]
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        assert purchase.status == "paid"
        assert purchase.payment_intent_id.startswith("pi_")
        assert balances(purchase.user_id) == (260, 0)
        assert run_audit() == []


@pytest.mark.parametrize("order", ["completed first", "succeeded first"])
def test_an_async_payment_is_credited_once_in_either_order(app, client, student, stripe_on, order):
    purchase_id, session_id = checkout(app, client)
    unpaid = event("checkout.session.completed", stripe_on.pay(session_id, "unpaid"))
    succeeded = event(
        "checkout.session.async_payment_succeeded", stripe_on.settle_async(session_id)
    )
    first, second = (unpaid, succeeded) if order == "completed first" else (succeeded, unpaid)
    assert post_event(client, first).status_code == 200
    if order == "completed first":
        assert status_of(app, purchase_id) == "pending"  # unpaid: not credited yet
        assert credits_of(app, purchase_id) == []
    assert post_event(client, second).status_code == 200
    assert status_of(app, purchase_id) == "paid"
    assert credits_of(app, purchase_id) == [("purchase", 100)]


def test_a_failed_async_payment_and_an_expired_session_credit_nothing(
    app, client, student, stripe_on
):
    failed_id, failed_session = checkout(app, client, tokens=50)
    failing = stripe_on.pay(failed_session, "unpaid")
    post_event(client, event("checkout.session.completed", failing))
    post_event(client, event("checkout.session.async_payment_failed", failing))
    expired_id, expired_session = checkout(app, client, tokens=100)
    post_event(client, event("checkout.session.expired", stripe_on.expire(expired_session)))

    assert status_of(app, failed_id) == "failed"
    assert status_of(app, expired_id) == "expired"
    assert credits_of(app, failed_id) == credits_of(app, expired_id) == []
    text = text_of(client.get(f"/buy/purchases/{expired_id}").get_data(as_text=True))
    assert "The checkout expired before it was paid. Nothing was charged." in text
    with app.app_context():
        history = db.session.scalars(
            select(PurchaseEvent.to_status).where(PurchaseEvent.purchase_id == failed_id)
        ).all()
        assert history == ["pending", "failed"]


def test_the_success_page_asks_stripe_and_credits_before_the_webhook(
    app, client, student, stripe_on
):
    purchase_id, session_id = checkout(app, client)
    page = client.get(f"/buy/purchases/{purchase_id}?session_id={session_id}")
    assert "Processing your payment" in text_of(page.get_data(as_text=True))  # not paid yet

    paid = stripe_on.pay(session_id)
    page = client.get(f"/buy/purchases/{purchase_id}?session_id={session_id}")
    assert "100 tokens credited to your wallet." in text_of(page.get_data(as_text=True))
    assert post_event(client, event("checkout.session.completed", paid)).status_code == 200
    assert credits_of(app, purchase_id) == [("purchase", 100)]


def test_a_session_that_paid_another_amount_is_not_credits_of(app, client, student, stripe_on):
    purchase_id, session_id = checkout(app, client)
    paid = stripe_on.pay(session_id)
    assert (
        post_event(
            client, event("checkout.session.completed", {**paid, "amount_total": 1})
        ).status_code
        == 200
    )
    other = {**paid, "id": "cs_test_someone_elses"}
    assert post_event(client, event("checkout.session.completed", other)).status_code == 200
    assert status_of(app, purchase_id) == "pending"
    assert credits_of(app, purchase_id) == []


def test_when_stripe_does_not_answer_the_student_is_told_and_nothing_is_pending(
    app, client, student, stripe_on
):
    stripe_on.fail_next = 10  # the SDK retries; every try fails
    response = buy(client, package=package_id(app, 50), provider="stripe", key="down")
    assert response.status_code == 503
    assert "Card payments are not answering right now." in text_of(response.get_data(as_text=True))
    with app.app_context():
        (purchase,) = db.session.scalars(select(Purchase)).all()
        assert purchase.status == "failed"


def test_the_sweeper_asks_stripe_about_checkouts_that_should_have_expired(
    app, client, student, stripe_on, runner
):
    old_id, old_session = checkout(app, client, tokens=100)
    young_id, _ = checkout(app, client, tokens=250)
    with app.app_context():
        unopened = service.start(
            db.session.get(User, student.id),
            service.quote(package_id=package_id(app, 50)),
            service.Provider.STRIPE,
            "never-opened",
        ).id
        now = utcnow()
        for purchase_id, age in ((old_id, 26 * 60), (young_id, 120), (unopened, 20)):
            db.session.execute(
                update(Purchase)
                .where(Purchase.id == purchase_id)
                .values(created_at=now - timedelta(minutes=age))
            )
        db.session.commit()
    stripe_on.expire(old_session)
    result = runner.invoke(args=["soma", "sweep"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        statuses = {
            purchase_id: db.session.get(Purchase, purchase_id).status
            for purchase_id in (old_id, young_id, unopened)
        }
    assert statuses == {old_id: "expired", young_id: "pending", unopened: "expired"}
    asked = [r["path"] for r in stripe_on.requests if r["method"] == "GET"]
    assert asked == [f"/v1/checkout/sessions/{old_session}"]  # the young one is not asked
