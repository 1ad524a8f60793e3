"""Withdrawals through the service: held at request, paid or given back exactly once, on the
sandbox and bank rails, with the admin's review where it is due."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError

from soma import clock as app_clock
from soma import ledger
from soma.audit import run_audit
from soma.errors import KeyReused
from soma.extensions import db
from soma.models import (
    EntryKind,
    JournalEntry,
    Notification,
    PayoutMethod,
    PlatformAccount,
    Wallet,
    Withdrawal,
    WithdrawalEvent,
)
from soma.payouts import methods, rails, sealing
from soma.payouts import withdrawals as service
from tests.builders import make_teacher, make_user, make_withdrawal, payout_method
from tests.conftest import make_app
from tests.helpers import balances


def platform(code: PlatformAccount) -> int:
    return db.session.scalar(select(func.sum(Wallet.available)).where(Wallet.code == code.value))


def entries_of(withdrawal_id: int) -> list[tuple[str, int]]:
    return [
        tuple(row)
        for row in db.session.execute(
            select(JournalEntry.kind, JournalEntry.tokens)
            .where(
                JournalEntry.reference_type == "withdrawal",
                JournalEntry.reference_id == withdrawal_id,
            )
            .order_by(JournalEntry.id)
        )
    ]


def history(withdrawal_id: int) -> list[tuple]:
    return [
        tuple(row)
        for row in db.session.execute(
            select(WithdrawalEvent.from_status, WithdrawalEvent.to_status, WithdrawalEvent.actor_id)
            .where(WithdrawalEvent.withdrawal_id == withdrawal_id)
            .order_by(WithdrawalEvent.id)
        )
    ]


def notifications_of(user_id: int) -> list[str]:
    return list(
        db.session.scalars(
            select(Notification.kind)
            .where(Notification.user_id == user_id)
            .order_by(Notification.id)
        )
    )


def old_method(teacher, kind="sandbox", **details):
    """A method added a day and a minute ago: no review is due for being new."""
    day_ago = app_clock.now() - timedelta(days=1, minutes=1)
    return payout_method(teacher, kind, now=day_ago, **details)


def test_a_sandbox_withdrawal_holds_its_tokens_and_the_sweeper_pays_it_once(ctx, clock):
    teacher = make_teacher(300)
    fees, redemption = platform(PlatformAccount.FEES), platform(PlatformAccount.REDEMPTION)
    withdrawal = make_withdrawal(teacher, 1000)
    assert (withdrawal.status, withdrawal.tokens, withdrawal.fee_cents, withdrawal.net_cents) == (
        "processing", 250, 50, 950,
    )  # fmt: skip
    assert balances(teacher.id) == (50, 250)
    assert entries_of(withdrawal.id) == [(EntryKind.WITHDRAWAL_HOLD, 250)]
    assert history(withdrawal.id) == [(None, "requested", None), ("requested", "processing", None)]

    assert service.sweep() == 0  # not yet: a few seconds after it started
    clock.advance(seconds=5)
    assert service.sweep() == 1
    paid = service.fresh(withdrawal.id)
    assert (paid.status, paid.provider_reference) == ("paid", f"SANDBOX-{withdrawal.id}")
    assert balances(teacher.id) == (50, 0)
    assert platform(PlatformAccount.FEES) - fees == 12
    assert platform(PlatformAccount.REDEMPTION) - redemption == 238
    assert entries_of(withdrawal.id) == [
        (EntryKind.WITHDRAWAL_HOLD, 250),
        (EntryKind.WITHDRAWAL_PAID, 250),
    ]
    assert notifications_of(teacher.id) == ["withdrawal_paid"]

    # Whatever reports it paid again, nothing more moves.
    assert service.sweep() == 0
    service.mark_paid(withdrawal.id, "sandbox", "SANDBOX-again")
    assert service.fresh(withdrawal.id).provider_reference == f"SANDBOX-{withdrawal.id}"
    assert len(entries_of(withdrawal.id)) == 2
    assert len(history(withdrawal.id)) == 3
    with pytest.raises(service.WithdrawalConflict):
        service.mark_failed(withdrawal.id, "sweeper", "too late")
    assert balances(teacher.id) == (50, 0)
    assert run_audit() == []


def test_a_double_submit_is_one_withdrawal_and_its_key_is_refused_for_another(ctx, clock):
    teacher = make_teacher(1000)
    method = old_method(teacher)
    first = service.request(teacher, method.id, 1000, "form-key-1")
    again = service.request(teacher, method.id, 1000, "form-key-1")
    assert again.id == first.id
    with pytest.raises(KeyReused):
        service.request(teacher, method.id, 1100, "form-key-1")
    other = make_teacher(1000)
    with pytest.raises(service.WithdrawalRefused, match="already used"):
        service.request(other, old_method(other).id, 1000, "form-key-1")
    assert db.session.scalar(select(func.count()).select_from(Withdrawal)) == 1
    assert balances(teacher.id) == (750, 250)
    assert balances(other.id) == (1000, 0)


def test_only_available_tokens_can_be_withdrawn(ctx, clock):
    teacher = make_teacher(249)
    method = old_method(teacher)
    with pytest.raises(service.WithdrawalRefused, match="needs 250 tokens and you have 249"):
        service.request(teacher, method.id, 1000, "short")
    with pytest.raises(service.WithdrawalRefused, match=r"least you can withdraw is \$10.00"):
        service.request(teacher, method.id, 999, "too-little")
    assert db.session.scalar(select(func.count()).select_from(Withdrawal)) == 0
    assert balances(teacher.id) == (249, 0)
    # Tokens held by one withdrawal are not available to the next.
    rich = make_teacher(400)
    make_withdrawal(rich, 1000, old_method(rich))
    with pytest.raises(service.WithdrawalRefused, match="you have 150"):
        service.request(rich, old_method(rich).id, 1000, "second")
    assert balances(rich.id) == (150, 250)


def test_a_bank_withdrawal_waits_for_an_admin_who_marks_it_paid_with_the_reference(ctx, clock):
    teacher, admin = make_teacher(1000), make_user("admin")
    method = old_method(teacher, "bank", number="0123 4567 8901")
    withdrawal = service.request(teacher, method.id, 2501, "bank-1")
    assert (withdrawal.status, withdrawal.review_reason) == ("requested", "")
    assert (withdrawal.tokens, withdrawal.fee_cents, withdrawal.net_cents) == (626, 50, 2451)
    assert service.sweep() == 0  # nothing for the sweeper on a requested one
    with pytest.raises(service.WithdrawalConflict):
        service.mark_paid(withdrawal.id, "admin", "early")  # never approved

    assert service.approve(withdrawal.id, admin) is True
    clock.advance(minutes=10)
    assert service.sweep() == 0  # a bank transfer is sent by hand
    assert service.fresh(withdrawal.id).status == "processing"
    with pytest.raises(service.WithdrawalConflict, match="already processing"):
        service.approve(withdrawal.id, admin)
    paid = service.pay_by_admin(withdrawal.id, admin, " FT-2026-0001 ")
    assert (paid.status, paid.provider_reference) == ("paid", "FT-2026-0001")
    assert history(withdrawal.id) == [
        (None, "requested", None),
        ("requested", "processing", admin.id),
        ("processing", "paid", admin.id),
    ]
    assert balances(teacher.id) == (374, 0)
    assert notifications_of(teacher.id) == ["withdrawal_paid"]
    assert run_audit() == []


def test_a_rejection_gives_the_tokens_back_once_with_the_reason(ctx, clock):
    teacher, admin = make_teacher(1000), make_user("admin")
    withdrawal = service.request(teacher, old_method(teacher, "bank").id, 1000, "reject-me")
    with pytest.raises(service.WithdrawalRefused):
        service.reject(withdrawal.id, admin, "  ")
    rejected = service.reject(withdrawal.id, admin, "The account name does not match.")
    assert (rejected.status, rejected.failure_reason) == (
        "rejected", "The account name does not match.",
    )  # fmt: skip
    assert balances(teacher.id) == (1000, 0)
    service.reject(withdrawal.id, admin, "again")  # a second click: nothing more
    assert entries_of(withdrawal.id) == [
        (EntryKind.WITHDRAWAL_HOLD, 250),
        (EntryKind.WITHDRAWAL_RELEASE, 250),
    ]
    with pytest.raises(service.WithdrawalConflict):
        service.approve(withdrawal.id, admin)
    with pytest.raises(service.WithdrawalConflict):
        service.mark_paid(withdrawal.id, "admin", "x")
    assert notifications_of(teacher.id) == ["withdrawal_rejected"]
    assert run_audit() == []


def test_an_approved_bank_transfer_can_be_rejected_but_a_processing_sandbox_one_cannot(ctx, clock):
    teacher, admin = make_teacher(1000), make_user("admin")
    bank = service.request(teacher, old_method(teacher, "bank").id, 1000, "bank-approved")
    service.approve(bank.id, admin)
    assert service.reject(bank.id, admin, "Bank details bounced.").status == "rejected"
    sandbox = make_withdrawal(teacher, 1000)
    with pytest.raises(service.WithdrawalConflict, match="cannot be marked rejected"):
        service.reject(sandbox.id, admin, "no")
    with pytest.raises(service.WithdrawalConflict, match="paid by its provider"):
        service.pay_by_admin(sandbox.id, admin, "REF")
    assert balances(teacher.id) == (750, 250)


def test_a_failed_payout_gives_the_tokens_back_once(ctx, clock):
    teacher = make_teacher(300)
    withdrawal = make_withdrawal(teacher, 1000)
    failed = service.mark_failed(withdrawal.id, "rail:sandbox", "The provider refused it.")
    assert (failed.status, failed.failure_reason) == ("failed", "The provider refused it.")
    service.mark_failed(withdrawal.id, "rail:sandbox", "The provider refused it.")
    assert balances(teacher.id) == (300, 0)
    assert [kind for kind, _ in entries_of(withdrawal.id)] == [
        EntryKind.WITHDRAWAL_HOLD,
        EntryKind.WITHDRAWAL_RELEASE,
    ]
    clock.advance(seconds=30)
    assert service.sweep() == 0  # a failed one is never paid
    assert notifications_of(teacher.id) == ["withdrawal_failed"]
    assert run_audit() == []


def test_over_500_dollars_waits_for_an_admin_even_on_the_sandbox(ctx, clock):
    teacher, admin = make_teacher(30_000), make_user("admin")
    withdrawal = make_withdrawal(teacher, 50_001)
    assert (withdrawal.status, withdrawal.review_reason) == ("requested", "it is over $500.00")
    assert (withdrawal.tokens, withdrawal.fee_cents) == (12_501, 1000)
    clock.advance(minutes=5)
    assert service.sweep() == 0
    service.approve(withdrawal.id, admin)
    clock.advance(seconds=5)
    assert service.sweep() == 1
    assert service.fresh(withdrawal.id).status == "paid"
    at_limit = make_withdrawal(teacher, 50_000)
    assert (at_limit.status, at_limit.review_reason) == ("processing", "")
    assert run_audit() == []


def test_a_method_added_less_than_a_day_ago_makes_a_withdrawal_wait_for_review(ctx, clock):
    teacher = make_teacher(1000)
    bank = payout_method(teacher, "bank")
    assert methods.is_new(bank)
    waiting = service.request(teacher, bank.id, 1000, "new-bank")
    assert waiting.review_reason == "its payout method was added less than 24 hours ago"
    clock.advance(minutes=24 * 60 + 1)
    assert not methods.is_new(bank)
    later = service.request(teacher, bank.id, 1000, "day-old-bank")
    assert later.review_reason == ""
    # The sandbox moves no money: a new test method is withdrawn to at once.
    other = make_teacher(300)
    at_once = service.request(other, payout_method(other).id, 1000, "new-sandbox")
    assert (at_once.status, at_once.review_reason) == ("processing", "")


def test_another_teachers_withdrawal_and_method_are_not_theirs(ctx, clock):
    owner, other = make_teacher(300), make_teacher(300)
    withdrawal = make_withdrawal(owner, 1000)
    assert service.withdrawal_for(other, withdrawal.id) is None
    assert service.withdrawal_for(owner, withdrawal.id).id == withdrawal.id
    assert service.withdrawal_for(make_user("admin"), withdrawal.id).id == withdrawal.id
    with pytest.raises(service.WithdrawalRefused, match="Choose one of your payout methods"):
        service.request(other, withdrawal.method_id, 1000, "not-my-method")
    with pytest.raises(service.WithdrawalRefused, match="Only teachers"):
        service.request(make_user("student"), withdrawal.method_id, 1000, "student")
    assert balances(other.id) == (300, 0)


def test_one_default_method_per_teacher(ctx, clock):
    teacher = make_teacher()
    first, second = payout_method(teacher), payout_method(teacher, "bank")
    assert (first.is_default, second.is_default) == (True, False)
    methods.make_default(teacher, second.id)
    assert [(m.id, m.is_default) for m in methods.methods_of(teacher)] == [
        (second.id, True),
        (first.id, False),
    ]
    methods.remove(teacher, second.id)
    assert methods.default_of(teacher).id == first.id
    assert methods.method_for(teacher, second.id) is None  # removed: kept, hidden
    assert db.session.get(PayoutMethod, second.id).removed_at is not None
    # The database refuses a second current default, whatever writes it.
    with pytest.raises(IntegrityError):
        db.session.execute(
            text("UPDATE payout_methods SET is_default = true, removed_at = NULL WHERE id = :id"),
            {"id": second.id},
        )
        db.session.flush()
    db.session.rollback()


def test_a_bank_number_is_sealed_at_rest_and_shown_masked(ctx, clock):
    teacher = make_teacher()
    method = payout_method(teacher, "bank", holder="Amina W", bank="KCB", number="1100-2233 4455")
    stored = db.session.execute(
        text("SELECT account_number_sealed, account_last4 FROM payout_methods WHERE id = :id"),
        {"id": method.id},
    ).one()
    assert "11002233" not in stored[0] and "4455" not in stored[0]
    assert stored[1] == "4455"
    assert methods.account_number(method) == "110022334455"
    assert method.masked == "KCB · Amina W · ••••4455"
    with pytest.raises(methods.MethodRefused, match="already one of your"):
        payout_method(teacher, "bank", holder="Amina W", bank="KCB", number="110022334455")
    with pytest.raises(methods.MethodRefused, match="4 to 34 letters and digits"):
        payout_method(teacher, "bank", number="12")
    # Sealed with another key, it cannot be read (nor silently misread).
    db.session.execute(
        text("UPDATE payout_methods SET account_number_sealed = :sealed WHERE id = :id"),
        {"sealed": sealing.Fernet(sealing.Fernet.generate_key()).encrypt(b"1").decode(),
         "id": method.id},
    )  # fmt: skip
    db.session.commit()
    with pytest.raises(sealing.Unreadable):
        methods.account_number(db.session.get(PayoutMethod, method.id))


def test_stripe_and_mpesa_are_not_offered_unless_configured_and_say_so(ctx, clock):
    assert rails.offered_kinds() == ["sandbox", "bank"]
    teacher = make_teacher()
    with pytest.raises(methods.MethodRefused, match="M-Pesa are not available on this site"):
        methods.add_mpesa(teacher, "0712 345 678")
    assert methods.methods_of(teacher) == []


def test_the_sandbox_is_refused_in_production(app):
    production = make_app(
        app.config["SQLALCHEMY_DATABASE_URI"],
        SOMA_ENV="production",
        RATELIMIT_STORAGE_URI="redis://127.0.0.1:6379/0",  # named, never reached here
    )
    with production.app_context():
        teacher = make_teacher(300)
        assert rails.offered_kinds() == ["bank"]
        with pytest.raises(methods.MethodRefused, match="Test payouts are not available"):
            methods.add_sandbox(teacher)
        db.session.remove()


def test_a_withdrawal_processing_past_the_alert_age_is_named_by_the_audit(ctx, clock, app):
    teacher, admin = make_teacher(300), make_user("admin")
    withdrawal = service.request(teacher, old_method(teacher, "bank").id, 1000, "slow-bank")
    service.approve(withdrawal.id, admin)
    app.config["WITHDRAWAL_PROCESSING_ALERT_MINUTES"] = 60
    clock.advance(minutes=59)
    assert run_audit() == []
    clock.advance(minutes=2)
    assert [violation.check for violation in run_audit()] == ["withdrawal-stuck"]
    assert [w.id for w in service.processing_too_long()] == [withdrawal.id]
    service.pay_by_admin(withdrawal.id, admin, "FT-LATE")
    assert run_audit() == []


def test_a_provider_rail_claims_the_one_send_of_a_withdrawal(ctx, clock):
    """The seam a Stripe or M-Pesa rail uses: one send per withdrawal, however many ask."""
    teacher, admin = make_teacher(20_000), make_user("admin")
    waiting = make_withdrawal(teacher, 60_000)
    assert service.claim_send(waiting.id) is False  # not processing yet: nothing to send
    service.approve(waiting.id, admin)
    assert service.claim_send(waiting.id) is True
    assert service.claim_send(waiting.id) is False
    assert service.fresh(waiting.id).submitted_at == app_clock.now()
    service.record_request_id(waiting.id, "tr_123")
    service.record_request_id(waiting.id, "tr_other")  # the first id stays
    assert service.by_request_id("tr_123").id == waiting.id
    assert service.by_request_id("tr_other") is None


def test_flask_soma_sweep_pays_a_sandbox_withdrawal(ctx, clock, runner):
    teacher = make_teacher(300)
    teacher_id, withdrawal_id = teacher.id, make_withdrawal(teacher, 1000).id
    clock.advance(seconds=5)
    result = runner.invoke(args=["soma", "sweep"])  # (it ends the session: ids, not rows)
    assert result.exit_code == 0, result.output
    assert "1 withdrawal(s) finished" in result.output
    assert service.fresh(withdrawal_id).status == "paid"
    assert balances(teacher_id) == (50, 0)


def test_a_withdrawal_whose_rail_is_no_longer_offered_cannot_be_approved(app, ctx, clock):
    teacher, admin = make_teacher(20_000), make_user("admin")
    waiting = make_withdrawal(teacher, 60_000)  # sandbox, over $500: waits for an admin
    app.config["SOMA_ENV"] = "production"  # the sandbox is never offered in production
    with pytest.raises(service.WithdrawalConflict, match="Reject it instead"):
        service.approve(waiting.id, admin)
    assert service.fresh(waiting.id).status == "requested"
    assert service.reject(waiting.id, admin, "Test payouts are off.").status == "rejected"
    assert balances(teacher.id) == (20_000, 0)


def test_the_sweeper_warns_of_a_withdrawal_processing_too_long(app, ctx, clock, runner, caplog):
    teacher, admin = make_teacher(300), make_user("admin")
    withdrawal = service.request(teacher, old_method(teacher, "bank").id, 1000, "warned")
    service.approve(withdrawal.id, admin)
    withdrawal_id = withdrawal.id
    clock.advance(minutes=24 * 60 + 1)
    result = runner.invoke(args=["soma", "sweep"])
    assert result.exit_code == 0, result.output
    assert f"past WITHDRAWAL_PROCESSING_ALERT_MINUTES: {withdrawal_id}" in caplog.text


def test_two_sandbox_withdrawals_to_one_method_are_paid_by_one_sweep(ctx, clock):
    teacher = make_teacher(600)
    method = old_method(teacher)
    first = make_withdrawal(teacher, 1000, method=method)
    second = make_withdrawal(teacher, 1000, method=method)
    assert balances(teacher.id) == (100, 500)
    clock.advance(seconds=5)
    assert service.sweep() == 2  # (it detached their one method once, not twice)
    assert [service.fresh(wid).status for wid in (first.id, second.id)] == ["paid", "paid"]
    assert balances(teacher.id) == (100, 0)
    for withdrawal in (first, second):
        assert entries_of(withdrawal.id) == [
            (EntryKind.WITHDRAWAL_HOLD, 250),
            (EntryKind.WITHDRAWAL_PAID, 250),
        ]
    assert run_audit() == []


def test_a_withdrawal_whose_rail_check_raises_does_not_stop_the_others(
    ctx, clock, monkeypatch, caplog
):
    broken_teacher, teacher = make_teacher(300), make_teacher(300)
    broken = make_withdrawal(broken_teacher, 1000)
    other = make_withdrawal(teacher, 1000)
    broken_id = broken.id
    real_check = rails.SandboxRail.check

    def check(rail, withdrawal, now):
        if withdrawal.id == broken_id:
            raise RuntimeError("the provider answered nonsense")
        return real_check(rail, withdrawal, now)

    monkeypatch.setattr(rails.SandboxRail, "check", check)
    clock.advance(seconds=5)
    assert service.sweep() == 1
    assert f"withdrawal {broken_id} (sandbox) skipped" in caplog.text
    assert service.fresh(other.id).status == "paid"
    assert balances(teacher.id) == (50, 0)
    still = service.fresh(broken_id)
    assert still.status == "processing"  # nothing moved: its tokens stay held
    assert still.checked_at is not None  # asked this pass: the back of the queue next time
    assert balances(broken_teacher.id) == (50, 250)
    assert entries_of(broken_id) == [(EntryKind.WITHDRAWAL_HOLD, 250)]

    monkeypatch.setattr(rails.SandboxRail, "check", real_check)
    assert service.sweep() == 1  # asked again on a later pass, and paid once
    assert service.fresh(broken_id).status == "paid"
    assert balances(broken_teacher.id) == (50, 0)
    assert run_audit() == []


def test_two_approved_bank_transfers_to_one_method_leave_the_sweeper_working(ctx, clock):
    teacher, admin = make_teacher(600), make_user("admin")
    bank = old_method(teacher, "bank")
    for key in ("bank-a", "bank-b"):
        service.approve(service.request(teacher, bank.id, 1000, key).id, admin)
    other_teacher = make_teacher(300)
    sandbox_withdrawal = make_withdrawal(other_teacher, 1000)
    clock.advance(seconds=5)
    assert service.sweep() == 1
    assert service.fresh(sandbox_withdrawal.id).status == "paid"
    assert balances(other_teacher.id) == (50, 0)
    assert balances(teacher.id) == (100, 500)  # the bank transfers wait for an admin


def test_a_request_whose_quote_moved_since_the_confirmation_holds_nothing(ctx, clock):
    teacher = make_teacher(1000)
    method = old_method(teacher)
    quote, _, _ = service.preview(teacher, method.id, 1000)  # what the confirmation showed
    assert quote.tokens == 250
    clock.advance(seconds=1)
    with ledger.atomic():  # a lower teacher rate, published before the teacher confirms
        ledger.publish_pricing("teacher", 10, 20, 10, app_clock.now(), backdate=True)
    with pytest.raises(service.WithdrawalRefused, match="The rate changed") as refused:
        service.request(teacher, method.id, 1000, "moved", confirmed_tokens=quote.tokens)
    assert refused.value.field == "amount"
    assert db.session.scalar(select(func.count()).select_from(Withdrawal)) == 0
    assert balances(teacher.id) == (1000, 0)

    again, _, _ = service.preview(teacher, method.id, 1000)  # reviewed again: held as shown
    made = service.request(teacher, method.id, 1000, "again", confirmed_tokens=again.tokens)
    assert (made.tokens, again.tokens) == (500, 500)
    assert entries_of(made.id) == [(EntryKind.WITHDRAWAL_HOLD, 500)]
    assert balances(teacher.id) == (500, 500)


def test_a_processing_sandbox_withdrawal_stranded_in_production_is_rejected_once(app, ctx, clock):
    teacher, admin = make_teacher(300), make_user("admin")
    withdrawal = make_withdrawal(teacher, 1000)
    assert not service.rejectable(withdrawal)  # while the sandbox pays it, nobody rejects it
    app.config["SOMA_ENV"] = "production"  # the sandbox is never offered, never pays
    clock.advance(seconds=30)
    assert service.sweep() == 0
    assert service.rejectable(service.fresh(withdrawal.id))
    with pytest.raises(service.WithdrawalConflict, match="paid by its provider"):
        service.pay_by_admin(withdrawal.id, admin, "REF")

    rejected = service.reject(withdrawal.id, admin, "Test payouts are off in production.")
    assert (rejected.status, rejected.failure_reason) == (
        "rejected", "Test payouts are off in production.",
    )  # fmt: skip
    assert balances(teacher.id) == (300, 0)
    assert entries_of(withdrawal.id) == [
        (EntryKind.WITHDRAWAL_HOLD, 250),
        (EntryKind.WITHDRAWAL_RELEASE, 250),
    ]
    assert service.reject(withdrawal.id, admin, "again").status == "rejected"  # once
    assert len(entries_of(withdrawal.id)) == 2
    assert balances(teacher.id) == (300, 0)
    assert not service.rejectable(service.fresh(withdrawal.id))
    assert run_audit() == []


@pytest.mark.parametrize("kind", ["stripe", "mpesa"])
def test_a_processing_provider_withdrawal_is_never_rejected_even_when_not_offered(ctx, clock, kind):
    """It may have been sent: only the provider's answer closes it."""
    teacher, admin = make_teacher(300), make_user("admin")
    withdrawal = make_withdrawal(teacher, 1000)
    db.session.execute(  # (as if it had gone to a provider whose settings are gone now)
        update(PayoutMethod).where(PayoutMethod.id == withdrawal.method_id).values(kind=kind)
    )
    db.session.commit()
    assert not rails.rail_for(kind).offered()
    assert not service.rejectable_while_processing(kind)
    assert not service.rejectable(service.fresh(withdrawal.id))
    with pytest.raises(service.WithdrawalConflict, match="cannot be marked rejected"):
        service.reject(withdrawal.id, admin, "stuck")
    assert service.fresh(withdrawal.id).status == "processing"
    assert balances(teacher.id) == (50, 250)
    assert entries_of(withdrawal.id) == [(EntryKind.WITHDRAWAL_HOLD, 250)]
