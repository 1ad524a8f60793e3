"""The ledger's tables: wallets, journal entries and their postings.

Only `soma.ledger` writes these. Entries and postings are append-only; a
wallet's cached balances change only in the transaction that posts to it.
"""

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from soma.models.base import Base, BigId, UTCDateTime, utcnow


class EntryKind(enum.StrEnum):
    PURCHASE = "purchase"
    BONUS = "bonus"
    CLASS_HOLD = "class_hold"
    CLASS_SETTLE = "class_settle"
    CLASS_RELEASE = "class_release"
    WITHDRAWAL_HOLD = "withdrawal_hold"
    WITHDRAWAL_PAID = "withdrawal_paid"
    WITHDRAWAL_RELEASE = "withdrawal_release"
    REFUND = "refund"
    GIFT = "gift"
    ADJUSTMENT = "adjustment"


ENTRY_KIND_LABELS = {
    EntryKind.PURCHASE: "Purchase",
    EntryKind.BONUS: "Bonus",
    EntryKind.CLASS_HOLD: "Class hold",
    EntryKind.CLASS_SETTLE: "Class payment",
    EntryKind.CLASS_RELEASE: "Class hold released",
    EntryKind.WITHDRAWAL_HOLD: "Withdrawal requested",
    EntryKind.WITHDRAWAL_PAID: "Withdrawal paid",
    EntryKind.WITHDRAWAL_RELEASE: "Withdrawal returned",
    EntryKind.REFUND: "Refund",
    EntryKind.GIFT: "Gift",
    EntryKind.ADJUSTMENT: "Adjustment",
}


class PlatformAccount(enum.StrEnum):
    """The platform's own accounts. Issuance and promotions are where tokens come from.

    Each is split into sub-accounts (wallets with the same `code` and their own `shard`,
    0 to N-1; see soma.ledger.shards): an account's balance is the sum of its shards'.
    """

    ISSUANCE = "issuance"
    REDEMPTION = "redemption"
    PROMOTIONS = "promotions"
    FEES = "fees"


SOURCE_ACCOUNTS = (PlatformAccount.ISSUANCE, PlatformAccount.PROMOTIONS)


class Bucket(enum.StrEnum):
    AVAILABLE = "available"
    LOCKED = "locked"


# The postings that pay for a class: a class settle's credit (its payee, the teacher;
# the student's change, if any, is a credit on their own wallet too).
CLASS_PAY_POSTING = text(f"kind = '{EntryKind.CLASS_SETTLE.value}' AND amount > 0")


def _kinds_sql() -> str:
    return ", ".join(f"'{k.value}'" for k in EntryKind)


class Wallet(Base):
    """A ledger account: a user's wallet, or one of the platform's accounts."""

    __tablename__ = "wallets"
    __table_args__ = (
        CheckConstraint("available >= 0 OR is_source", name="available_not_negative"),
        CheckConstraint("locked >= 0", name="locked_not_negative"),
        CheckConstraint("(user_id IS NULL) <> (code IS NULL)", name="user_or_platform"),
        CheckConstraint("NOT is_source OR user_id IS NULL", name="only_platform_is_source"),
        CheckConstraint("shard >= 0 AND (code IS NOT NULL OR shard = 0)", name="shard_of_platform"),
        # One wallet per sub-account of a platform account (users' wallets are shard 0).
        UniqueConstraint("code", "shard"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), unique=True)
    code: Mapped[str | None] = mapped_column(String(32))
    # Which sub-account of the platform account `code` this wallet is (0 for a user's):
    # entries spread over the shards so that no one row is locked by every purchase.
    shard: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    # A source account (issuance, promotions) goes negative by what it has issued.
    is_source: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    available: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    locked: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The head of the wallet's posting chain (see soma.ledger.core): the seq and hash of
    # its last posting, and the hash of the one before it, which an entry posting two
    # buckets returns for its first posting. 0 and '' before the first posting.
    head_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    head_hash: Mapped[str] = mapped_column(String(64), default="", server_default=text("''"))
    prior_hash: Mapped[str] = mapped_column(String(64), default="", server_default=text("''"))

    user = relationship("User", back_populates="wallet")

    @property
    def total(self) -> int:
        return self.available + self.locked

    def __repr__(self) -> str:
        owner = f"user {self.user_id}" if self.user_id else f"{self.code}:{self.shard}"
        return f"<Wallet {self.id} {owner} {self.available}+{self.locked}>"


