"""Every order of Stripe's events for one purchase ends where a small model says it must.

Hypothesis draws how the payment went (paid at once, paid later, failed, or
expired), the refunds and disputes that followed and how each ended, and the
student spending some tokens meanwhile. Each event is sent duplicated, shuffled,
and late: an event answered 503 goes back in the queue, as Stripe resends it.
After the queue is drained the purchase, the balances, the account's flag and
`flask soma audit` are checked against the model.
"""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.models import PlatformAccount, Purchase, User, Wallet
from soma.purchases import reversals, service, stripe_checkout
from tests.builders import make_user
from tests.conftest import STRIPE_WEBHOOK_SECRET
from tests.fakes.stripe_server import event, signed
from tests.helpers import balances
from tests.unit.test_purchase_credit import after_the_credit

PACKAGE = 250  # 250 tokens + 10 bonus for $25.00
WHOLE = 2500

REFUND_PATHS = {
    "pending": ["pending"],
    "succeeded": ["pending", "succeeded"],
    "failed": ["pending", "failed"],
    "failed-after-success": ["pending", "succeeded", "failed"],
}


@st.composite
def histories(draw):
    """How the payment went, and the reversals that followed: (outcome, refunds, dispute)."""
    outcome = draw(st.sampled_from(["paid", "paid-async", "failed-async", "expired"]))
    refunds, dispute = [], None
    if outcome.startswith("paid"):
        left = WHOLE
        for index in range(draw(st.integers(0, 3))):
            if left <= 0:
                break
            amount = draw(st.integers(1, left))
            left -= amount
            path = draw(st.sampled_from(sorted(REFUND_PATHS)))
            refunds.append((f"re_{index}", amount, path))
        if left > 0 and draw(st.booleans()):
            dispute = (draw(st.integers(1, left)), draw(st.sampled_from(["open", "won", "lost"])))
    return outcome, refunds, dispute


def stripe_events(outcome, refunds, dispute, session, intent) -> list[dict]:
    """The events Stripe sends for this history (refund and dispute ids made unique by the
    payment intent, as Stripe's are)."""
    paid = {**session, "status": "complete", "payment_status": "paid", "payment_intent": intent}
    unpaid = {**paid, "payment_status": "unpaid"}
    events = {
        "paid": [event("checkout.session.completed", paid)],
        "paid-async": [
            event("checkout.session.completed", unpaid),
            event("checkout.session.async_payment_succeeded", paid),
        ],
        "failed-async": [
            event("checkout.session.completed", unpaid),
            event("checkout.session.async_payment_failed", unpaid),
        ],
        "expired": [event("checkout.session.expired", {**session, "status": "expired"})],
    }[outcome]
    for ref, amount, path in refunds:
        for step, status in enumerate(REFUND_PATHS[path]):
            refund = {
                "id": f"{ref}_{intent}",
                "object": "refund",
                "amount": amount,
                "payment_intent": intent,
                "status": status,
            }
            kind = "refund.created" if step == 0 else "charge.refund.updated"
            events.append(event(kind, refund))
            if status == "succeeded":  # the charge's own event, listing the refund
                charge = {"id": "ch_1", "object": "charge", "payment_intent": intent,
                          "refunds": {"object": "list", "data": [refund]}}  # fmt: skip
                events.append(event("charge.refunded", charge))
    if dispute:
        amount, ending = dispute
        body = {
            "id": f"dp_{intent}",
            "object": "dispute",
            "amount": amount,
            "payment_intent": intent,
            "status": "needs_response",
        }
        events.append(event("charge.dispute.created", body))
        if ending != "open":
            events.append(event("charge.dispute.closed", {**body, "status": ending}))
    return events


def expected(outcome, refunds, dispute):
    """The model: (status, tokens held back by refunds and disputes, (tokens, bonus) back)."""
    if not outcome.startswith("paid"):
        return {"failed-async": "failed", "expired": "expired"}[outcome], (0, 0)
    active_refunds = sum(a for _, a, path in refunds if not path.startswith("failed"))
    active_dispute = dispute[0] if dispute and dispute[1] in ("open", "lost") else 0
    covered = min(WHOLE, active_refunds + active_dispute)
    back = (reversals.share(250, covered, WHOLE), reversals.share(10, covered, WHOLE))
    if active_dispute:
        status = "disputed"
    elif active_refunds >= WHOLE:
        status = "refunded"
    else:
        status = "paid"
    return status, back


