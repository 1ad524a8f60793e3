"""Buying tokens: the packages on sale, purchases, their status history, and provider events.

A purchase is what the student asked for and what the provider says of it. The
ledger's PURCHASE entry (and BONUS entry, if any), keyed by the purchase, is
what credits the tokens: a purchase is credited once, whoever reports it paid.
"""

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from soma.models.base import Base, BigId, UTCDateTime, one_of, utcnow


class PurchaseStatus(enum.StrEnum):
    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    DISPUTED = "disputed"


class Provider(enum.StrEnum):
    STRIPE = "stripe"
    MPESA = "mpesa"
    SANDBOX = "sandbox"


PROVIDER_LABELS = {
    Provider.STRIPE: "Card (Stripe)",
    Provider.MPESA: "M-Pesa",
    Provider.SANDBOX: "Test payment (sandbox)",
}

STATUS_LABELS = {
    PurchaseStatus.PENDING: "Processing",
    PurchaseStatus.PAID: "Paid",
    PurchaseStatus.FAILED: "Failed",
    PurchaseStatus.EXPIRED: "Expired",
    PurchaseStatus.REFUNDED: "Refunded",
    PurchaseStatus.DISPUTED: "Disputed",
}

# A purchase whose tokens were credited: paid, and perhaps reversed since.
CREDITED = (PurchaseStatus.PAID.value, PurchaseStatus.REFUNDED.value, PurchaseStatus.DISPUTED.value)

# Custom amounts a student may buy, in tokens.
CUSTOM_MIN, CUSTOM_MAX = 10, 10_000


class TokenPackage(Base):
    """A package on sale. Admins change the offer by adding packages and retiring old ones."""

    __tablename__ = "token_packages"
    __table_args__ = (
        CheckConstraint("tokens > 0", name="tokens_positive"),
        CheckConstraint("bonus_tokens >= 0", name="bonus_not_negative"),
        CheckConstraint("price_cents > 0", name="price_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger)
    bonus_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    price_cents: Mapped[int] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    sort_order: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Purchase(Base):
    __tablename__ = "purchases"
    __table_args__ = (
        CheckConstraint(one_of("status", PurchaseStatus), name="status_known"),
        CheckConstraint(one_of("provider", Provider), name="provider_known"),
        CheckConstraint("tokens > 0", name="tokens_positive"),
        CheckConstraint("bonus_tokens >= 0", name="bonus_not_negative"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        Index("ix_purchases_user_id_id", "user_id", "id"),
        # Failed payments of the last days, for the operator's metrics (soma.admin.metrics).
        Index("ix_purchases_status_updated_at", "status", "updated_at"),
        UniqueConstraint("checkout_session_id", name="uq_purchases_checkout_session_id"),
        UniqueConstraint("checkout_request_id", name="uq_purchases_checkout_request_id"),
        UniqueConstraint("receipt", name="uq_purchases_receipt"),
        # One account's purchases of the last hour, for the alert rules (soma.alert_rules).
        Index("ix_purchases_user_id_created_at", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # The student's buy-form nonce: a double submit finds the first purchase.
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    package_id: Mapped[int | None] = mapped_column(ForeignKey("token_packages.id"))
    tokens: Mapped[int] = mapped_column(BigInteger)
    bonus_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # What the student pays, in the currency's minor unit (US cents; whole shillings for KES).
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    provider: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=PurchaseStatus.PENDING.value)
    version: Mapped[int] = mapped_column(Integer, default=0)
    # The provider's references.
    checkout_session_id: Mapped[str | None] = mapped_column(String(255))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    checkout_request_id: Mapped[str | None] = mapped_column(String(255))
    merchant_request_id: Mapped[str | None] = mapped_column(String(255))
    # When an STK push was first asked for: one push per purchase, even on a double submit.
    push_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When the sweeper last asked the provider about it: each pass asks the least
    # recently asked first, so no pile of stuck purchases hides a newer one.
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    receipt: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(16))
    failure_reason: Mapped[str | None] = mapped_column(String(255))
    credited_entry_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    user = relationship("User")

    @property
    def total_tokens(self) -> int:
        return self.tokens + self.bonus_tokens

    @property
    def credited(self) -> bool:
        return self.status in CREDITED

    @property
    def status_label(self) -> str:
        return STATUS_LABELS[PurchaseStatus(self.status)]

    @property
    def provider_label(self) -> str:
        return PROVIDER_LABELS[Provider(self.provider)]


class PurchaseEvent(Base):
    """A change of a purchase's status: from what, to what, why, and when."""

    __tablename__ = "purchase_events"
    __table_args__ = (Index("ix_purchase_events_purchase_id_id", "purchase_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id"))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64))  # "sandbox", "stripe:evt_...", "admin:3"
    note: Mapped[str] = mapped_column(String(255), default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReversalKind(enum.StrEnum):
    REFUND = "refund"
    DISPUTE = "dispute"


class ReversalStatus(enum.StrEnum):
    # a refund
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # (or cancelled): the money never went back
    # a dispute
    OPEN = "open"
    WON = "won"
    LOST = "lost"


# The statuses in which a reversal's money is (or may be) gone back to the buyer, so the
# tokens it bought are taken back; in the others they are returned.
REVERSAL_ACTIVE = (
    ReversalStatus.PENDING.value,
    ReversalStatus.SUCCEEDED.value,
    ReversalStatus.OPEN.value,
    ReversalStatus.LOST.value,
)

REVERSAL_LABELS = {
    ReversalStatus.PENDING: "Refund pending",
    ReversalStatus.SUCCEEDED: "Refunded",
    ReversalStatus.FAILED: "Refund failed",
    ReversalStatus.OPEN: "Dispute open",
    ReversalStatus.WON: "Dispute won",
    ReversalStatus.LOST: "Dispute lost",
}


class PurchaseReversal(Base):
    """One refund or one dispute of a purchase, as its provider reports it.

    `tokens_taken` and `bonus_taken` are what its ledger entries (keyed by the
    reversal) hold back from the student now, purchased tokens and bonus apart;
    `tokens_short` and `bonus_short` what it should hold back but could not,
    because the student had spent them (the shortfall, for which the account is
    flagged).
    """

    __tablename__ = "purchase_reversals"
    __table_args__ = (
        UniqueConstraint("provider_ref", name="uq_purchase_reversals_provider_ref"),
        CheckConstraint(one_of("kind", ReversalKind), name="kind_known"),
        CheckConstraint(one_of("status", ReversalStatus), name="status_known"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint(
            "tokens_taken >= 0 AND bonus_taken >= 0 AND tokens_short >= 0 AND bonus_short >= 0",
            name="taken_not_negative",
        ),
        Index("ix_purchase_reversals_purchase_id_id", "purchase_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id"))
    kind: Mapped[str] = mapped_column(String(16))
    # The provider's own id of the refund or dispute (ours for a sandbox refund).
    provider_ref: Mapped[str] = mapped_column(String(255))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    tokens_taken: Mapped[int] = mapped_column(BigInteger, default=0)
    bonus_taken: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_short: Mapped[int] = mapped_column(BigInteger, default=0)
    bonus_short: Mapped[int] = mapped_column(BigInteger, default=0)
    # How many ledger entries it has written: the next one's key.
    moves: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def active(self) -> bool:
        return self.status in REVERSAL_ACTIVE

    @property
    def taken(self) -> int:
        return self.tokens_taken + self.bonus_taken

    @property
    def shortfall(self) -> int:
        return self.tokens_short + self.bonus_short

    @property
    def status_label(self) -> str:
        return REVERSAL_LABELS[ReversalStatus(self.status)]
