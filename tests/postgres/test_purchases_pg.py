"""Purchases on PostgreSQL: confirmations, refunds and disputes racing for one purchase."""

from sqlalchemy import select

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.models import Purchase, PurchaseEvent
from soma.purchases import service, stripe_checkout
from tests.builders import make_user
from tests.buying import checkout, credits_of
from tests.conftest import STRIPE_WEBHOOK_SECRET as SECRET
from tests.fakes.stripe_server import FakeStripe, event, signed
from tests.helpers import balances, errors, ok, race


def test_ten_confirmations_of_one_purchase_credit_it_once(app, wide_app):
    with app.app_context():
        user = make_user("student")
        chosen = next(q for q in service.package_quotes() if q.bonus_tokens)
        purchase = service.start(user, chosen, service.Provider.SANDBOX, "race")
        purchase_id, user_id = purchase.id, user.id

    # A webhook, its retries and the success page, all at once; one says it failed.
    work = [lambda n=n: service.fulfil(purchase_id, f"confirm-{n}") for n in range(9)]
    work.insert(4, lambda: service.fail(purchase_id, "late-failure", "declined"))
    outcomes = race(wide_app, work)

    assert errors(outcomes) == []
    assert len(ok(outcomes)) == 10
    assert credits_of(app, purchase_id) == [
        ("purchase", chosen.tokens),
        ("bonus", chosen.bonus_tokens),
    ]
    with app.app_context():
        assert balances(user_id) == (chosen.total_tokens, 0)
        assert db.session.get(Purchase, purchase_id).status == "paid"
        moves = db.session.scalars(
            select(PurchaseEvent.to_status)
            .where(PurchaseEvent.purchase_id == purchase_id)
            .order_by(PurchaseEvent.id)
        ).all()
        # Paid once; a failure may come first (then the payment is believed) or not at all.
        assert moves in (["pending", "paid"], ["pending", "failed", "paid"])
        assert run_audit() == []


def test_the_success_page_racing_the_webhook_credits_once(app, wide_app, client, auth):
    fake = FakeStripe().start()
    try:
        settings = {"STRIPE_SECRET_KEY": "sk_test_soma", "STRIPE_WEBHOOK_SECRET": SECRET,
                    "STRIPE_API_BASE": fake.url}  # fmt: skip
        app.config.update(settings)
        wide_app.config.update(settings)
        student = auth.login_as("student")
        purchase_id, session_id = checkout(app, client, tokens=250)
        body, header = signed(event("checkout.session.completed", fake.pay(session_id)), SECRET)

        def success_page():
            return stripe_checkout.check_session(db.session.get(Purchase, purchase_id))

        def webhook():
            return stripe_checkout.handle_webhook(body, header)

        outcomes = race(wide_app, [success_page, webhook] * 5)
    finally:
        fake.stop()

    assert errors(outcomes) == []
    assert credits_of(app, purchase_id) == [("purchase", 250), ("bonus", 10)]
    with app.app_context():
        assert balances(student.id) == (260, 0)
        assert db.session.get(Purchase, purchase_id).status == "paid"
        assert run_audit() == []


def test_refunds_disputes_and_spending_racing_on_one_purchase_lose_and_make_no_token(app, wide_app):
    from soma.models import PlatformAccount, User
    from soma.purchases import reversals
    from tests.postgres.test_ledger_pg import platform_balance

    with app.app_context():
        user = make_user("student")
        friend = make_user("student").id
        chosen = next(q for q in service.package_quotes() if q.tokens == 250)
        purchase = service.start(user, chosen, service.Provider.SANDBOX, "race-reversals")
        service.fulfil(purchase.id, "sandbox")
        purchase_id, user_id = purchase.id, user.id
        before = (
            platform_balance(PlatformAccount.ISSUANCE),
            platform_balance(PlatformAccount.PROMOTIONS),
        )

    def refund():
        return reversals.report(purchase_id, "re_race", "succeeded", 1000, "stripe:evt_r")

    def dispute():
        return reversals.report(purchase_id, "dp_race", "open", 1500, "stripe:evt_d")

    def spend(n):
        return ledger.transfer(user_id, friend, 40, key=f"spend-{n}")

    work = [refund] * 4 + [dispute] * 3 + [lambda n=n: spend(n) for n in range(3)]
    outcomes = race(wide_app, work)
    assert all(isinstance(e, ledger.InsufficientTokens) for e in errors(outcomes)), errors(outcomes)

    with app.app_context():
        found = reversals.reversals_of(purchase_id)
        assert sorted((r.provider_ref, r.status) for r in found) == [
            ("dp_race", "open"),
            ("re_race", "succeeded"),
        ]
        spent = balances(friend)[0]
        taken = sum(r.taken for r in found)
        short = sum(r.shortfall for r in found)
        assert taken + short == 260  # every token of the money reversed, held back or owed
        assert balances(user_id) == (260 - spent - taken, 0)
        tokens_taken = sum(r.tokens_taken for r in found)
        bonus_taken = sum(r.bonus_taken for r in found)
        assert platform_balance(PlatformAccount.ISSUANCE) == before[0] + tokens_taken
        assert platform_balance(PlatformAccount.PROMOTIONS) == before[1] + bonus_taken
        assert (db.session.get(User, user_id).flagged_at is not None) == (short > 0)
        assert db.session.get(Purchase, purchase_id).status == "disputed"
        assert run_audit() == []
