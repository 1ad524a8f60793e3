"""Purchases on PostgreSQL: the page tests again, and many confirmations racing for one purchase."""

from sqlalchemy import select

from soma.audit import run_audit
from soma.extensions import db
from soma.models import Purchase, PurchaseEvent
from soma.purchases import service, stripe_checkout
from tests.fakes.stripe_server import FakeStripe, event, signed
from tests.helpers import balances, make_user
from tests.postgres.test_ledger_pg import errors, ok, race
from tests.unit.test_mpesa import (  # noqa: F401
    fake_daraja,
    test_a_paid_callback_is_confirmed_then_credited_once,
    test_a_receipt_credits_one_purchase_only,
)
from tests.unit.test_purchases import (  # noqa: F401 (collected here with the PostgreSQL app)
    credits_of,
    student,
    test_a_custom_amount_costs_ten_cents_a_token,
    test_a_double_submitted_buy_form_makes_one_purchase,
    test_a_failed_payment_credits_nothing_until_the_provider_confirms_it,
    test_a_package_bought_in_the_sandbox_is_credited_with_its_bonus_once,
    test_another_students_purchase_is_not_found,
    test_bad_input_is_refused_clearly_and_changes_nothing,
    test_the_audit_names_a_paid_purchase_that_was_never_credited,
)
from tests.unit.test_refunds import (  # noqa: F401
    test_a_dispute_holds_the_tokens_back_until_it_is_decided,
    test_a_refund_after_the_tokens_were_spent_flags_the_account_and_never_goes_negative,
    test_an_admin_refunds_in_part_then_in_full,
    test_stripe_refunds_through_the_admin_and_the_webhook_take_tokens_back_once,
)
from tests.unit.test_stripe import (  # noqa: F401
    SECRET,
    checkout,
    test_an_async_payment_is_credited_once_in_either_order,
    test_the_same_event_five_times_credits_once,
    test_the_success_page_asks_stripe_and_credits_before_the_webhook,
)


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
