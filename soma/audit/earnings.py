"""The audit's check of the earnings checkpoints: each is what the ledger sums to."""

from sqlalchemy import and_, select

from soma.audit.violation import Violation
from soma.earnings.service import class_payments, month_of, totals_columns
from soma.extensions import db
from soma.models import EarningsCheckpoint, EarningsMonth, Posting

FIGURES = ("classes", "seconds", "tokens", "cents")


def earnings_checkpoints_match_the_ledger() -> list[Violation]:
    """Every checkpointed month of a wallet holds exactly the sums of the wallet's class
    payments the ledger dated in that month, among its postings up to the checkpoint; and
    no month with such payments is missing."""
    month = month_of(Posting.created_at, db.session.get_bind().dialect.name)
    counted = (
        class_payments()
        .join(
            EarningsCheckpoint,
            and_(
                EarningsCheckpoint.wallet_id == Posting.wallet_id,
                Posting.seq <= EarningsCheckpoint.through_seq,
            ),
        )
        .add_columns(Posting.wallet_id, month, *totals_columns())
        .group_by(Posting.wallet_id, month)
    )
    summed = {(wallet, key): tuple(sums) for wallet, key, *sums in db.session.execute(counted)}
    stored = {
        (wallet, key): tuple(sums)
        for wallet, key, *sums in db.session.execute(
            select(
                EarningsMonth.wallet_id,
                EarningsMonth.month,
                *(getattr(EarningsMonth, name) for name in FIGURES),
            )
        )
    }
    found = []
    for wallet, key in sorted(set(summed) | set(stored)):
        expected = summed.get((wallet, key), (0, 0, 0, 0))
        kept = stored.get((wallet, key), (0, 0, 0, 0))
        if expected != kept:
            found.append(
                Violation(
                    "earnings-checkpoint",
                    f"wallet {wallet}'s earnings for {key} say "
                    f"{_describe(kept)}, but its class payments up to its checkpoint sum to "
                    f"{_describe(expected)}",
                )
            )
    return found


def _describe(figures: tuple) -> str:
    return ", ".join(f"{value} {name}" for name, value in zip(FIGURES, figures, strict=True))