def platform(code: PlatformAccount) -> int:
    return db.session.scalar(select(func.sum(Wallet.available)).where(Wallet.code == code.value))


def deliver(app, queue: list[dict], drain: bool = True) -> list[dict]:
    """Send each event; one answered 503 goes back in the queue, as Stripe resends it.
    Returns the events still to be resent (none when `drain`)."""
    for sent in range(len(queue) * 20 + 20):
        if not queue or (not drain and sent >= len(queue)):
            return queue
        payload = queue.pop(0)
        body, header = signed(payload, STRIPE_WEBHOOK_SECRET)
        with app.app_context():
            answer, status = stripe_checkout.handle_webhook(body, header)
        assert status in (200, 503), answer
        if status == 503:
            queue.append(payload)
    raise AssertionError(f"events never settled: {[e['type'] for e in queue]}")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories(), seed=st.integers(0, 2**32), spend=st.integers(0, 260))
def test_every_order_of_stripe_events_ends_where_the_model_says(
    app, stripe_on, history, seed, spend
):
    outcome, refunds, dispute = history
    shuffle = random.Random(seed)
    with app.test_request_context():
        student = make_user("student")
        chosen = next(q for q in service.package_quotes() if q.tokens == PACKAGE)
        purchase = service.start(student, chosen, service.Provider.STRIPE, f"buy-{student.id}")
        stripe_checkout.start_checkout(purchase)
        session = stripe_on.sessions[purchase.checkout_session_id]
        intent = stripe_on.pay(session["id"])["payment_intent"]
        purchase_id, user_id = purchase.id, student.id
        friend = make_user("student").id
        before = platform(PlatformAccount.ISSUANCE), platform(PlatformAccount.PROMOTIONS)

    events = stripe_events(outcome, refunds, dispute, session, intent)
    queue = events + [e for e in events if shuffle.random() < 0.3]  # duplicates
    shuffle.shuffle(queue)
    cut = shuffle.randint(0, len(queue))
    later = deliver(app, queue[:cut], drain=False)
    spent = 0
    with app.app_context():  # the student spends some of what they hold, mid-way
        spent = min(spend, balances(user_id)[0])
        if spent:
            ledger.transfer(user_id, friend, spent, key=f"spend-{user_id}")
            db.session.commit()
    deliver(app, queue[cut:] + later)

    status, (tokens_back, bonus_back) = expected(outcome, refunds, dispute)
    with app.app_context():
        purchase = db.session.get(Purchase, purchase_id)
        assert purchase.status == status
        found = reversals.reversals_of(purchase_id)
        taken = sum(r.taken for r in found)
        short = sum(r.shortfall for r in found)
        held_tokens = sum(r.tokens_taken + r.tokens_short for r in found)
        held_bonus = sum(r.bonus_taken + r.bonus_short for r in found)
        assert (held_tokens, held_bonus) == (tokens_back, bonus_back)
        credited = 260 if status in ("paid", "refunded", "disputed") else 0
        assert balances(user_id) == (credited - spent - taken, 0)
        if not spent:
            assert short == 0
        issuance, promotions = (
            platform(PlatformAccount.ISSUANCE),
            platform(PlatformAccount.PROMOTIONS),
        )
        tokens_taken = sum(r.tokens_taken for r in found)
        bonus_taken = sum(r.bonus_taken for r in found)
        assert issuance == before[0] - (250 if credited else 0) + tokens_taken
        assert promotions == before[1] - (10 if credited else 0) + bonus_taken
        assert (db.session.get(User, user_id).flagged_at is not None) == (short > 0)
        # The credit's notification, email and credited entry: once if credited, else none.
        state = after_the_credit(purchase_id)
        once = 1 if credited else 0
        assert (state["notifications"], state["mails"]) == (once, once)
        assert state["credited_entry"] == bool(credited)
        assert run_audit() == []
