"""Flagged accounts, and disputes on purchases.

users.flagged_at / flag_reason mark an account for an admin's look (a refund
or dispute took back tokens already spent). purchases.disputed_minor and
dispute_tokens hold an open or lost dispute's amount and the tokens taken
back for it. Plain ADD COLUMNs (no table copy, so SQLite keeps every trigger).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "purchases",
        sa.Column("disputed_minor", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "purchases",
        sa.Column("dispute_tokens", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column("users", sa.Column("flagged_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("flag_reason", sa.String(length=255), nullable=True))


def downgrade():
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("flag_reason")
        batch_op.drop_column("flagged_at")
    with op.batch_alter_table("purchases") as batch_op:
        batch_op.drop_column("dispute_tokens")
        batch_op.drop_column("disputed_minor")
