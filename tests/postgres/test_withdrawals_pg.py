"""Withdrawals on PostgreSQL: admins, the sweeper and double submits racing for one withdrawal."""

import threading
from datetime import timedelta

from sqlalchemy import func, select

from soma import clock
from soma.audit import run_audit
from soma.extensions import db
from soma.models import JournalEntry, PayoutMethod, User, Withdrawal, WithdrawalEvent
from soma.payouts import methods, stripe_events
from soma.payouts import withdrawals as service
from soma.providers import stripe_connect
from tests.builders import make_teacher, make_user, payout_method
from tests.helpers import balances, errors, ok, race


def events_of(withdrawal_id: int) -> list[tuple[str | None, str]]:
    return [
        tuple(row)
        for row in db.session.execute(
            select(WithdrawalEvent.from_status, WithdrawalEvent.to_status)
            .where(WithdrawalEvent.withdrawal_id == withdrawal_id)
            .order_by(WithdrawalEvent.id)
        )
    ]


def entries_of(withdrawal_id: int) -> list[str]:
    return list(
        db.session.scalars(
            select(JournalEntry.kind)
            .where(
                JournalEntry.reference_type == "withdrawal",
                JournalEntry.reference_id == withdrawal_id,
            )
            .order_by(JournalEntry.id)
        )
    )


def big_sandbox_withdrawal(app) -> tuple[int, int, list[int]]:
    """A sandbox withdrawal over $500 (so it waits for an admin), and five admins."""
    with app.app_context():
        teacher = make_teacher(20_000)
        method = payout_method(teacher, now=clock.now() - timedelta(days=2))
        withdrawal = service.request(teacher, method.id, 60_000, "pg-big")
        admins = [make_user("admin").id for _ in range(5)]
        return withdrawal.id, teacher.id, admins


def test_five_admins_approving_at_once_send_one_payout(app, wide_app):
    withdrawal_id, teacher_id, admin_ids = big_sandbox_withdrawal(app)

    def approve_as(admin_id: int):
        return service.approve(withdrawal_id, db.session.get(User, admin_id))

    outcomes = race(wide_app, [lambda a=a: approve_as(a) for a in admin_ids])
    assert ok(outcomes) == [True]  # one moved it, and only that one asked its rail to send
    assert [type(error).__name__ for error in errors(outcomes)] == ["WithdrawalConflict"] * 4
    with app.app_context():
        assert events_of(withdrawal_id) == [(None, "requested"), ("requested", "processing")]
        actors = db.session.scalars(
            select(func.count(WithdrawalEvent.actor_id)).where(
                WithdrawalEvent.withdrawal_id == withdrawal_id
            )
        ).one()
        assert actors == 1
        # The sweeper, twice at once, pays it once.
        later = clock.now() + timedelta(seconds=10)
    wide_app.config["SOMA_CLOCK"] = lambda: later
    swept = race(wide_app, [service.sweep, service.sweep, service.sweep])
    assert errors(swept) == []
    assert sum(ok(swept)) >= 1
    with app.app_context():
        assert entries_of(withdrawal_id) == ["withdrawal_hold", "withdrawal_paid"]
        assert db.session.get(Withdrawal, withdrawal_id).status == "paid"
        assert balances(teacher_id) == (20_000 - 15_000, 0)
        assert run_audit() == []


def test_an_approval_racing_a_rejection_ends_one_way_with_the_tokens_right(app, wide_app):
    withdrawal_id, teacher_id, admin_ids = big_sandbox_withdrawal(app)

    def approve():
        return service.approve(withdrawal_id, db.session.get(User, admin_ids[0]))

    def reject():
        return service.reject(withdrawal_id, db.session.get(User, admin_ids[1]), "Too big.")

    outcomes = race(wide_app, [approve, reject, approve, reject])
    assert len(ok(outcomes)) >= 1
    with app.app_context():
        status = db.session.get(Withdrawal, withdrawal_id).status
        assert status in ("processing", "rejected")
        if status == "rejected":
            assert entries_of(withdrawal_id) == ["withdrawal_hold", "withdrawal_release"]
            assert balances(teacher_id) == (20_000, 0)
        else:
            assert entries_of(withdrawal_id) == ["withdrawal_hold"]
            assert balances(teacher_id) == (5_000, 15_000)
        assert len(events_of(withdrawal_id)) == 2
        assert run_audit() == []


def test_a_confirmation_sent_five_times_at_once_is_one_withdrawal(app, wide_app):
    with app.app_context():
        teacher = make_teacher(1000)
        method = payout_method(teacher, now=clock.now() - timedelta(days=2))
        teacher_id, method_id = teacher.id, method.id

    def submit():
        return service.request(db.session.get(User, teacher_id), method_id, 1000, "pg-double").id

    outcomes = race(wide_app, [submit] * 5)
    assert errors(outcomes) == []
    assert len(set(ok(outcomes))) == 1
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Withdrawal)) == 1
        assert balances(teacher_id) == (750, 250)
        assert run_audit() == []


