"""Versioned token pricing: a new price is a new row; rows are never edited."""

import enum
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from soma.models.base import Base, UTCDateTime, utcnow


class PricingUserType(enum.StrEnum):
    STUDENT = "student"
    TEACHER = "teacher"


class TokenPricing(Base):
    """`usd_cents` buys (student) or pays out (teacher) `tokens` tokens, from `effective_at`."""

    __tablename__ = "token_pricing"
    __table_args__ = (
        CheckConstraint("user_type IN ('student', 'teacher')", name="user_type_known"),
        CheckConstraint("tokens > 0", name="tokens_positive"),
        CheckConstraint("usd_cents > 0", name="usd_cents_positive"),
        CheckConstraint("class_tokens_per_hour > 0", name="class_rate_positive"),
        CheckConstraint("version > 0", name="version_positive"),
        Index("uq_token_pricing_user_type_version", "user_type", "version", unique=True),
        Index("ix_token_pricing_user_type_effective_at", "user_type", "effective_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_type: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer)
    usd_cents: Mapped[int] = mapped_column(BigInteger)
    class_tokens_per_hour: Mapped[int] = mapped_column(Integer)
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    def __repr__(self) -> str:
        return (
            f"<TokenPricing {self.user_type} v{self.version}: "
            f"{self.tokens} tokens = {self.usd_cents} cents>"
        )