class JournalEntry(Base):
    """One money movement. Its postings sum to zero. Never updated or deleted."""

    __tablename__ = "journal_entries"
    __table_args__ = (
        CheckConstraint(f"kind IN ({_kinds_sql()})", name="kind_known"),
        CheckConstraint("tokens >= 0", name="tokens_not_negative"),
        Index("ix_journal_entries_reference", "reference_type", "reference_id"),
        Index("ix_journal_entries_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    # A digest of what was asked, so a reused key with other content is refused.
    request_digest: Mapped[str] = mapped_column(String(64))
    tokens: Mapped[int] = mapped_column(BigInteger)
    # The value of `tokens` at the student and teacher rates in force, frozen.
    usd_cents: Mapped[int] = mapped_column(BigInteger)
    teacher_usd_cents: Mapped[int] = mapped_column(BigInteger)
    reference_type: Mapped[str | None] = mapped_column(String(32))
    reference_id: Mapped[int | None] = mapped_column(BigInteger)
    # A settle or release names the hold it closes; unique, so a hold closes once.
    closes_entry_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("journal_entries.id"), unique=True
    )
    memo: Mapped[str] = mapped_column(String(500), default="")
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    postings: Mapped[list["Posting"]] = relationship(
        back_populates="entry", order_by="Posting.id", viewonly=True
    )

    @property
    def label(self) -> str:
        return ENTRY_KIND_LABELS.get(EntryKind(self.kind), self.kind)

    def __repr__(self) -> str:
        return f"<JournalEntry {self.id} {self.kind} {self.tokens} {self.idempotency_key!r}>"


class Posting(Base):
    """One side of an entry: an amount on one bucket of one wallet.

    `available_after` and `locked_after` are the wallet's balances once the
    whole entry applied; `kind` and `created_at` repeat the entry's so that a
    wallet's history is one index range scan. `seq` numbers the wallet's postings
    1, 2, 3... in the order they were written, and `hash` chains each to the one
    before (see soma.ledger.core).
    """

    __tablename__ = "postings"
    __table_args__ = (
        CheckConstraint("bucket IN ('available', 'locked')", name="bucket_known"),
        CheckConstraint("amount <> 0", name="amount_not_zero"),
        Index("uq_postings_wallet_seq", "wallet_id", "seq", unique=True),
        Index("ix_postings_wallet_kind_seq", "wallet_id", "kind", "seq"),
        # One posting per bucket of a wallet in an entry (the ledger merges legs); it also
        # finds an entry's postings, as the hold check does (see soma.ledger.core).
        Index("uq_postings_entry_wallet_bucket", "entry_id", "wallet_id", "bucket", unique=True),
        # A teacher's class payments by time, for the earnings figures (soma.earnings):
        # only the postings that pay for a class, so the ledger's other writes skip it.
        # A query uses it only when its WHERE repeats the predicate as literals.
        Index(
            "ix_postings_class_pay",
            "wallet_id",
            "created_at",
            postgresql_include=["entry_id", "amount"],
            postgresql_where=CLASS_PAY_POSTING,
            sqlite_where=CLASS_PAY_POSTING,
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    entry_id: Mapped[int] = mapped_column(BigId, ForeignKey("journal_entries.id"))
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    bucket: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    available_after: Mapped[int] = mapped_column(BigInteger)
    locked_after: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))

    entry: Mapped[JournalEntry] = relationship(back_populates="postings", viewonly=True)