STRIPE_SETTINGS = {
    "STRIPE_SECRET_KEY": "sk_test_soma",
    "STRIPE_WEBHOOK_SECRET": "whsec_test_soma",
    "STRIPE_CONNECT_WEBHOOK_SECRET": "whsec_connect_pg",
}


def stripe_withdrawal_waiting_for_balance(app, wide_app, fake_stripe) -> tuple[int, int]:
    """A Stripe withdrawal left processing by a short platform balance."""
    for each in (app, wide_app):
        each.config.update(STRIPE_API_BASE=fake_stripe.url, **STRIPE_SETTINGS)
    fake_stripe.platform_available = 0
    with app.app_context():
        teacher = make_teacher(2_000)
        methods.connect_stripe(
            teacher, "https://x/r", "https://x/b", now=clock.now() - timedelta(days=2), country="US"
        )
        method = methods.stripe_method(teacher)
        fake_stripe.update_account(method.stripe_account_id, transfers="active")
        stripe_events.store(
            method.id, stripe_connect.retrieve_account(method.stripe_account_id), clock.now()
        )
        withdrawal = service.request(teacher, method.id, 1_000, "pg-stripe")
        assert service.fresh(withdrawal.id).send_state == "balance"
        return withdrawal.id, teacher.id


def test_sweepers_racing_after_a_top_up_make_one_transfer(app, wide_app, fake_stripe):
    withdrawal_id, _ = stripe_withdrawal_waiting_for_balance(app, wide_app, fake_stripe)
    fake_stripe.platform_available = 10_000_000
    with app.app_context():
        later = clock.now() + timedelta(minutes=6)
    wide_app.config["SOMA_CLOCK"] = lambda: later
    swept = race(wide_app, [service.sweep] * 4)
    assert errors(swept) == []
    assert len(fake_stripe.made_transfers) == 1
    with app.app_context():
        withdrawal = service.fresh(withdrawal_id)
        assert (withdrawal.status, withdrawal.attempt) == ("paid", 2)
        assert entries_of(withdrawal_id) == ["withdrawal_hold", "withdrawal_paid"]
        assert run_audit() == []


def test_a_reversal_reported_at_once_by_several_events_gives_the_tokens_back_once(
    app, wide_app, fake_stripe
):
    withdrawal_id, teacher_id = stripe_withdrawal_waiting_for_balance(app, wide_app, fake_stripe)
    fake_stripe.platform_available = 10_000_000
    with app.app_context():
        before = balances(teacher_id)
        service.sweep(clock.now() + timedelta(minutes=6))
        paid = service.fresh(withdrawal_id)
        assert paid.status == "paid"
    transfer = fake_stripe.reverse_transfer(paid.provider_reference)

    def report(n: int):
        return stripe_events.transfer_event("transfer.reversed", transfer, f"stripe:evt_{n}")

    outcomes = race(wide_app, [lambda n=n: report(n) for n in range(4)])
    assert errors(outcomes) == []
    with app.app_context():
        assert entries_of(withdrawal_id) == ["withdrawal_hold", "withdrawal_paid", "adjustment"]
        assert balances(teacher_id) == (before[0] + paid.tokens, 0)
        assert run_audit() == []


def at_once(app, work, count: int = 4) -> list:
    """Run `work(user)` in `count` threads released together; their results or errors."""
    barrier = threading.Barrier(count)
    outcomes: list = [None] * count

    def run(index: int, user_id: int) -> None:
        with app.app_context():
            db.session.connection()
            barrier.wait(timeout=20)
            try:
                outcomes[index] = work(db.session.get(User, user_id))
            except Exception as error:
                outcomes[index] = error
            finally:
                db.session.remove()

    with app.app_context():
        user_id = make_teacher(0).id
    threads = [threading.Thread(target=run, args=(i, user_id)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return user_id, outcomes


def test_clicks_at_once_on_connect_with_stripe_make_one_method_and_one_account(
    app, wide_app, fake_stripe
):
    wide_app.config.update(STRIPE_API_BASE=fake_stripe.url, **STRIPE_SETTINGS)
    user_id, urls = at_once(
        wide_app,
        lambda teacher: methods.connect_stripe(teacher, "https://x/r", "https://x/b", country="US"),
    )
    assert all(isinstance(url, str) for url in urls), urls
    assert len(fake_stripe.accounts) == 1
    (account_id,) = fake_stripe.accounts
    assert all(account_id in url for url in urls)  # every click onboards the same account
    with app.app_context():
        made = db.session.scalars(select(PayoutMethod).where(PayoutMethod.user_id == user_id))
        assert [(m.kind, m.stripe_account_id, m.is_default) for m in made] == [
            ("stripe", account_id, True)
        ]


def test_a_sandbox_method_added_four_times_at_once_is_one_method(app, wide_app):
    user_id, added = at_once(wide_app, lambda teacher: methods.add_sandbox(teacher).id)
    assert len(set(added)) == 1, added
    with app.app_context():
        made = db.session.scalars(select(PayoutMethod).where(PayoutMethod.user_id == user_id))
        assert [(m.kind, m.is_default) for m in made] == [("sandbox", True)]
