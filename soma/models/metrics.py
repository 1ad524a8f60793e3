"""The operator's metrics summed from the ledger: a checkpoint of it, never a source.

Journal entries are append-only, so the entries with id <= `through_entry_id` are a
fixed set once the checkpoint is written: `metrics_days` holds their sums by UTC day
and `metrics_wallets` each wallet's latest posting among them. A view of /admin/ adds
only the entries after the checkpoint (the tail) to these. Only soma.admin.metrics
writes them, and it can rebuild them from scratch at any time: deleting every row here
loses nothing.
"""

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from soma.models.base import Base, UTCDateTime, utcnow


class MetricsCheckpoint(Base):
    """How far the ledger's entries are summed: one row."""

    __tablename__ = "metrics_checkpoint"
    __table_args__ = (
        CheckConstraint("id = 1", name="one_row"),
        CheckConstraint("through_entry_id >= 0", name="through_not_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The entries with id <= this are in metrics_days and metrics_wallets.
    through_entry_id: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MetricsDay(Base):
    """The entries up to the checkpoint that the ledger dated in one UTC day, and the
    revenue they made at their frozen values (see soma.admin.metrics for what counts)."""

    __tablename__ = "metrics_days"
    __table_args__ = (
        CheckConstraint("entries >= 0", name="entries_not_negative"),
        CheckConstraint("classes >= 0", name="classes_not_negative"),
    )

    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # "2026-11-30", UTC
    entries: Mapped[int] = mapped_column(BigInteger)
    classes: Mapped[int] = mapped_column(BigInteger)  # class payments (settles)
    margin_cents: Mapped[int] = mapped_column(BigInteger)
    withdrawals: Mapped[int] = mapped_column(BigInteger)  # paid, less those reversed
    fee_cents: Mapped[int] = mapped_column(BigInteger)
    refunds: Mapped[int] = mapped_column(BigInteger)  # refund entries, less returns
    refund_cents: Mapped[int] = mapped_column(BigInteger)


class MetricsWallet(Base):
    """A user's wallet's latest posting among the entries up to the checkpoint, with the
    user's role (which never changes), so that counting the active wallets by role reads
    this index alone, not every wallet and user."""

    __tablename__ = "metrics_wallets"
    __table_args__ = (
        Index("ix_metrics_wallets_last_at", "last_at", postgresql_include=["wallet_id", "role"]),
    )

    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    last_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MetricsActiveDay(Base):
    """How many users' wallets of a role have their latest posting (MetricsWallet.last_at)
    in one UTC day: kept by the fold beside MetricsWallet, in the same transaction, so
    that the active wallets are these days' counts after the window's first day, plus
    that one day's wallets read from MetricsWallet, plus the tail's: a month of day rows,
    not a row per active wallet."""

    __tablename__ = "metrics_active_days"
    # (No CHECK on wallets: an upsert's candidate row carries the change, -1 for a day a
    # wallet leaves, and the databases check it before finding the conflict.)

    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # "2026-11-30", UTC
    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    wallets: Mapped[int] = mapped_column(BigInteger)
