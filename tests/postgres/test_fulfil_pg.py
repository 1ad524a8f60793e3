"""A purchase's one-statement credit on PostgreSQL, raced: by the webhook and the poller for
one purchase, and by many purchases of one student at once."""

import pytest
from sqlalchemy import func, select

from soma.audit import run_audit
from soma.extensions import db
from soma.models import PlatformAccount, Purchase, Wallet
from soma.purchases import service
from tests.buying import credits_of
from tests.helpers import balances, errors, ok, race
from tests.unit.test_purchase_credit import DONE, after_the_credit, bought


def platform(code: PlatformAccount) -> int:
    """The account's balance: the sum of its shards."""
    return db.session.scalar(select(func.sum(Wallet.available)).where(Wallet.code == code.value))


def test_the_webhook_and_the_poller_fulfilling_one_purchase_at_once_credit_it_once(app, wide_app):
    with app.app_context():
        purchase_id, user_id = bought()
        before = platform(PlatformAccount.ISSUANCE), platform(PlatformAccount.PROMOTIONS)

    def webhook(n):
        return lambda: (
            service.fulfil(purchase_id, f"stripe:evt_{n % 2}", payment_intent_id="pi_1").status
        )

    def poller():
        return lambda: service.fulfil(purchase_id, "stripe:sweeper").status

    work = [webhook(n) if n % 2 else poller() for n in range(12)]
    work.insert(3, lambda: service.expire(purchase_id, "sweeper").status)
    work.insert(7, lambda: service.fail(purchase_id, "stripe:evt_f", "declined").status)
    outcomes = race(wide_app, work)

    assert errors(outcomes) == []
    assert set(ok(outcomes)) <= {"pending", "paid", "expired", "failed"}
    assert credits_of(app, purchase_id) == [("purchase", 250), ("bonus", 10)]
    with app.app_context():
        assert balances(user_id) == (260, 0)
        assert platform(PlatformAccount.ISSUANCE) == before[0] - 250
        assert platform(PlatformAccount.PROMOTIONS) == before[1] - 10
        state = after_the_credit(purchase_id)
        # Paid once; an expiry or a failure may come first (then the payment is believed).
        assert state["history"][0] == "pending" and state["history"][-1] == "paid"
        assert state["history"].count("paid") == 1
        assert {**state, "history": None} == {**DONE, "history": None}
        assert db.session.get(Purchase, purchase_id).payment_intent_id in (None, "pi_1")
        assert run_audit() == []


def test_many_purchases_of_one_student_fulfilled_at_once_credit_each_once(app, wide_app):
    with app.app_context():
        student = None
        purchases = []
        for n in range(8):
            purchase_id, user_id = bought(40 + n, bonus=False) if n % 2 else bought()
            if student is None:
                student = user_id
            else:  # all of them the first student's: the same wallet, raced for
                db.session.execute(
                    Purchase.__table__.update()
                    .where(Purchase.id == purchase_id)
                    .values(user_id=student)
                )
                db.session.commit()
            purchases.append(purchase_id)
        expected = sum(260 if n % 2 == 0 else 40 + n for n in range(8))
        before = platform(PlatformAccount.ISSUANCE), platform(PlatformAccount.PROMOTIONS)

    work = [lambda p=p: service.fulfil(p, "stripe:evt").status for p in purchases]
    work += [lambda p=p: service.fulfil(p, "mpesa:query").status for p in purchases]
    outcomes = race(wide_app, work)

    assert errors(outcomes) == []
    assert set(ok(outcomes)) == {"paid"}
    with app.app_context():
        assert balances(student) == (expected, 0)
        assert platform(PlatformAccount.ISSUANCE) == before[0] - (expected - 40)
        assert platform(PlatformAccount.PROMOTIONS) == before[1] - 40
        for purchase_id in purchases:
            assert after_the_credit(purchase_id) == DONE
        assert run_audit() == []
    for n, purchase_id in enumerate(purchases):
        wanted = [("purchase", 250), ("bonus", 10)] if n % 2 == 0 else [("purchase", 40 + n)]
        assert credits_of(app, purchase_id) == wanted


def test_a_credit_interrupted_before_it_is_sent_writes_nothing_and_a_resent_event_credits_once(
    app, monkeypatch
):
    from soma import fastread

    with app.app_context():
        purchase_id, user_id = bought()
        issuance = platform(PlatformAccount.ISSUANCE)
        real = fastread._execute

        def interrupted(driver, sql, params):
            raise KeyboardInterrupt

        monkeypatch.setattr(fastread, "_execute", interrupted)
        with pytest.raises(KeyboardInterrupt):
            service.fulfil(purchase_id, "stripe:evt_1", payment_intent_id="pi_1")
        monkeypatch.setattr(fastread, "_execute", real)
        db.session.rollback()
        assert db.session.get(Purchase, purchase_id).status == "pending"
        assert credits_of(app, purchase_id) == []
        assert balances(user_id) == (0, 0)
        assert platform(PlatformAccount.ISSUANCE) == issuance

        assert (
            service.fulfil(purchase_id, "stripe:evt_1", payment_intent_id="pi_1").status == "paid"
        )
        assert credits_of(app, purchase_id) == [("purchase", 250), ("bonus", 10)]
        assert balances(user_id) == (260, 0)
        assert after_the_credit(purchase_id) == DONE
        assert run_audit() == []


def test_a_credit_whose_answer_is_lost_is_whole_and_a_resent_event_credits_once(app, monkeypatch):
    """Python interrupted once the statement went out (a worker's signal): the statement
    is one transaction in autocommit, so it commits whole; the connection is dropped, and
    the resent event finds the purchase paid."""
    from soma import fastread

    with app.app_context():
        purchase_id, user_id = bought()
        issuance = platform(PlatformAccount.ISSUANCE)
        promotions = platform(PlatformAccount.PROMOTIONS)
        real = fastread._execute

        def interrupted(driver, sql, params):
            real(driver, sql, params)
            raise KeyboardInterrupt

        monkeypatch.setattr(fastread, "_execute", interrupted)
        with pytest.raises(KeyboardInterrupt):
            service.fulfil(purchase_id, "stripe:evt_1", payment_intent_id="pi_1")
        monkeypatch.setattr(fastread, "_execute", real)
        db.session.rollback()
        assert credits_of(app, purchase_id) == [("purchase", 250), ("bonus", 10)]
        assert after_the_credit(purchase_id) == DONE

        again = service.fulfil(purchase_id, "stripe:evt_1", payment_intent_id="pi_1")
        assert (again.status, again.payment_intent_id) == ("paid", "pi_1")
        assert credits_of(app, purchase_id) == [("purchase", 250), ("bonus", 10)]
        assert balances(user_id) == (260, 0)
        assert platform(PlatformAccount.ISSUANCE) == issuance - 250
        assert platform(PlatformAccount.PROMOTIONS) == promotions - 10
        assert after_the_credit(purchase_id) == DONE
        assert run_audit() == []
