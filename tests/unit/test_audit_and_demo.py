"""`flask soma audit` proves the ledger's invariants; `flask soma demo` seeds a bonus and the
demo teacher's past year once, and leaves the audit clean."""

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text
from werkzeug.security import generate_password_hash

from soma import ledger
from soma.audit import Violation, run_audit
from soma.earnings.service import earnings_of
from soma.extensions import db
from soma.models import (
    ClassSession,
    EntryKind,
    JournalEntry,
    Notification,
    PlatformAccount,
    Posting,
    User,
    Wallet,
)
from tests.helpers import make_user

# Every audit here runs twice: full, and incremental from a checkpoint of the new database.
pytestmark = pytest.mark.usefixtures("audit_mode")


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch):
    """Passwords play no part here: hash them in one round so that users build fast."""
    monkeypatch.setattr(
        "soma.models.user.generate_password_hash",
        lambda password: generate_password_hash(password, method="pbkdf2:sha256:1"),
    )


def wallet_of(user_id: int) -> Wallet:
    return db.session.scalar(select(Wallet).where(Wallet.user_id == user_id))


def platform(code: str) -> int:
    return db.session.scalar(select(func.sum(Wallet.available)).where(Wallet.code == code))


def checks(violations: list[Violation]) -> set[str]:
    return {violation.check for violation in violations}


def busy_ledger() -> tuple[int, int, int]:
    """A student, a teacher and a second student after one of every money operation."""
    student, teacher, friend = (make_user(role).id for role in ("student", "teacher", "student"))
    db.session.commit()
    with ledger.atomic():
        ledger.credit(student, 50, key="buy")
        ledger.credit(
            student, 10, key="bonus", kind=EntryKind.BONUS, source=PlatformAccount.PROMOTIONS
        )
        first = ledger.hold(student, 10, key="hold:1")
        second = ledger.hold(student, 10, key="hold:2")
    with ledger.atomic():
        ledger.settle(first.id, 7, key="settle:1", to_user_id=teacher)
        ledger.release(second.id, key="release:2")
        ledger.transfer(student, friend, 5, key="gift")
        ledger.debit(friend, 2, key="refund")
        withdrawal = ledger.hold(teacher, 7, key="withdraw", kind=EntryKind.WITHDRAWAL_HOLD)
    with ledger.atomic():
        ledger.settle(
            withdrawal.id,
            7,
            key="paid",
            to_platform=PlatformAccount.REDEMPTION,
            kind=EntryKind.WITHDRAWAL_PAID,
        )
    return student, teacher, friend


def test_audit_passes_on_a_new_ledger(ctx, runner):
    assert run_audit() == []
    result = runner.invoke(args=["soma", "audit"])
    assert result.exit_code == 0, result.output
    assert "Audit passed" in result.stdout


def test_audit_passes_after_every_kind_of_money_operation(ctx, runner):
    student, teacher, friend = busy_ledger()
    assert (wallet_of(student).available, wallet_of(student).locked) == (48, 0)
    assert (wallet_of(teacher).available, wallet_of(friend).available) == (0, 3)

    assert run_audit() == []
    result = runner.invoke(args=["soma", "audit"])
    assert result.exit_code == 0, result.output
    assert "Audit passed" in result.stdout
    assert result.stderr == ""


def test_audit_names_a_wallet_whose_balance_does_not_match_its_postings(ctx, runner):
    student, _, _ = busy_ledger()
    wallet_id = wallet_of(student).id
    db.session.execute(
        text("UPDATE wallets SET available = available + 7 WHERE user_id = :id"), {"id": student}
    )
    db.session.commit()

    violations = run_audit()
    assert violations == [
        Violation(
            "balance-mismatch",
            f"wallet {wallet_id} (user {student}) holds 55 available and 0 locked, "
            "but its postings sum to 48 and 0",
        )
    ]

    result = runner.invoke(args=["soma", "audit"])
    assert result.exit_code == 1
    assert "Audit FAILED: 1 violation(s)" in result.stderr
    assert f"balance-mismatch: wallet {wallet_id} (user {student})" in result.stderr
    assert "Audit passed" not in result.output


