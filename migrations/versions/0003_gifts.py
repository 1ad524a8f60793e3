"""Gifts: tokens one student gives another; the ledger's GIFT entry references the row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "gifts",
        sa.Column("id", BigId, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("sender_id", sa.Integer(), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("sender_id <> recipient_id", name=op.f("ck_gifts_not_to_self")),
        sa.CheckConstraint("tokens > 0", name=op.f("ck_gifts_tokens_positive")),
        sa.ForeignKeyConstraint(
            ["recipient_id"], ["users.id"], name=op.f("fk_gifts_recipient_id_users")
        ),
        sa.ForeignKeyConstraint(["sender_id"], ["users.id"], name=op.f("fk_gifts_sender_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gifts")),
        sa.UniqueConstraint("key", name=op.f("uq_gifts_key")),
    )
    op.create_index("ix_gifts_recipient_id", "gifts", ["recipient_id"])
    op.create_index("ix_gifts_sender_id", "gifts", ["sender_id"])


def downgrade():
    op.drop_index("ix_gifts_sender_id", table_name="gifts")
    op.drop_index("ix_gifts_recipient_id", table_name="gifts")
    op.drop_table("gifts")
