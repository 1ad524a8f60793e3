"""The audit's withdrawal checks: each corruption, made with raw SQL as only someone past the
service could, is named; real withdrawals on every path pass."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.ledger.pricing import publish_pricing
from soma.models import Bucket, EntryKind, Posting, PricingUserType, Wallet
from soma.payouts import withdrawals as service
from tests.builders import make_teacher, make_user, make_withdrawal, payout_method

# Every audit here runs twice: full, and incremental from a checkpoint of the new database.
pytestmark = pytest.mark.usefixtures("audit_mode")


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
    assert checks(violations) == [
        "withdrawal-fees",
        "withdrawal-hold-closed",
        "withdrawal-settlement",
    ]
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
    assert checks(violations) == [
        "withdrawal-amounts",
        "withdrawal-owner",
        "withdrawal-settlement",
        "withdrawal-settlement",
    ]
    assert f"withdrawal {ids['rejected']} (rejected) should hold 251 tokens" in str(violations)


def test_a_paid_withdrawals_fee_not_what_went_to_the_fees_account_is_named(ctx, clock):
    ids = every_path(clock)
    db.session.execute(
        text("UPDATE withdrawals SET fee_tokens = 13 WHERE id = :id"), {"id": ids["paid"]}
    )
    db.session.commit()
    violations = run_audit()
    assert checks(violations) == ["withdrawal-amounts", "withdrawal-fees", "withdrawal-settlement"]
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
    assert checks(violations) == ["withdrawal-hold-closed", "withdrawal-settlement"]
    assert f"withdrawal {ids['failed']} (failed) says entry" in str(violations)


# The checks of each withdrawal's amounts, owner and hold -------------------------------------


def allow_edits(*tables: str) -> None:
    """Let this transaction edit append-only `tables`, as someone with the database could:
    on SQLite drop their UPDATE triggers; on PostgreSQL switch triggers off until it ends."""
    if db.session.connection().dialect.name == "postgresql":
        db.session.execute(text("SET LOCAL session_replication_role = replica"))
        return
    for table in tables:
        db.session.execute(text(f"DROP TRIGGER {table}_append_only_update"))


def every_status(clock) -> dict[str, int]:
    """`every_path`, and a paid withdrawal whose payout came back (reversed)."""
    ids = every_path(clock)
    reversed_ = make_withdrawal(make_teacher(1000), 1000)
    service.mark_paid(reversed_.id, "rail:sandbox", "sandbox-ref")
    assert service.reverse_paid(reversed_.id, "r1", "test", "Came back.")
    return ids | {"reversed": reversed_.id}


def test_real_withdrawals_of_every_status_pass_the_new_checks(ctx, clock):
    ids = every_status(clock)
    statuses = {name: service.fresh(wid).status for name, wid in ids.items()}
    assert statuses == {name: name for name in ids} | {"reversed": "paid"}
    assert service.fresh(ids["reversed"]).reversed_at is not None
    assert run_audit() == []


def repriced(clock) -> tuple[int, int]:
    """A withdrawal at the first teacher rate (4 ¢ a token), then a new rate (5 ¢) and one
    made at it. (The clock is moved past the real time first: the ledger's builders
    credit at the real time, and those entries must stay at the first rate.)"""
    teacher = make_teacher(3000)
    before = make_withdrawal(teacher, 1001)
    service.mark_paid(before.id, "rail:sandbox", "sandbox-ref")  # (not left processing)
    clock.now = max(clock.now, datetime.now(UTC)) + timedelta(hours=1)
    publish_pricing(PricingUserType.TEACHER, 10, 50, 100, clock.now, backdate=True)
    db.session.commit()
    clock.advance(seconds=5)
    after = make_withdrawal(teacher, 1001)
    return before.id, after.id


def test_amounts_are_checked_at_the_rate_in_force_when_made(ctx, clock):
    before, after = repriced(clock)
    assert (service.fresh(before).tokens, service.fresh(before).fee_tokens) == (251, 12)
    assert (service.fresh(after).tokens, service.fresh(after).fee_tokens) == (201, 10)
    assert run_audit() == []


def test_a_withdrawal_dated_before_the_rate_it_was_priced_at_is_named(ctx, clock):
    before, after = repriced(clock)
    db.session.execute(
        text("UPDATE withdrawals SET created_at = (SELECT created_at FROM withdrawals "
             "WHERE id = :before) WHERE id = :after"),
        {"before": before, "after": after},
    )  # fmt: skip
    db.session.commit()
    violations = run_audit()
    assert checks(violations) == ["withdrawal-amounts"]
    assert f"withdrawal {after} of 1001 cents says fee 50, net 951, 201 tokens (10 " in str(
        violations
    )
    assert "make them fee 50, net 951, 251 tokens (12 for the fee)" in str(violations)


def test_dollars_raised_with_the_tokens_left_alone_are_named(ctx, clock):
    ids = every_status(clock)
    db.session.execute(
        text("UPDATE withdrawals SET usd_cents = 100000, net_cents = 99950 WHERE id = :id"),
        {"id": ids["processing"]},
    )
    db.session.commit()
    violations = run_audit()
    assert checks(violations) == ["withdrawal-amounts"]
    assert f"withdrawal {ids['processing']} of 100000 cents says fee 50" in str(violations)
    assert "fee 2000, net 98000, 25000 tokens" in str(violations)


def test_a_fee_waived_is_named(ctx, clock):
    ids = every_status(clock)
    db.session.execute(
        text("UPDATE withdrawals SET fee_cents = 1, net_cents = 1499 WHERE id = :id"),
        {"id": ids["requested"]},
    )
    db.session.commit()
    violations = run_audit()
    assert checks(violations) == ["withdrawal-amounts"]
    assert f"withdrawal {ids['requested']} of 1500 cents says fee 1, net 1499" in str(violations)


def test_a_withdrawal_sent_to_another_teachers_method_is_named(ctx, clock):
    ids = every_status(clock)
    thief = make_teacher(0)
    other = payout_method(thief, "bank", number="99887766")
    db.session.execute(
        text("UPDATE withdrawals SET method_id = :m WHERE id = :id"),
        {"id": ids["requested"], "m": other.id},
    )
    db.session.commit()
    violations = run_audit()
    assert checks(violations) == ["withdrawal-owner"]
    assert f"is sent to payout method {other.id}, which is user {thief.id}'s" in str(violations)


def test_a_withdrawal_handed_to_another_teacher_is_named(ctx, clock):
    ids = every_status(clock)
    thief = make_teacher(0)
    db.session.execute(
        text("UPDATE withdrawals SET user_id = :u WHERE id = :id"),
        {"id": ids["processing"], "u": thief.id},
    )
    db.session.commit()
    violations = run_audit()
    assert checks(violations) == ["withdrawal-owner", "withdrawal-owner"]
    assert f"withdrawal {ids['processing']} of user {thief.id} holds" in str(violations)


def test_a_hold_locking_another_wallets_tokens_is_named(ctx, clock):
    ids = every_status(clock)
    thief = make_teacher(0)
    hold_id = service.fresh(ids["requested"]).hold_entry_id
    thief_wallet = db.session.scalar(select(Wallet.id).where(Wallet.user_id == thief.id))
    allow_edits("postings")
    db.session.execute(
        text("UPDATE postings SET wallet_id = :w WHERE entry_id = :e AND bucket = :b"),
        {"w": thief_wallet, "e": hold_id, "b": Bucket.LOCKED.value},
    )
    db.session.commit()
    violations = run_audit()
    assert "withdrawal-owner" in checks(violations)
    assert "but its hold has 1 locked posting(s), locking 0 on that user's" in str(violations)


def test_a_hold_taking_another_wallets_available_tokens_is_named(ctx, clock):
    ids = every_status(clock)
    thief = make_teacher(0)
    hold_id = service.fresh(ids["processing"]).hold_entry_id
    thief_wallet = db.session.scalar(select(Wallet.id).where(Wallet.user_id == thief.id))
    allow_edits("postings")
    db.session.execute(
        text("UPDATE postings SET wallet_id = :w WHERE entry_id = :e AND bucket = :b"),
        {"w": thief_wallet, "e": hold_id, "b": Bucket.AVAILABLE.value},
    )
    db.session.commit()
    violations = run_audit()
    assert "withdrawal-owner" in checks(violations)
    assert (
        f"withdrawal {ids['processing']} of user {service.fresh(ids['processing']).user_id} "
        "holds 500 tokens, but its hold has 1 locked posting(s), locking 500 on that user's "
        "wallet, and 1 posting(s) on other wallets"
    ) in str(violations)


def test_a_hold_locking_other_tokens_is_named(ctx, clock):
    ids = every_status(clock)
    hold_id = service.fresh(ids["requested"]).hold_entry_id
    allow_edits("postings")
    db.session.execute(
        text("UPDATE postings SET amount = amount - 1 WHERE entry_id = :e AND bucket = :b"),
        {"e": hold_id, "b": Bucket.LOCKED.value},
    )
    db.session.commit()
    violations = run_audit()
    assert "withdrawal-owner" in checks(violations)
    assert f"withdrawal {ids['requested']} of user" in str(violations)
    locked = db.session.scalar(
        select(Posting.amount).where(Posting.entry_id == hold_id, Posting.bucket == "locked")
    )
    assert f"locking {locked} on that user's wallet" in str(violations)


def test_an_open_withdrawals_hold_closed_by_an_entry_naming_nothing_is_named(ctx, clock):
    ids = every_status(clock)
    hold_id = service.fresh(ids["requested"]).hold_entry_id
    with ledger.atomic():
        ledger.release(hold_id, key="sneaky", kind=EntryKind.WITHDRAWAL_RELEASE)
    violations = run_audit()
    assert checks(violations) == ["withdrawal-hold-closed"]
    assert f"withdrawal {ids['requested']} (requested) is open, but its hold" in str(violations)
    assert "naming None None" in str(violations)


def test_an_open_withdrawal_saying_it_was_closed_is_named(ctx, clock):
    ids = every_status(clock)
    db.session.execute(
        text("UPDATE withdrawals SET closed_entry_id = hold_entry_id WHERE id = :id"),
        {"id": ids["processing"]},
    )
    db.session.commit()
    violations = run_audit()
    assert checks(violations) == ["withdrawal-hold-closed", "withdrawal-settlement"]
    assert f"withdrawal {ids['processing']} (processing) is open" in str(violations)


def test_a_closing_entry_naming_another_withdrawal_is_named(ctx, clock):
    ids = every_status(clock)
    closed_by = service.fresh(ids["failed"]).closed_entry_id
    allow_edits("journal_entries")
    db.session.execute(
        text("UPDATE journal_entries SET reference_id = :other WHERE id = :e"),
        {"e": closed_by, "other": ids["rejected"]},
    )
    db.session.commit()
    violations = run_audit()
    assert "withdrawal-hold-closed" in checks(violations)
    assert f"withdrawal {ids['failed']} (failed) says entry {closed_by} closed its hold" in str(
        violations
    )
    assert f"naming withdrawal {ids['rejected']}" in str(violations)


def test_a_finished_withdrawals_hold_closed_by_the_wrong_kind_is_named(ctx, clock):
    ids = every_status(clock)
    closed_by = service.fresh(ids["rejected"]).closed_entry_id
    allow_edits("journal_entries")
    db.session.execute(
        text("UPDATE journal_entries SET kind = :k WHERE id = :e"),
        {"e": closed_by, "k": EntryKind.WITHDRAWAL_PAID.value},
    )
    db.session.commit()
    violations = run_audit()
    assert "withdrawal-hold-closed" in checks(violations)
    assert f"closed by withdrawal_paid entry {closed_by}" in str(violations)


def test_a_withdrawal_marked_reversed_that_was_not_paid_is_named(ctx, clock):
    ids = every_status(clock)
    db.session.execute(
        text("UPDATE withdrawals SET reversed_at = finished_at WHERE id = :id"),
        {"id": ids["failed"]},
    )
    db.session.commit()
    violations = run_audit()
    assert checks(violations) == ["withdrawal-hold-closed"]
    assert f"withdrawal {ids['failed']} (failed) is marked reversed" in str(violations)


def test_a_reversed_withdrawal_put_back_to_processing_is_named(ctx, clock):
    ids = every_status(clock)
    db.session.execute(
        text("UPDATE withdrawals SET status = 'processing', closed_entry_id = NULL WHERE id = :id"),
        {"id": ids["reversed"]},
    )
    db.session.commit()
    violations = run_audit()
    assert "withdrawal-hold-closed" in checks(violations)
    assert f"withdrawal {ids['reversed']} (processing) is marked reversed" in str(violations)
    assert f"withdrawal {ids['reversed']} (processing) is open, but its hold" in str(violations)


def settlement(violations) -> list[str]:
    return [v.detail for v in violations if v.check == "withdrawal-settlement"]


def test_a_payout_sending_its_tokens_to_another_account_is_named(ctx, clock):
    ids = every_status(clock)
    paid = service.fresh(ids["paid"])
    issuance = db.session.scalar(
        select(Wallet.id).where(Wallet.code == "issuance", Wallet.shard == 0)
    )
    allow_edits("postings")
    db.session.execute(
        text(
            "UPDATE postings SET wallet_id = :issuance, seq = seq + 1000000 "
            "WHERE entry_id = :entry AND wallet_id IN "
            "(SELECT id FROM wallets WHERE code = 'redemption')"
        ),
        {"issuance": issuance, "entry": paid.closed_entry_id},
    )
    db.session.commit()
    [found] = settlement(run_audit())
    net = paid.tokens - paid.fee_tokens
    assert found.startswith(
        f"withdrawal {paid.id} (paid): payout entry {paid.closed_entry_id} sent {{"
    )
    assert f"'issuance': {net}" in found and f"'fees': {paid.fee_tokens}" in found
    assert found.endswith(
        f"}} to the platform, not {{'redemption': {net}, 'fees': {paid.fee_tokens}}}"
    )


def test_a_reversal_giving_the_tokens_back_to_someone_else_is_named(ctx, clock):
    ids = every_status(clock)
    withdrawal = service.fresh(ids["reversed"])
    reversal = db.session.scalar(
        select(Posting.entry_id)
        .join(Wallet, Wallet.id == Posting.wallet_id)
        .where(Wallet.user_id == withdrawal.user_id, Posting.kind == EntryKind.ADJUSTMENT.value)
    )
    stranger = make_user("student")
    elsewhere = db.session.scalar(select(Wallet.id).where(Wallet.user_id == stranger.id))
    allow_edits("postings")
    db.session.execute(
        text(
            "UPDATE postings SET wallet_id = :elsewhere WHERE entry_id = :entry AND wallet_id = "
            "(SELECT id FROM wallets WHERE user_id = :teacher)"
        ),
        {"elsewhere": elsewhere, "entry": reversal, "teacher": withdrawal.user_id},
    )
    db.session.commit()
    [found] = settlement(run_audit())
    assert found.startswith(f"withdrawal {withdrawal.id} (paid): reversal entry {reversal} moves ")
    assert f"'user:{stranger.id}:available': {withdrawal.tokens}" in found
    assert found.endswith(
        f"({withdrawal.tokens} tokens), not {{'user:{withdrawal.user_id}:available': "
        f"{withdrawal.tokens}, 'redemption': {-(withdrawal.tokens - withdrawal.fee_tokens)}, "
        f"'fees': {-withdrawal.fee_tokens}}}"
    )