@pytest.mark.backends("sqlite")  # SQLite's own trigger names and PRAGMA
def test_audit_names_an_unbalanced_entry(ctx, runner):
    """Postings are append-only, so the corruption first needs the trigger gone."""
    student, _, _ = busy_ledger()
    wallet_id = wallet_of(student).id
    entry_id = db.session.scalar(
        select(JournalEntry.id).where(JournalEntry.idempotency_key == "buy")
    )
    db.session.execute(text("DROP TRIGGER postings_append_only_update"))
    db.session.execute(
        text("UPDATE postings SET amount = amount + 1 WHERE entry_id = :e AND wallet_id = :w"),
        {"e": entry_id, "w": wallet_id},
    )
    db.session.commit()

    violations = run_audit()
    assert Violation("entry-unbalanced", f"entry {entry_id} postings sum to 1, not 0") in violations
    # The student's posting now says 51 tokens came in, so the entry's 50 disagree too,
    # and the posting no longer hashes to its link in the wallet's chain.
    assert checks(violations) == {
        "entry-unbalanced",
        "balance-mismatch",
        "entry-tokens-mismatch",
        "posting-chain",
    }
    assert any(f"wallet {wallet_id} (user {student})" in v.detail for v in violations)

    result = runner.invoke(args=["soma", "audit"])
    assert result.exit_code == 1
    assert "Audit FAILED: 4 violation(s)" in result.stderr
    assert f"entry-unbalanced: entry {entry_id} postings sum to 1, not 0" in result.stderr


@pytest.mark.backends("sqlite")  # SQLite's own trigger names and PRAGMA
def test_audit_names_a_hold_closed_with_the_wrong_amount(ctx):
    busy_ledger()
    settle_id, hold_id = db.session.execute(
        select(JournalEntry.id, JournalEntry.closes_entry_id).where(
            JournalEntry.idempotency_key == "settle:1"
        )
    ).one()
    db.session.execute(text("DROP TRIGGER postings_append_only_update"))
    db.session.execute(
        text("UPDATE postings SET amount = -9 WHERE entry_id = :e AND bucket = 'locked'"),
        {"e": settle_id},
    )
    db.session.commit()

    violations = run_audit()
    assert (
        Violation(
            "hold-closed-wrong",
            f"entry {settle_id} closes hold {hold_id} of 10 tokens but unlocks 9",
        )
        in violations
    )
    assert checks(violations) == {
        "hold-closed-wrong",
        "entry-unbalanced",
        "balance-mismatch",
        "posting-chain",
    }


def test_audit_names_an_entry_without_postings(ctx, runner):
    db.session.execute(
        text(
            "INSERT INTO journal_entries (kind, idempotency_key, request_digest, tokens, "
            "usd_cents, teacher_usd_cents, memo, created_at) "
            "VALUES ('adjustment', 'orphan', 'x', 5, 50, 20, '', '2026-01-01 00:00:00.000000')"
        )
    )
    db.session.commit()
    entry_id = db.session.scalar(select(func.max(JournalEntry.id)))

    assert run_audit() == [
        Violation("entry-incomplete", f"entry {entry_id} has 0 posting(s), not 2 or more")
    ]
    result = runner.invoke(args=["soma", "audit"])
    assert result.exit_code == 1
    assert f"entry-incomplete: entry {entry_id}" in result.stderr


@pytest.mark.backends("sqlite")  # SQLite's own trigger names and PRAGMA
def test_audit_names_a_negative_balance(ctx):
    """The CHECK constraint refuses a negative balance, so the corruption first disables it."""
    db.session.execute(text("PRAGMA ignore_check_constraints = ON"))
    db.session.execute(text("UPDATE wallets SET available = -3 WHERE code = 'fees' AND shard = 5"))
    db.session.commit()
    fees_id = db.session.scalar(select(Wallet.id).where(Wallet.code == "fees", Wallet.shard == 5))

    violations = run_audit()
    expected = f"wallet {fees_id} (fees shard 5) has -3 available, 0 locked"
    assert Violation("negative-balance", expected) in violations
    assert checks(violations) == {"negative-balance", "balance-mismatch"}


