"""The audit's withdrawal checks: each corruption, made with raw SQL as only someone past the
service could, is named; real withdrawals on every path pass."""

from sqlalchemy import text

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.models import EntryKind
from soma.payouts import withdrawals as service
from tests.builders import make_teacher, make_user, make_withdrawal, payout_method


def checks(violations) -> list[str]:
    return sorted(violation.check for violation in violations)


def every_path(clock) -> dict[str, int]:
    """A paid, a failed, a rejected, a processing and a requested withdrawal."""
    teacher, admin = make_teacher(5000), make_user("admin")
    paid = make_withdrawal(teacher, 1000)
    failed = make_withdrawal(teacher, 1000)
    clock.advance(seconds=5)
    service.mark_failed(failed.id, "rail:sandbox", "Refused.")
    service.sweep()
    bank = payout_method(teacher, "bank")  # new: its withdrawals wait
    rejected = service.request(teacher, bank.id, 1000, "audit-rejected")
    service.reject(rejected.id, admin, "No.")
    requested = service.request(teacher, bank.id, 1500, "audit-requested")
    processing = make_withdrawal(teacher, 2000)
    return {
        "paid": paid.id,
        "failed": failed.id,
        "rejected": rejected.id,
        "requested": requested.id,
        "processing": processing.id,
    }


def test_real_withdrawals_on_every_path_pass(ctx, clock):
    ids = every_path(clock)
    statuses = {name: service.fresh(wid).status for name, wid in ids.items()}
    assert statuses == {name: name for name in ids}
    assert run_audit() == []


def test_a_paid_withdrawal_put_back_to_processing_is_named(ctx, clock):
    ids = every_path(clock)
    db.session.execute(
        text("UPDATE withdrawals SET status = 'processing' WHERE id = :id"), {"id": ids["paid"]}
    )
    db.session.commit()
    violations = run_audit()
    assert checks(violations) == ["withdrawal-fees", "withdrawal-settlement"]
    assert f"withdrawal {ids['paid']} (processing) has 1 paid and 0 release" in str(violations)


def test_a_withdrawal_marked_paid_without_its_ledger_entry_is_named(ctx, clock):
    ids = every_path(clock)
    db.session.execute(
        text("UPDATE withdrawals SET status = 'paid' WHERE id = :id"), {"id": ids["requested"]}
    )
    db.session.commit()
    violations = run_audit()
    assert "withdrawal-settlement" in checks(violations)
    assert f"withdrawal {ids['requested']} (paid) has 0 paid and 0 release" in str(violations)


def test_a_withdrawal_whose_tokens_are_not_what_was_held_is_named(ctx, clock):
    ids = every_path(clock)
    db.session.execute(
        text("UPDATE withdrawals SET tokens = tokens + 1 WHERE id = :id"), {"id": ids["rejected"]}
    )
    db.session.commit()
    violations = run_audit()
    assert checks(violations) == ["withdrawal-settlement", "withdrawal-settlement"]
    assert f"withdrawal {ids['rejected']} (rejected) should hold 251 tokens" in str(violations)


def test_a_paid_withdrawals_fee_not_what_went_to_the_fees_account_is_named(ctx, clock):
    ids = every_path(clock)
    db.session.execute(
        text("UPDATE withdrawals SET fee_tokens = 13 WHERE id = :id"), {"id": ids["paid"]}
    )
    db.session.commit()
    violations = run_audit()
    assert checks(violations) == ["withdrawal-fees", "withdrawal-settlement"]
    assert "the fees account received 12 tokens from payouts" in str(violations)


def test_an_entry_naming_a_withdrawal_that_does_not_exist_is_named(ctx, clock):
    every_path(clock)
    teacher = make_teacher(100)
    with ledger.atomic():
        ledger.hold(
            teacher.id,
            10,
            key="stray",
            kind=EntryKind.WITHDRAWAL_HOLD,
            reference=("withdrawal", 999),
        )
    violations = run_audit()
    assert checks(violations) == ["withdrawal-settlement"]
    assert "name withdrawal 999, which does not exist" in str(violations)


def test_an_entry_of_another_kind_naming_a_withdrawal_is_named(ctx, clock):
    ids = every_path(clock)
    teacher = make_teacher(100)
    with ledger.atomic():
        ledger.credit(teacher.id, 5, key="odd", reference=("withdrawal", ids["processing"]))
    violations = run_audit()
    assert "withdrawal-settlement" in checks(violations)
    assert f"withdrawal {ids['processing']} is named by a purchase entry" in str(violations)


def test_a_withdrawal_naming_another_closing_entry_is_named(ctx, clock):
    ids = every_path(clock)
    db.session.execute(
        text("UPDATE withdrawals SET closed_entry_id = hold_entry_id WHERE id = :id"),
        {"id": ids["failed"]},
    )
    db.session.commit()
    violations = run_audit()
    assert checks(violations) == ["withdrawal-settlement"]
    assert f"withdrawal {ids['failed']} (failed) says entry" in str(violations)
