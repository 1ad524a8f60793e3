"""Gifts: tokens one student gives another, with a note."""

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from soma.models.base import Base, BigId, UTCDateTime, utcnow


class Gift(Base):
    """What was asked for; the ledger's GIFT entry, referencing this row, moves the tokens."""

    __tablename__ = "gifts"
    __table_args__ = (
        CheckConstraint("tokens > 0", name="tokens_positive"),
        CheckConstraint("sender_id <> recipient_id", name="not_to_self"),
        Index("ix_gifts_sender_id", "sender_id"),
        Index("ix_gifts_recipient_id", "recipient_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # The sender's confirmation nonce: a double submit finds the first gift.
    key: Mapped[str] = mapped_column(String(200), unique=True)
    sender_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    recipient_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    tokens: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    sender = relationship("User", foreign_keys=[sender_id])
    recipient = relationship("User", foreign_keys=[recipient_id])
