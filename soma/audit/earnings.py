"""The audit's check of the earnings checkpoints: each is what the ledger sums to.

Sums are made and compared in SQL, per wallet and month (all four figures) and per wallet
and day (the cents that "last month up to the same point" adds up): the ledger's and the
stored ones side by side (a UNION ALL summed by wallet and period), returning only the
periods that differ (at most MOST). An incremental run looks at the wallets with a class
payment in scope and those whose earnings checkpoint moved since the audit's (`updated_at`);
an edit of the periods of a wallet with neither is left to `--full`.
"""

from sqlalchemy import BigInteger, and_, cast, func, literal, or_, select, true, union_all

from soma.audit.checkpoint import FULL, Scope, among
from soma.audit.violation import MOST, Violation
from soma.earnings.service import CLASS_PAY, class_payments, day_of, month_of, totals_columns
from soma.extensions import db
from soma.models import EarningsCheckpoint, EarningsDay, EarningsMonth, Posting

FIGURES = ("classes", "seconds", "tokens", "cents")


def earnings_checkpoints_match_the_ledger(scope: Scope = FULL) -> list[Violation]:
    """Every checkpointed month of a wallet holds exactly the sums of the wallet's class
    payments the ledger dated in that month, among its postings up to the checkpoint; and
    no month with such payments is missing. So does every checkpointed day's cents."""
    dialect = db.session.get_bind().dialect.name
    months = _compared(
        month_of(Posting.created_at, dialect), EarningsMonth, EarningsMonth.month,
        FIGURES, totals_columns(), scope,
    )  # fmt: skip
    days = _compared(
        day_of(Posting.created_at, dialect), EarningsDay, EarningsDay.day,
        ("cents",), totals_columns()[3:], scope,
    )  # fmt: skip
    return [
        Violation(
            "earnings-checkpoint",
            f"wallet {wallet}'s earnings for {key} say {_describe(names, sums[len(names) :])}, "
            f"but its class payments up to its checkpoint sum to "
            f"{_describe(names, sums[: len(names)])}",
        )
        for names, rows in ((FIGURES, months), (("cents",), days))
        for wallet, key, *sums in rows
    ][:MOST]


def _compared(period, kept_table, kept_period, names, ledger_columns, scope: Scope) -> list:
    """Per wallet and period, the ledger's sums and the kept ones that differ (at most MOST)."""
    counted = (
        class_payments()
        .join(
            EarningsCheckpoint,
            and_(
                EarningsCheckpoint.wallet_id == Posting.wallet_id,
                Posting.seq <= EarningsCheckpoint.through_seq,
            ),
        )
        .where(_wallets_in_scope(Posting.wallet_id, scope))
        .add_columns(
            Posting.wallet_id.label("wallet_id"),
            period.label("period"),
            *(
                column.label(f"ledger_{name}")
                for column, name in zip(ledger_columns, names, strict=True)
            ),
        )
        .group_by(Posting.wallet_id, period)
    )
    counted = counted.subquery()
    # Per wallet and period, the ledger's sums and the stored ones, side by side.
    sides = union_all(
        select(
            counted.c.wallet_id,
            counted.c.period,
            *(counted.c[f"ledger_{name}"] for name in names),
            *(literal(0, BigInteger).label(f"kept_{name}") for name in names),
        ),
        select(
            kept_table.wallet_id,
            kept_period,
            *(literal(0, BigInteger).label(f"ledger_{name}") for name in names),
            *(getattr(kept_table, name).label(f"kept_{name}") for name in names),
        ).where(_wallets_in_scope(kept_table.wallet_id, scope)),
    ).subquery()
    summed = [cast(func.sum(column), BigInteger) for column in sides.c[2:]]
    expected, kept = summed[: len(names)], summed[len(names) :]
    return db.session.execute(
        select(sides.c[0], sides.c[1], *summed)
        .group_by(sides.c[0], sides.c[1])
        .having(or_(*(a != b for a, b in zip(expected, kept, strict=True))))
        .order_by(sides.c[0], sides.c[1])
        .limit(MOST)
    ).all()


def _wallets_in_scope(column, scope: Scope):
    """SQL: the wallet `column` names has an earnings checkpoint, and a class payment in
    scope or that checkpoint moved since the audit's (no other posting changes what the
    check compares). One short list, looked up through the postings' wallet index. (As
    two IN subqueries joined by OR, the planner read every class payment on the journal;
    as the wallets of every posting in scope, every class payment of every student
    paying for a class since: each settle hands a student back the tokens a class did
    not use.)"""
    if scope.full:
        return true()
    touched = select(Posting.wallet_id).where(CLASS_PAY, scope.entries(Posting.entry_id))
    return among(
        column,
        select(EarningsCheckpoint.wallet_id).where(
            or_(
                EarningsCheckpoint.wallet_id.in_(touched),
                scope.changed(EarningsCheckpoint.updated_at),
            )
        ),
    )


def _describe(names: tuple, figures: list) -> str:
    return ", ".join(f"{value} {name}" for name, value in zip(names, figures, strict=True))
