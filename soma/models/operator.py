"""The operator's records: admin actions, alerts, the sweeper's heartbeat and audit runs."""

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
    Text,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from soma.models.base import Base, BigId, UTCDateTime, one_of, utcnow


class AdminAction(Base):
    """One thing an admin did, written in the same transaction as the change itself.

    Append-only: a trigger refuses UPDATE and DELETE (migration 0016). `before` and
    `after` are JSON texts of the fields the action changed (soma.admin.actions).
    """

    __tablename__ = "admin_actions"
    __table_args__ = (
        Index("ix_admin_actions_admin_id_id", "admin_id", "id"),
        Index("ix_admin_actions_action_id", "action", "id"),
        Index("ix_admin_actions_object", "object_type", "object_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(40))
    object_type: Mapped[str] = mapped_column(String(40))
    object_id: Mapped[int | None] = mapped_column(BigInteger)
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    admin = relationship("User", foreign_keys=[admin_id])


class Alert(Base):
    """Something an admin should look at, raised once per cause and acknowledged by an admin.

    `cause` names the one thing that raised it (a rule and the object or period, say
    "withdrawal-large:42"); it is unique, so raising the same cause again is a no-op.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        Index("uq_alerts_cause", "cause", unique=True),
        Index("ix_alerts_acknowledged_at_id", "acknowledged_at", "id"),
        Index("ix_alerts_user_id_id", "user_id", "id"),
        Index("ix_alerts_rule_id", "rule", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rule: Mapped[str] = mapped_column(String(40))
    cause: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(String(500))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    object_type: Mapped[str | None] = mapped_column(String(40))
    object_id: Mapped[int | None] = mapped_column(BigInteger)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    user = relationship("User", foreign_keys=[user_id])
    acknowledged_by = relationship("User", foreign_keys=[acknowledged_by_id])

    @property
    def is_open(self) -> bool:
        return self.acknowledged_at is None


class Heartbeat(Base):
    """The last time a background process (the sweeper) finished a pass, with what it did."""

    __tablename__ = "heartbeats"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    detail: Mapped[str | None] = mapped_column(String(500))


class AuditRunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"  # it ran and found violations
    ERROR = "error"  # it could not finish


class AuditRun(Base):
    """One run of the audit started from /admin/audit, its result and the time it took."""

    __tablename__ = "audit_runs"
    __table_args__ = (CheckConstraint(one_of("status", AuditRunStatus), name="status_known"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=AuditRunStatus.QUEUED)
    started_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    violation_count: Mapped[int | None] = mapped_column(Integer)
    violations: Mapped[str | None] = mapped_column(Text)  # JSON list of strings
    error: Mapped[str | None] = mapped_column(String(500))
    # Whether it rechecked everything from the start, or only what the last checkpoint
    # had not proven (soma.audit.checkpoint).
    full: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    started_by = relationship("User", foreign_keys=[started_by_id])
