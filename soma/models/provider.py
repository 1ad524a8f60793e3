"""What providers tell us: every event once, with its raw body; payments we could not match."""

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from soma.models.base import Base, BigId, UTCDateTime, one_of, utcnow


class EventStatus(enum.StrEnum):
    HANDLED = "handled"
    IGNORED = "ignored"  # read and understood, with nothing to do (the note says why)
    RETRY = "retry"  # could not be acted on yet; the provider is asked to send it again


class ProviderEvent(Base):
    """A provider's notification, recorded once by provider and event id, with its raw body."""

    __tablename__ = "provider_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id", name="uq_provider_events_event"),
        CheckConstraint(one_of("status", EventStatus), name="status_known"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), server_default=EventStatus.HANDLED.value)
    note: Mapped[str | None] = mapped_column(String(255))
    # The raw body as it came (None for events recorded before bodies were kept).
    body: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    handled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class UnmatchedPayment(Base):
    """An M-Pesa payment that reached us for a request we do not know (a push whose answer
    we never got). Kept for matching to the student's purchase, never discarded."""

    __tablename__ = "unmatched_payments"
    __table_args__ = (
        UniqueConstraint("receipt", name="uq_unmatched_payments_receipt"),
        UniqueConstraint("purchase_id", name="uq_unmatched_payments_purchase_id"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        Index("ix_unmatched_payments_open", "purchase_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    receipt: Mapped[str] = mapped_column(String(64))
    checkout_request_id: Mapped[str] = mapped_column(String(128))
    phone: Mapped[str | None] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    paid_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set once, when it is matched to the purchase it paid (which is then credited).
    purchase_id: Mapped[int | None] = mapped_column(ForeignKey("purchases.id"))
    matched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    matched_by: Mapped[str | None] = mapped_column(String(64))
