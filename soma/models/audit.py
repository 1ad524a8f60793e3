"""What a clean run of `flask soma audit` has proven, so the next run starts from it.

An AuditCheckpoint says: in one snapshot, every invariant held, and here is where the
ledger stood. Its AuditCheckpointWallet rows are each wallet's chain head (seq and hash
of its last posting) and balances, proven equal to its postings' sums; the `through_*`
ids are the newest row of each table the checks scoped by id. `hash` chains the
checkpoint to the one before it (see soma.audit.checkpoint), so an edited checkpoint,
or its wallet rows, no longer hashes to what it says. Only the newest checkpoint keeps
its wallet rows; older ones keep their hashes, so the chain can still be followed.
"""

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from soma.models.base import Base, BigId, UTCDateTime, utcnow


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Made by a full run (everything from the start) or an incremental one.
    full: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    through_entry_id: Mapped[int] = mapped_column(BigInteger, default=0)
    through_class_id: Mapped[int] = mapped_column(BigInteger, default=0)
    through_purchase_id: Mapped[int] = mapped_column(BigInteger, default=0)
    through_reversal_id: Mapped[int] = mapped_column(BigInteger, default=0)
    through_gift_id: Mapped[int] = mapped_column(BigInteger, default=0)
    through_withdrawal_id: Mapped[int] = mapped_column(BigInteger, default=0)
    wallets: Mapped[int] = mapped_column(Integer, default=0)  # its wallet rows
    wallets_digest: Mapped[str] = mapped_column(String(64), default="")
    # The checkpoint it follows (0: none). Unique: two runs that started from the same
    # checkpoint cannot both write the next one.
    previous_id: Mapped[int] = mapped_column(BigInteger, unique=True, default=0)
    previous_hash: Mapped[str] = mapped_column(String(64), default="")
    hash: Mapped[str] = mapped_column(String(64), default="")


class AuditCheckpointWallet(Base):
    __tablename__ = "audit_checkpoint_wallets"

    checkpoint_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("audit_checkpoints.id"), primary_key=True
    )
    wallet_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    available: Mapped[int] = mapped_column(BigInteger)
    locked: Mapped[int] = mapped_column(BigInteger)
