"""A purchase's one-statement credit on PostgreSQL, raced: by the webhook and the poller for
one purchase, and by many purchases of one student at once."""

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from soma.audit import run_audit
from soma.extensions import db
from soma.fastread import autocommit_rows
from soma.models import PlatformAccount, Purchase, TokenPackage, Wallet
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


def test_statements_sent_together_commit_together_or_not_at_all(app):
    with app.app_context():
        package = db.session.scalars(select(TokenPackage).order_by(TokenPackage.id)).first()
        before, package_id = package.sort_order, package.id
        db.session.rollback()
        move = (
            "UPDATE token_packages SET sort_order = sort_order + 1 WHERE id = %(id)s",
            {"id": package_id},
        )
        failing = ("SELECT 1 / %(zero)s", {"zero": 0})
        with pytest.raises(DBAPIError, match="division by zero"):
            autocommit_rows([move, move, failing])
        assert db.session.get(TokenPackage, package_id).sort_order == before
        db.session.rollback()

        assert autocommit_rows([move, move, ("SELECT 1", {})]) == [None, None, (1,)]
        db.session.expire_all()
        assert db.session.get(TokenPackage, package_id).sort_order == before + 2


def test_statements_interrupted_between_two_sends_commit_nothing(app, monkeypatch):
    """Python interrupted after the first statement went out (a worker's signal, a bad
    value): psycopg still sends the pipeline's Sync, which must not commit the first."""
    from soma import fastread

    with app.app_context():
        package = db.session.scalars(select(TokenPackage).order_by(TokenPackage.id)).first()
        before, package_id = package.sort_order, package.id
        db.session.rollback()
        move = (
            "UPDATE token_packages SET sort_order = sort_order + 1 WHERE id = %(id)s",
            {"id": package_id},
        )
        sent = []
        real = fastread._execute

        def interrupted(driver, sql, params):
            if sent:
                raise KeyboardInterrupt
            sent.append(sql)
            return real(driver, sql, params)

        monkeypatch.setattr(fastread, "_execute", interrupted)
        with pytest.raises(KeyboardInterrupt):
            autocommit_rows([move, move])
        monkeypatch.setattr(fastread, "_execute", real)
        assert sent == [move[0]]
        assert db.session.get(TokenPackage, package_id).sort_order == before


def test_a_credit_interrupted_mid_round_trip_credits_nothing_and_a_resent_event_credits_once(
    app, monkeypatch
):
    from soma import fastread

    with app.app_context():
        purchase_id, user_id = bought()
        issuance = platform(PlatformAccount.ISSUANCE)
        real = fastread._execute
        calls = []

        def interrupted(driver, sql, params):
            calls.append(sql)
            if len(calls) == 2:  # the guarded credit went out; the bonus did not
                raise KeyboardInterrupt
            return real(driver, sql, params)

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
        assert platform(PlatformAccount.ISSUANCE) == issuance - 250
        assert run_audit() == []
