"""`flask soma audit`: prove the ledger's invariants from the stored rows.

Each check is a function returning violations. Features that move money
(classes, purchases, withdrawals) register their own checks with `audit_check`.
"""

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import aliased

from soma.extensions import db
from soma.models import Bucket, JournalEntry, Posting, Wallet


@dataclass(frozen=True)
class Violation:
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


CHECKS: list[Callable[[], list[Violation]]] = []


def audit_check(fn: Callable[[], list[Violation]]):
    """Register `fn` as one of the audit's checks."""
    CHECKS.append(fn)
    return fn


def run_audit() -> list[Violation]:
    """Run every check; return the violations found (none when all holds)."""
    found: list[Violation] = []
    for check in CHECKS:
        found.extend(check())
    return found


@audit_check
def entries_sum_to_zero() -> list[Violation]:
    rows = db.session.execute(
        select(Posting.entry_id, func.sum(Posting.amount))
        .group_by(Posting.entry_id)
        .having(func.sum(Posting.amount) != 0)
    ).all()
    return [
        Violation("entry-unbalanced", f"entry {entry_id} postings sum to {total}, not 0")
        for entry_id, total in rows
    ]


@audit_check
def entries_have_two_postings() -> list[Violation]:
    rows = db.session.execute(
        select(JournalEntry.id, func.count(Posting.id))
        .outerjoin(Posting, Posting.entry_id == JournalEntry.id)
        .group_by(JournalEntry.id)
        .having(func.count(Posting.id) < 2)
    ).all()
    return [
        Violation("entry-incomplete", f"entry {entry_id} has {count} posting(s), not 2 or more")
        for entry_id, count in rows
    ]


@audit_check
def balances_match_postings() -> list[Violation]:
    sums = (
        select(
            Posting.wallet_id,
            func.sum(case((Posting.bucket == Bucket.AVAILABLE, Posting.amount), else_=0)).label(
                "available"
            ),
            func.sum(case((Posting.bucket == Bucket.LOCKED, Posting.amount), else_=0)).label(
                "locked"
            ),
        )
        .group_by(Posting.wallet_id)
        .subquery()
    )
    available = func.coalesce(sums.c.available, 0)
    locked = func.coalesce(sums.c.locked, 0)
    rows = db.session.execute(
        select(
            Wallet.id,
            Wallet.user_id,
            Wallet.code,
            Wallet.available,
            Wallet.locked,
            available,
            locked,
        )
        .outerjoin(sums, sums.c.wallet_id == Wallet.id)
        .where(or_(Wallet.available != available, Wallet.locked != locked))
    ).all()
    return [
        Violation(
            "balance-mismatch",
            f"wallet {w_id} ({code or f'user {user_id}'}) holds {cached_a} available and "
            f"{cached_l} locked, but its postings sum to {posted_a} and {posted_l}",
        )
        for w_id, user_id, code, cached_a, cached_l, posted_a, posted_l in rows
    ]


@audit_check
def no_negative_balances() -> list[Violation]:
    rows = db.session.execute(
        select(Wallet.id, Wallet.user_id, Wallet.code, Wallet.available, Wallet.locked).where(
            or_(and_(Wallet.available < 0, ~Wallet.is_source), Wallet.locked < 0)
        )
    ).all()
    return [
        Violation(
            "negative-balance",
            f"wallet {w_id} ({code or f'user {user_id}'}) has {a} available, {lk} locked",
        )
        for w_id, user_id, code, a, lk in rows
    ]


@audit_check
def holds_close_with_their_amount() -> list[Violation]:
    """A settle or release gives up exactly the tokens its hold locked, from that wallet."""
    closing = aliased(JournalEntry)
    hold_leg = aliased(Posting)
    close_leg = aliased(Posting)
    rows = db.session.execute(
        select(closing.id, closing.closes_entry_id, hold_leg.amount, close_leg.amount)
        .join(
            hold_leg,
            and_(hold_leg.entry_id == closing.closes_entry_id, hold_leg.bucket == Bucket.LOCKED),
        )
        .outerjoin(
            close_leg,
            and_(
                close_leg.entry_id == closing.id,
                close_leg.bucket == Bucket.LOCKED,
                close_leg.wallet_id == hold_leg.wallet_id,
            ),
        )
        .where(closing.closes_entry_id.is_not(None))
        .where(or_(close_leg.amount.is_(None), close_leg.amount != -hold_leg.amount))
    ).all()
    return [
        Violation(
            "hold-closed-wrong",
            f"entry {entry_id} closes hold {hold_id} of {held} tokens but unlocks "
            f"{-(unlocked or 0)}",
        )
        for entry_id, hold_id, held, unlocked in rows
    ]
