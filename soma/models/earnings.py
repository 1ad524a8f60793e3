"""Teachers' class payments summed by month: a checkpoint of the ledger, never a source.

Every figure here is a sum over a teacher wallet's class-payment postings and their
entries' frozen values (see soma.earnings.service for what counts). Postings are
append-only, and each wallet's are numbered (`seq`) under the wallet's row lock in
the order they commit, so the payments with seq <= `through_seq` are a fixed set as
soon as one of them is visible: these sums never go stale, and a reader adds only the
payments after `through_seq` (the tail) to them. Only soma.earnings.service writes
these rows; the audit recomputes them from the ledger (soma.audit.earnings). A
wallet's checkpoint and its months together can be deleted at any time: the next
view of the dashboard builds them again.

Months are UTC calendar months. When users get time zones (a later issue), a month in
the teacher's zone is the UTC month's sums less the hours at one end and plus those at
the other, read from the ledger's postings (a few hours each, through an index).
"""

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from soma.models.base import Base, UTCDateTime, utcnow


class EarningsCheckpoint(Base):
    """How far a wallet's class payments are summed into its EarningsMonth rows."""

    __tablename__ = "earnings_checkpoints"
    __table_args__ = (CheckConstraint("through_seq >= 0", name="through_seq_not_negative"),)

    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), primary_key=True)
    # The payments among the wallet's postings with seq <= this are in its months.
    through_seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class EarningsMonth(Base):
    """A wallet's class payments up to its checkpoint that the ledger dated in one month."""

    __tablename__ = "earnings_months"
    __table_args__ = (
        CheckConstraint("classes > 0", name="classes_positive"),
        CheckConstraint("seconds >= 0", name="seconds_not_negative"),
        CheckConstraint("tokens > 0", name="tokens_positive"),
        CheckConstraint("cents >= 0", name="cents_not_negative"),
    )

    wallet_id: Mapped[int] = mapped_column(
        ForeignKey("earnings_checkpoints.wallet_id"), primary_key=True
    )
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # "2026-11": UTC, YYYY-MM
    classes: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[int] = mapped_column(BigInteger)  # active class time
    tokens: Mapped[int] = mapped_column(BigInteger)
    cents: Mapped[int] = mapped_column(BigInteger)  # the payments' frozen teacher values


class EarningsDay(Base):
    """A wallet's class payments up to its checkpoint that the ledger dated in one UTC
    day, in frozen cents: what the dashboard's "last month up to the same point" adds
    up by whole days (the rest of that day read from the ledger), so that figure reads
    about a day of payments rather than a month of them. Written beside EarningsMonth,
    in the same transaction, up to the same checkpoint."""

    __tablename__ = "earnings_days"
    __table_args__ = (CheckConstraint("cents >= 0", name="cents_not_negative"),)

    wallet_id: Mapped[int] = mapped_column(
        ForeignKey("earnings_checkpoints.wallet_id"), primary_key=True
    )
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # "2026-11-30": UTC
    cents: Mapped[int] = mapped_column(BigInteger)
