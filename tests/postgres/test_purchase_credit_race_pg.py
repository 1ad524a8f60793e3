"""The one-round-trip credit, raced against the credit through the session (a
fulfilment with a claim, as an admin's match of an M-Pesa payment runs it)."""

from soma.audit import run_audit
from soma.extensions import db
from soma.models import Purchase
from soma.purchases import service
from tests.buying import credits_of
from tests.helpers import balances, errors, ok, race
from tests.unit.test_purchase_credit import DONE, after_the_credit, bought


def test_the_credit_at_once_and_the_credit_with_a_claim_racing_credit_once(app, wide_app):
    with app.app_context():
        purchase_id, user_id = bought()

    def at_once(n):
        return lambda: service.fulfil(purchase_id, f"stripe:evt_{n}", receipt="R-WEBHOOK").receipt

    def with_claim(n):
        return lambda: (
            service.fulfil(
                purchase_id, f"mpesa:match:{n}", claim=lambda: None, receipt="R-CLAIM"
            ).receipt
        )

    outcomes = race(wide_app, [at_once(n) if n % 2 else with_claim(n) for n in range(12)])

    assert errors(outcomes) == []
    with app.app_context():
        stored = db.session.get(Purchase, purchase_id)
        # Whoever moved it first wrote its receipt; every caller is told that one.
        assert set(ok(outcomes)) == {stored.receipt}
        assert stored.receipt in {"R-WEBHOOK", "R-CLAIM"}
        assert balances(user_id) == (260, 0)
        assert after_the_credit(purchase_id) == DONE
        assert run_audit() == []
    assert credits_of(app, purchase_id) == [("purchase", 250), ("bonus", 10)]