def row_counts() -> dict[str, int]:
    tables = ("journal_entries", "postings", "class_sessions", "class_events", "notifications",
              "users", "wallets", "purchases")  # fmt: skip
    return {
        name: db.session.scalar(select(func.count()).select_from(db.metadata.tables[name]))
        for name in tables
    }


def test_demo_gives_the_student_a_bonus_and_the_teacher_a_past_year_once(ctx, runner):
    first = runner.invoke(args=["soma", "demo"])
    assert first.exit_code == 0, first.output
    assert "gave the demo student a bonus of 100 tokens" in first.output
    assert re.search(r"gave the demo teacher \d+ past classes with the demo student", first.output)
    counts = row_counts()
    second = runner.invoke(args=["soma", "demo"])
    assert second.exit_code == 0, second.output
    assert "bonus" not in second.output and "past classes" not in second.output
    assert row_counts() == counts  # a rerun adds nothing

    student, teacher, admin = (
        db.session.scalar(select(User).where(User.email == f"{role}@example.com"))
        for role in ("student", "teacher", "admin")
    )
    assert (wallet_of(admin.id).available, wallet_of(admin.id).locked) == (0, 0)
    assert platform("issuance") == 0  # no purchase is made up: the year is promotional credit

    # Today's bonus comes last, after the year, through the ledger from promotions.
    bonus = db.session.scalars(select(JournalEntry).order_by(JournalEntry.id.desc())).first()
    assert (bonus.kind, bonus.tokens) == (EntryKind.BONUS, 100)
    assert bonus.idempotency_key == f"demo:bonus:{student.id}"
    assert (bonus.usd_cents, bonus.teacher_usd_cents) == (1000, 400)
    postings = db.session.execute(
        select(Wallet.code, Wallet.user_id, Posting.amount)
        .join(Wallet, Wallet.id == Posting.wallet_id)
        .where(Posting.entry_id == bonus.id)
        .order_by(Posting.amount)
    ).all()
    assert postings == [("promotions", None, -100), (None, student.id, 100)]

    # The year: classes of the demo pair, all over, in the year before the teacher's account,
    # each entry dated when its class started and ended.
    classes = db.session.scalars(select(ClassSession).order_by(ClassSession.id)).all()
    assert len(classes) >= 100
    assert {(c.student_id, c.teacher_id) for c in classes} == {(student.id, teacher.id)}
    assert {c.status for c in classes} == {"completed", "ended_early", "aborted"}
    anchor = teacher.created_at
    assert all(anchor - timedelta(days=366) < c.scheduled_start < anchor for c in classes)
    dated = {entry.id: entry.created_at for entry in db.session.scalars(select(JournalEntry))}
    for c in classes:
        assert dated[c.hold_entry_id] == c.started_at
        assert dated[c.closing_entry_id] == c.ended_at
    paid = sum(c.charged_tokens for c in classes)
    assert (wallet_of(teacher.id).available, wallet_of(teacher.id).locked) == (paid, 0)
    credited = -platform("promotions") - 100
    assert wallet_of(student.id).available == 100 + credited - paid
    for user in (student, teacher):  # each wallet's history runs forward in time
        times = db.session.scalars(
            select(Posting.created_at)
            .where(Posting.wallet_id == wallet_of(user.id).id)
            .order_by(Posting.seq)
        ).all()
        assert times == sorted(times)
        assert (
            db.session.scalar(
                select(func.count()).where(
                    Notification.user_id == user.id, Notification.read_at.is_(None)
                )
            )
            == 0
        )  # the past year's news was read long ago

    earnings = earnings_of(teacher)
    settled = [c for c in classes if c.charged_tokens]
    assert earnings.lifetime.classes == len(settled)
    assert earnings.lifetime.tokens == paid
    assert sum(1 for month in earnings.months if month.totals.classes) >= 10

    assert run_audit() == []
    audit = runner.invoke(args=["soma", "audit"])
    assert audit.exit_code == 0, audit.output
