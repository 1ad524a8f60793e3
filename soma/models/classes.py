"""Class sessions: a student's booking of a teacher, its clock, and its history of events.

The clock is kept as bookkeeping, never as a running counter: `active_seconds`
accumulated up to the last pause, plus the time since `running_since` while the
class runs. `due_at` (while it runs) is when active time reaches the planned
time; the sweeper finds due classes by it. Every change of state bumps
`version`, and is written by a conditional UPDATE on it (see soma.classes.service).

A class occupies its teacher and its student for its booked time,
[scheduled_start, scheduled_end), while it is not final. Two such intervals of
one teacher, or of one student, never overlap: the booking service checks it,
and on PostgreSQL an exclusion constraint enforces it (see migration 0012;
on SQLite a booking's check and insert run under the database's one write lock).
A class may start up to ten minutes early and run past its booked end while
paused; what keeps those real times apart is that a teacher, and a student,
have at most one class in progress or paused at a time (a partial unique index
on each database).
"""

import enum
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, text
from sqlalchemy.dialects.postgresql import ExcludeConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from soma.models.base import Base, BigId, UTCDateTime, one_of, utcnow


class ClassStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    IN_PROGRESS = "in_progress"
    PAUSED = "paused"
    COMPLETED = "completed"
    ENDED_EARLY = "ended_early"
    ABORTED = "aborted"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset(
    {ClassStatus.COMPLETED, ClassStatus.ENDED_EARLY, ClassStatus.ABORTED, ClassStatus.CANCELLED}
)
# The statuses in which the student's tokens are held.
HOLDING_STATUSES = frozenset({ClassStatus.IN_PROGRESS, ClassStatus.PAUSED})
# The statuses in which a class occupies its teacher's and its student's time.
OCCUPYING_STATUSES = frozenset(set(ClassStatus) - FINAL_STATUSES)

# SQL conditions on a class row's status, for the indexes and constraints below.
_OCCUPYING = text(one_of("status", sorted(OCCUPYING_STATUSES)))
_LIVE = text(one_of("status", sorted(HOLDING_STATUSES)))

STATUS_LABELS = {
    ClassStatus.SCHEDULED: "Scheduled",
    ClassStatus.IN_PROGRESS: "In progress",
    ClassStatus.PAUSED: "Paused",
    ClassStatus.COMPLETED: "Completed",
    ClassStatus.ENDED_EARLY: "Ended early",
    ClassStatus.ABORTED: "Aborted",
    ClassStatus.CANCELLED: "Cancelled",
}


class ClassEventKind(enum.StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    COMPLETE = "complete"
    END_EARLY = "end_early"
    ABORT = "abort"
    CANCEL = "cancel"


# The durations a class can be booked for, in minutes.
DURATIONS = (30, 45, 60, 90, 120)


class ClassSession(Base):
    __tablename__ = "class_sessions"
    __table_args__ = (
        CheckConstraint(one_of("status", ClassStatus), name="status_known"),
        CheckConstraint(
            f"duration_minutes IN ({', '.join(map(str, DURATIONS))})", name="duration_allowed"
        ),
        CheckConstraint("cost_tokens > 0", name="cost_positive"),
        CheckConstraint("active_seconds >= 0", name="active_not_negative"),
        CheckConstraint("student_id <> teacher_id", name="not_with_oneself"),
        CheckConstraint(
            "charged_tokens IS NULL OR (charged_tokens >= 0 AND charged_tokens <= cost_tokens)",
            name="charge_within_cost",
        ),
        Index("ix_class_sessions_student_id_scheduled_start", "student_id", "scheduled_start"),
        Index("ix_class_sessions_teacher_id_scheduled_start", "teacher_id", "scheduled_start"),
        Index("ix_class_sessions_status_due_at", "status", "due_at"),
        Index("ix_class_sessions_status_paused_at", "status", "paused_at"),
        # The sweeper's class reminders: scheduled classes starting soon (soma.reminders).
        Index("ix_class_sessions_status_scheduled_start", "status", "scheduled_start"),
        CheckConstraint("scheduled_end > scheduled_start", name="ends_after_start"),
        # One class in progress or paused per teacher, and per student.
        Index(
            "uq_class_sessions_live_teacher",
            "teacher_id",
            unique=True,
            postgresql_where=_LIVE,
            sqlite_where=_LIVE,
        ),
        Index(
            "uq_class_sessions_live_student",
            "student_id",
            unique=True,
            postgresql_where=_LIVE,
            sqlite_where=_LIVE,
        ),
        # No two booked times of a teacher, or of a student, overlap (PostgreSQL only:
        # SQLite has no exclusion constraint; there the booking service's check guards).
        ExcludeConstraint(
            ("teacher_id", "="),
            (text("tstzrange(scheduled_start, scheduled_end)"), "&&"),
            name="ex_class_sessions_teacher_time",
            using="gist",
            where=_OCCUPYING,
        ).ddl_if(dialect="postgresql"),
        ExcludeConstraint(
            ("student_id", "="),
            (text("tstzrange(scheduled_start, scheduled_end)"), "&&"),
            name="ex_class_sessions_student_time",
            using="gist",
            where=_OCCUPYING,
        ).ddl_if(dialect="postgresql"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # The student's booking nonce: a double submit finds the first booking.
    booking_key: Mapped[str] = mapped_column(String(200), unique=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    teacher_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    title: Mapped[str] = mapped_column(String(120))
    scheduled_start: Mapped[datetime] = mapped_column(UTCDateTime())
    scheduled_end: Mapped[datetime] = mapped_column(UTCDateTime())  # start + duration
    duration_minutes: Mapped[int] = mapped_column(Integer)
    cost_tokens: Mapped[int] = mapped_column(BigInteger)  # frozen at booking
    status: Mapped[str] = mapped_column(String(16), default=ClassStatus.SCHEDULED.value)
    version: Mapped[int] = mapped_column(Integer, default=0)
    active_seconds: Mapped[int] = mapped_column(Integer, default=0)
    running_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    end_reason: Mapped[str | None] = mapped_column(String(32))
    hold_entry_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"))
    closing_entry_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"))
    charged_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # Where the class happens (a video call's https link), set by its teacher.
    meeting_url: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    student = relationship("User", foreign_keys=[student_id])
    teacher = relationship("User", foreign_keys=[teacher_id])

    @property
    def planned_seconds(self) -> int:
        return self.duration_minutes * 60

    @property
    def status_label(self) -> str:
        return STATUS_LABELS[ClassStatus(self.status)]

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class ClassEvent(Base):
    """One thing that happened to a class: who did it, when, and the active time after it."""

    __tablename__ = "class_events"
    __table_args__ = (
        CheckConstraint(one_of("kind", ClassEventKind), name="kind_known"),
        Index("ix_class_events_class_id_id", "class_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("class_sessions.id"))
    kind: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))  # None: the system
    active_seconds: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(String(200), default="")

    actor = relationship("User", foreign_keys=[actor_id])
