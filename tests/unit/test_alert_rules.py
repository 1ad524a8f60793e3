"""The sweeper's alert rules: each raises one alert per cause, however many passes see it,
and a new cause raises a new alert; each rule reads only what is past its watermark."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from soma import clock, ledger
from soma.alert_rules import BATCH, LAG, raise_alerts, watermark
from soma.extensions import db
from soma.models import Alert, Posting, Purchase
from soma.payouts import withdrawals as withdrawal_service
from soma.purchases import mpesa, reversals
from soma.purchases import service as purchase_service
from soma.purchases.service import Provider
from tests.builders import (
    fund,
    make_funded_user,
    make_teacher,
    make_user,
    make_withdrawal,
    paid_purchase,
    payout_method,
)
from tests.helpers import ShiftedClock


def alerts(rule: str | None = None) -> list[Alert]:
    query = select(Alert).order_by(Alert.id)
    if rule:
        query = query.where(Alert.rule == rule)
    return list(db.session.scalars(query))


def sweep_twice(now=None) -> int:
    """Two sweeper passes: the second must raise nothing the first did."""
    now = now or clock.now()
    first = raise_alerts(now)
    assert raise_alerts(now + timedelta(seconds=10)) == 0
    return first


def gift(sender_id: int, tokens: int) -> None:
    receiver = make_user("student")
    with ledger.atomic():
        ledger.transfer(sender_id, receiver.id, tokens, key=f"test:gift:{sender_id}:{tokens}")


# Low balance ----------------------------------------------------------------------------


def test_a_student_falling_below_one_hour_is_alerted_once_and_again_after_a_top_up(app):
    with app.app_context():
        cost = ledger.class_cost(60)
        student = make_funded_user(cost + 5, name="Sam Student")
        gift(student.id, 4)  # still one hour's worth
        assert sweep_twice() == 0
        gift(student.id, 2)  # below now
        assert sweep_twice() == 1
        (alert,) = alerts()
        crossing = db.session.scalar(
            select(func.max(Posting.id)).where(Posting.amount < 0, Posting.amount == -2)
        )
        assert alert.rule == "low-balance"
        assert alert.cause == f"low-balance:{student.id}:{crossing}"
        assert (alert.user_id, alert.object_type, alert.object_id) == (
            student.id,
            "user",
            student.id,
        )
        assert alert.message == (
            f"Sam Student has {cost - 1} tokens available, less than one hour of class "
            f"({cost} tokens)."
        )
        gift(student.id, 1)  # lower still: the same fall
        assert sweep_twice() == 0
        fund(student.id, 20)  # topped up...
        gift(student.id, 20)  # ...and below again: a new cause
        assert sweep_twice() == 1
        assert [a.rule for a in alerts()] == ["low-balance", "low-balance"]
        assert len({a.cause for a in alerts()}) == 2


def test_a_teacher_below_one_hour_is_no_low_balance(app):
    with app.app_context():
        teacher = make_funded_user(12, role="teacher")
        gift(teacher.id, 5)
        assert sweep_twice() == 0
        assert alerts() == []


# Purchases ----------------------------------------------------------------------------


def test_a_failed_purchase_is_alerted_once(app):
    with app.app_context():
        student = make_user("student", name="Sam Student")
        chosen = purchase_service.quote(custom_tokens=50)
        started = purchase_service.start(student, chosen, Provider.SANDBOX, "test:fail:1")
        purchase_service.fail(started.id, "sandbox", "The card was declined.")
        assert sweep_twice() == 1
        (alert,) = alerts()
        assert (alert.rule, alert.cause) == ("purchase-failed", f"purchase-failed:{started.id}")
        assert (alert.user_id, alert.object_type, alert.object_id) == (
            student.id,
            "purchase",
            started.id,
        )
        assert alert.message == (
            f"Purchase #{started.id} of $5.00 (Test payment (sandbox)) failed: "
            "The card was declined."
        )


def test_more_than_five_purchases_in_an_hour_is_one_alert_per_hour_of_buying(app):
    shifted = ShiftedClock()
    app.config["SOMA_CLOCK"] = shifted
    with app.app_context():
        student = make_user("student")
        other = make_user("student")
        made = []
        for _ in range(5):
            made.append(paid_purchase(student, tokens=10).id)
            paid_purchase(other, tokens=10)
            shifted.advance(minutes=5)
        assert sweep_twice() == 0  # five is not more than five
        made.append(paid_purchase(student, tokens=10).id)  # the sixth within the hour
        assert sweep_twice() == 1
        (alert,) = alerts("purchase-burst")
        assert alert.cause == f"purchase-burst:{student.id}:{made[-1]}"
        assert (alert.user_id, alert.object_type, alert.object_id) == (
            student.id,
            "purchase",
            made[-1],
        )
        assert alert.message.startswith("6 purchases within an hour by one account")
        shifted.advance(minutes=5)
        paid_purchase(student, tokens=10)  # a seventh: the same spell of buying
        assert sweep_twice() == 0
        shifted.advance(minutes=61)
        for _ in range(6):  # an hour on, six more: a new alert
            latest = paid_purchase(student, tokens=10).id
            shifted.advance(minutes=1)
        assert sweep_twice() == 1
        assert [a.cause for a in alerts("purchase-burst")] == [
            f"purchase-burst:{student.id}:{made[-1]}",
            f"purchase-burst:{student.id}:{latest}",
        ]
        assert all(a.user_id == student.id for a in alerts())


def test_purchases_spread_over_more_than_an_hour_raise_nothing(app):
    shifted = ShiftedClock()
    app.config["SOMA_CLOCK"] = shifted
    with app.app_context():
        student = make_user("student")
        for _ in range(8):
            paid_purchase(student, tokens=10)
            shifted.advance(minutes=13)
        assert sweep_twice() == 0
        assert alerts() == []


def test_a_refund_and_a_dispute_are_each_alerted_once(app):
    with app.app_context():
        student = make_user("student")
        first, second = paid_purchase(student, tokens=50), paid_purchase(student, tokens=50)
        admin = make_user("admin")
        refund = reversals.refund_by_admin(first.id, 200, admin, "refund-key-1")
        dispute = reversals.report(
            second.id, "dp_test_1", reversals.ReversalStatus.OPEN, 500, "stripe:evt_1"
        )
        assert sweep_twice() == 2
        assert [(a.rule, a.cause, a.object_id, a.user_id) for a in alerts()] == [
            ("refund", f"refund:{refund.id}", first.id, student.id),
            ("dispute", f"dispute:{dispute.id}", second.id, student.id),
        ]
        assert alerts()[0].message == (f"A refund of $2.00 on purchase #{first.id} (refunded).")
        # The dispute resolved: the same cause, nothing new.
        reversals.report(second.id, "dp_test_1", reversals.ReversalStatus.WON, 500, "stripe:2")
        assert sweep_twice() == 0


def test_an_unmatched_mpesa_payment_is_alerted_once(app):
    with app.app_context():
        mpesa._keep_unmatched(
            "ws_CO_unknown_1",
            {"MpesaReceiptNumber": "TST123ABC", "Amount": 650, "PhoneNumber": "254712345678"},
        )
        assert sweep_twice() == 1
        (alert,) = alerts()
        assert alert.rule == "mpesa-unmatched"
        assert alert.cause.startswith("mpesa-unmatched:")
        assert (alert.user_id, alert.object_type) == (None, "unmatched_payment")
        assert alert.message == "M-Pesa payment TST123ABC of KES 650 matches no purchase."


# Withdrawals ----------------------------------------------------------------------------


def test_a_withdrawal_soon_after_adding_its_method_is_alerted_once(app):
    with app.app_context():
        teacher = make_teacher(tokens=2000)
        fresh_method = payout_method(teacher, now=clock.now() - timedelta(hours=3))
        old_method = payout_method(teacher, "bank", now=clock.now() - timedelta(days=3))
        soon = make_withdrawal(teacher, 1000, method=fresh_method)
        make_withdrawal(teacher, 1000, method=old_method)
        assert sweep_twice() == 1
        (alert,) = alerts()
        assert (alert.rule, alert.cause) == (
            "withdrawal-new-method",
            f"withdrawal-new-method:{soon.id}",
        )
        assert (alert.user_id, alert.object_type, alert.object_id) == (
            teacher.id,
            "withdrawal",
            soon.id,
        )
        assert alert.message == (
            f"Withdrawal #{soon.id} of $10.00 goes to a payout method added 3 hours before it."
        )


def test_a_withdrawal_above_500_dollars_is_alerted_once(app):
    with app.app_context():
        teacher = make_teacher(tokens=30_000)
        at_limit = make_withdrawal(teacher, 500_00)
        above = make_withdrawal(teacher, 500_01)
        assert sweep_twice() == 1
        (alert,) = alerts()
        assert (alert.rule, alert.cause, alert.object_id) == (
            "withdrawal-large",
            f"withdrawal-large:{above.id}",
            above.id,
        )
        assert alert.message == f"Withdrawal #{above.id} of $500.01 is above $500.00."
        assert at_limit.id != above.id


def test_a_failed_payout_and_one_processing_too_long_are_alerted_once(app):
    with app.app_context():
        teacher = make_teacher(tokens=2000)
        method = payout_method(teacher, "bank", now=clock.now() - timedelta(days=3))
        failing = make_withdrawal(teacher, 1000, method=method)
        stuck = make_withdrawal(teacher, 1200, method=method)
        admin = make_user("admin")
        withdrawal_service.approve(failing.id, admin)
        withdrawal_service.approve(stuck.id, admin)
        withdrawal_service.mark_failed(failing.id, "test", "The bank returned it.")
        assert sweep_twice() == 1
        (failed,) = alerts()
        assert (failed.rule, failed.cause, failed.object_id) == (
            "payout-failed",
            f"payout-failed:{failing.id}",
            failing.id,
        )
        assert failed.message == (
            f"Withdrawal #{failing.id} of $10.00 failed: The bank returned it."
        )
        limit = app.config["WITHDRAWAL_PROCESSING_ALERT_MINUTES"]
        later = clock.now() + timedelta(minutes=limit + 1)
        assert sweep_twice(later) == 1
        assert [(a.rule, a.cause) for a in alerts()] == [
            ("payout-failed", f"payout-failed:{failing.id}"),
            ("withdrawal-stuck", f"withdrawal-stuck:{stuck.id}"),
        ]
        assert alerts()[1].user_id == teacher.id
        processing = withdrawal_service.fresh(stuck.id).processing_at
        assert alerts()[1].message == (
            f"Withdrawal #{stuck.id} of $12.00 has been processing since "
            f"{processing:%d %b %Y, %H:%M} UTC."
        )


# Reading only what is new ---------------------------------------------------------------


def test_each_rule_reads_past_its_watermark_and_keeps_rows_younger_than_the_lag(app):
    with app.app_context():
        student = make_funded_user(50)
        paid_purchase(student, tokens=10)
        now = clock.now()
        raise_alerts(now)
        last_posting = db.session.scalar(select(func.max(Posting.id)))
        last_purchase = db.session.scalar(select(func.max(Purchase.id)))
        # Just written: read again next pass, in case a lower id commits late.
        assert watermark("postings") < last_posting
        raise_alerts(now + LAG + timedelta(seconds=1))
        assert watermark("postings") == last_posting
        assert watermark("purchases") == last_purchase
        assert watermark("purchase_events") > 0


def test_a_backlog_is_read_a_batch_at_a_time(app, monkeypatch):
    monkeypatch.setattr("soma.alert_rules.BATCH", 2)
    with app.app_context():
        cost = ledger.class_cost(60)
        students = [make_funded_user(cost) for _ in range(3)]
        for student in students:
            gift(student.id, 1)
        later = clock.now() + LAG * 2
        raised = [raise_alerts(later) for _ in range(6)]
        assert sum(raised) == 3
        assert raised[0] < 3  # not all in the first pass
        assert {a.user_id for a in alerts()} == {s.id for s in students}
    assert BATCH >= 1000


@pytest.mark.parametrize("rule", ["low-balance", "purchase-failed"])
def test_an_alert_raised_by_hand_is_not_raised_again_by_the_sweeper(app, rule):
    """The unique cause decides: a cause raised elsewhere first is skipped."""
    from soma.alerts import raise_alert

    with app.app_context():
        student = make_funded_user(ledger.class_cost(60))
        if rule == "low-balance":
            gift(student.id, 1)
            posting = db.session.scalar(select(func.max(Posting.id)).where(Posting.amount == -1))
            cause = f"low-balance:{student.id}:{posting}"
        else:
            started = purchase_service.start(
                student, purchase_service.quote(custom_tokens=10), Provider.SANDBOX, "test:f:2"
            )
            purchase_service.fail(started.id, "sandbox", "Declined.")
            cause = f"purchase-failed:{started.id}"
        assert raise_alert(rule, cause, "Raised first elsewhere.")
        db.session.commit()
        assert raise_alerts(clock.now()) == 0
        (alert,) = alerts()
        assert alert.message == "Raised first elsewhere."


# Migration 0020 -------------------------------------------------------------------------


def test_on_a_database_with_history_the_rules_start_from_now(app):
    """Upgraded onto old rows, each watermark starts at its table's last id: the past
    raises nothing, what happens next does; the downgrade takes the watermarks away."""
    import flask_migrate

    from soma.models import Heartbeat

    with app.app_context():
        cost = ledger.class_cost(60)
        old = make_funded_user(cost)
        gift(old.id, 1)  # fell below before alerts existed
        paid_purchase(make_user("student"), tokens=10)
        db.session.remove()  # (no transaction of ours may hold a lock the migration needs)
        flask_migrate.downgrade(revision="0019")
        assert db.session.scalar(select(func.count()).select_from(Heartbeat)) == 0
        flask_migrate.upgrade()
        marks = {h.name: h.detail for h in db.session.scalars(select(Heartbeat))}
        assert marks["alerts:postings"] == str(db.session.scalar(select(func.max(Posting.id))))
        assert marks["alerts:purchases"] == str(db.session.scalar(select(func.max(Purchase.id))))
        assert "alerts:withdrawals" not in marks  # (none yet: read from the start)
        assert all(h.at is not None for h in db.session.scalars(select(Heartbeat)))
        assert raise_alerts(clock.now()) == 0
        new = make_funded_user(cost)
        gift(new.id, 1)
        assert raise_alerts(clock.now()) == 1
        assert [a.user_id for a in alerts()] == [new.id]
