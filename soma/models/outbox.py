"""Mail waiting to leave: written in the caller's transaction, sent by the sweeper after it."""

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from soma.models.base import Base, BigId, UTCDateTime, utcnow

# The rows the sweeper still has to send: neither sent nor given up on.
_WAITING = text("sent_at IS NULL AND failed_at IS NULL")


class OutboxMessage(Base):
    """One email. `key` is unique, so the same reminder or notification is queued once.

    A row is never deleted by the app: a sent one keeps `sent_at`, one that a server
    refused for good keeps `failed_at` and the refusal in `last_error`, for an admin.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("uq_outbox_key", "key", unique=True),
        # What the drain reads: waiting rows, soonest due first.
        Index(
            "ix_outbox_waiting_next_attempt_at",
            "next_attempt_at",
            postgresql_where=_WAITING,
            sqlite_where=_WAITING,
        ),
        Index("ix_outbox_user_id_id", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    to_address: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(500))
