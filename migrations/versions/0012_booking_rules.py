"""Booking rules: a class's booked end, no overlapping bookings, one live class per person.

class_sessions.scheduled_end is the booked start plus the booked duration
(filled here for existing classes). A class occupies its teacher and its
student for [scheduled_start, scheduled_end) until it is final.

- On PostgreSQL, two exclusion constraints (GiST, with btree_gist for the `=`
  on the ids) refuse two non-final classes of one teacher, or of one student,
  whose booked times overlap: `EXCLUDE USING gist (teacher_id WITH =,
  tstzrange(scheduled_start, scheduled_end) WITH &&) WHERE (status is not
  final)`, and the same for student_id. The range is half-open, so a class may
  start when the one before it is booked to end.
- SQLite has no exclusion constraint. There the booking service's check is the
  guard: SQLite runs one writer at a time, and a booking starts with a write
  (of nothing), so its check and its insert happen under that one write lock
  and a concurrent booking's check sees it (soma.classes.service.book).
- On both databases, a partial unique index on teacher_id, and one on
  student_id, over the classes in progress or paused: a teacher (or a student)
  has at most one live class. A class may start ten minutes early and run past
  its booked end while paused, so this is what keeps the real times apart.

An existing database where the old code let such classes be booked cannot take
the constraints: the upgrade stops, naming the classes, before it changes
anything. Cancel one class of each pair (nothing is held for a scheduled
class), then upgrade again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

OCCUPYING = "status IN ('in_progress', 'paused', 'scheduled')"
LIVE = "status IN ('in_progress', 'paused')"

EXCLUSIONS = {
    "ex_class_sessions_teacher_time": "teacher_id",
    "ex_class_sessions_student_time": "student_id",
}
LIVE_INDEXES = {
    "uq_class_sessions_live_teacher": "teacher_id",
    "uq_class_sessions_live_student": "student_id",
}


def upgrade():
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    _refuse_conflicts(bind)  # first: SQLite's DDL is not transactional
    with op.batch_alter_table("class_sessions") as batch:
        batch.add_column(sa.Column("scheduled_end", sa.DateTime(timezone=True), nullable=True))
    _fill_scheduled_end(bind, postgres)
    with op.batch_alter_table("class_sessions") as batch:
        batch.alter_column(
            "scheduled_end", existing_type=sa.DateTime(timezone=True), nullable=False
        )
        batch.create_check_constraint(
            op.f("ck_class_sessions_ends_after_start"), "scheduled_end > scheduled_start"
        )
    for name, column in LIVE_INDEXES.items():
        op.create_index(
            name,
            "class_sessions",
            [column],
            unique=True,
            postgresql_where=sa.text(LIVE),
            sqlite_where=sa.text(LIVE),
        )
    if postgres:
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        for name, column in EXCLUSIONS.items():
            op.execute(
                f"ALTER TABLE class_sessions ADD CONSTRAINT {name} EXCLUDE USING gist "
                f"({column} WITH =, tstzrange(scheduled_start, scheduled_end) WITH &&) "
                f"WHERE ({OCCUPYING})"
            )


def _fill_scheduled_end(bind, postgres: bool) -> None:
    if postgres:
        op.execute(
            "UPDATE class_sessions "
            "SET scheduled_end = scheduled_start + duration_minutes * interval '1 minute'"
        )
        return
    # SQLite keeps datetimes as text in SQLAlchemy's format: compute them in Python.
    sessions = sa.table(
        "class_sessions",
        sa.column("id", sa.Integer()),
        sa.column("scheduled_start", sa.DateTime()),
        sa.column("duration_minutes", sa.Integer()),
        sa.column("scheduled_end", sa.DateTime()),
    )
    rows = bind.execute(
        sa.select(sessions.c.id, sessions.c.scheduled_start, sessions.c.duration_minutes)
    ).all()
    for class_id, start, minutes in rows:
        bind.execute(
            sessions.update()
            .where(sessions.c.id == class_id)
            .values(scheduled_end=start + timedelta(minutes=minutes))
        )


def _refuse_conflicts(bind) -> None:
    """Stop, naming them, if classes that are not final overlap or two are live at once."""
    sessions = sa.table(
        "class_sessions",
        sa.column("id", sa.Integer()),
        sa.column("teacher_id", sa.Integer()),
        sa.column("student_id", sa.Integer()),
        sa.column("status", sa.String()),
        sa.column("scheduled_start", sa.DateTime()),
        sa.column("duration_minutes", sa.Integer()),
    )
    rows = bind.execute(
        sa.select(sessions)
        .where(sessions.c.status.in_(["scheduled", "in_progress", "paused"]))
        .order_by(sessions.c.scheduled_start, sessions.c.id)
    ).all()
    problems = []
    for who in ("teacher", "student"):
        latest_end, live = {}, {}
        for row in rows:
            person = getattr(row, f"{who}_id")
            end = row.scheduled_start + timedelta(minutes=row.duration_minutes)
            before = latest_end.get(person)
            if before is not None and row.scheduled_start < before[1]:
                problems.append(f"classes {before[0]} and {row.id} overlap (same {who})")
            if before is None or end > before[1]:
                latest_end[person] = (row.id, end)
            if row.status != "scheduled":
                if person in live:
                    problems.append(f"classes {live[person]} and {row.id} are both live ({who})")
                live[person] = row.id
    if problems:
        raise RuntimeError(
            "Cannot add the booking constraints: "
            + "; ".join(problems)
            + ". Cancel (or end) one class of each, then upgrade again."
        )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for name in EXCLUSIONS:
            op.execute(f"ALTER TABLE class_sessions DROP CONSTRAINT {name}")
    for name in LIVE_INDEXES:
        op.drop_index(name, table_name="class_sessions")
    with op.batch_alter_table("class_sessions") as batch:
        batch.drop_constraint(op.f("ck_class_sessions_ends_after_start"), type_="check")
        batch.drop_column("scheduled_end")
