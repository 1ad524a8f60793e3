"""The session version: ending every session of an account.

users.session_version is copied into a session at log-in and checked on every
request; raising it (log-out, a password change, an admin's freeze) ends every
session made before. A plain ADD COLUMN (no table copy, so SQLite keeps every
trigger); existing users start at 0, as new ones do.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "users",
        sa.Column("session_version", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade():
    # A plain DROP COLUMN (SQLite 3.35+ has it): a batch copy of users would have to drop
    # the table that wallets and every other user row's references point at.
    op.drop_column("users", "session_version")
