"""The mail outbox, and the index the class reminders read.

- `outbox`: one row per email, inserted in the transaction that has something to say
  and sent by the sweeper after the commit (soma.mail). `key` is unique, so the same
  reminder or notification is queued once; the partial index on `next_attempt_at`
  holds only the rows still waiting, which is all the drain reads.
- `ix_class_sessions_status_scheduled_start`: scheduled classes starting in the next
  minutes, for the sweeper's reminders (soma.reminders).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

WAITING = sa.text("sent_at IS NULL AND failed_at IS NULL")


def upgrade():
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("to_address", sa.String(length=254), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_outbox_user_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("uq_outbox_key", "outbox", ["key"], unique=True)
    op.create_index(
        "ix_outbox_waiting_next_attempt_at",
        "outbox",
        ["next_attempt_at"],
        postgresql_where=WAITING,
        sqlite_where=WAITING,
    )
    op.create_index("ix_outbox_user_id_id", "outbox", ["user_id", "id"])
    op.create_index(
        "ix_class_sessions_status_scheduled_start",
        "class_sessions",
        ["status", "scheduled_start"],
    )


def downgrade():
    op.drop_index("ix_class_sessions_status_scheduled_start", table_name="class_sessions")
    op.drop_index("ix_outbox_user_id_id", table_name="outbox")
    op.drop_index("ix_outbox_waiting_next_attempt_at", table_name="outbox")
    op.drop_index("uq_outbox_key", table_name="outbox")
    op.drop_table("outbox")
