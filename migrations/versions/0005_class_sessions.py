"""Class sessions and their events (SPEC §3).

A class row keeps its clock as bookkeeping (active seconds so far, the time it
last started running, when it falls due, when it was paused) and a version
that every change bumps; `class_events` records each start, pause, resume and
ending with who and when. `due_at` and `paused_at` are indexed with the status
so that the sweeper finds due classes without scanning.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "class_sessions",
        sa.Column("id", BigId, nullable=False),
        sa.Column("booking_key", sa.String(length=200), nullable=False),
        sa.Column("student_id", sa.Integer(), nullable=False),
        sa.Column("teacher_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=120), nullable=False),
        sa.Column("scheduled_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("cost_tokens", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("active_seconds", sa.Integer(), nullable=False),
        sa.Column("running_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.Column("hold_entry_id", BigId, nullable=True),
        sa.Column("closing_entry_id", BigId, nullable=True),
        sa.Column("charged_tokens", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('scheduled', 'in_progress', 'paused', 'completed', 'ended_early', 'aborted', 'cancelled')",
            name=op.f("ck_class_sessions_status_known"),
        ),
        sa.CheckConstraint(
            "active_seconds >= 0", name=op.f("ck_class_sessions_active_not_negative")
        ),
        sa.CheckConstraint(
            "charged_tokens IS NULL OR (charged_tokens >= 0 AND charged_tokens <= cost_tokens)",
            name=op.f("ck_class_sessions_charge_within_cost"),
        ),
        sa.CheckConstraint("cost_tokens > 0", name=op.f("ck_class_sessions_cost_positive")),
        sa.CheckConstraint(
            "duration_minutes IN (30, 45, 60, 90, 120)",
            name=op.f("ck_class_sessions_duration_allowed"),
        ),
        sa.CheckConstraint(
            "student_id <> teacher_id", name=op.f("ck_class_sessions_not_with_oneself")
        ),
        sa.ForeignKeyConstraint(
            ["closing_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_class_sessions_closing_entry_id_journal_entries"),
        ),
        sa.ForeignKeyConstraint(
            ["hold_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_class_sessions_hold_entry_id_journal_entries"),
        ),
        sa.ForeignKeyConstraint(
            ["student_id"], ["users.id"], name=op.f("fk_class_sessions_student_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["teacher_id"], ["users.id"], name=op.f("fk_class_sessions_teacher_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_class_sessions")),
        sa.UniqueConstraint("booking_key", name=op.f("uq_class_sessions_booking_key")),
    )
    op.create_index("ix_class_sessions_status_due_at", "class_sessions", ["status", "due_at"])
    op.create_index("ix_class_sessions_status_paused_at", "class_sessions", ["status", "paused_at"])
    op.create_index(
        "ix_class_sessions_student_id_scheduled_start",
        "class_sessions",
        ["student_id", "scheduled_start"],
    )
    op.create_index(
        "ix_class_sessions_teacher_id_scheduled_start",
        "class_sessions",
        ["teacher_id", "scheduled_start"],
    )

    op.create_table(
        "class_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("class_id", BigId, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("active_seconds", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=False),
        sa.CheckConstraint(
            "kind IN ('start', 'pause', 'resume', 'complete', 'end_early', 'abort', 'cancel')",
            name=op.f("ck_class_events_kind_known"),
        ),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_class_events_actor_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["class_id"],
            ["class_sessions.id"],
            name=op.f("fk_class_events_class_id_class_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_class_events")),
    )
    op.create_index("ix_class_events_class_id_id", "class_events", ["class_id", "id"])


def downgrade():
    op.drop_index("ix_class_events_class_id_id", table_name="class_events")

    op.drop_table("class_events")
    op.drop_index("ix_class_sessions_teacher_id_scheduled_start", table_name="class_sessions")
    op.drop_index("ix_class_sessions_student_id_scheduled_start", table_name="class_sessions")
    op.drop_index("ix_class_sessions_status_paused_at", table_name="class_sessions")
    op.drop_index("ix_class_sessions_status_due_at", table_name="class_sessions")

    op.drop_table("class_sessions")
