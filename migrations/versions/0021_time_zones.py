"""Each user's time zone and whether their notifications also go by email.

- users.time_zone: an IANA name ("Africa/Nairobi"), guessed from the browser at sign-up
  and changed at /account. Existing accounts start at "UTC", the zone every page showed.
- users.email_notifications: whether the in-app notifications are also mailed; on for
  everyone unless they turn it off at /account.

Plain ADD COLUMNs (no table copy, so SQLite keeps every trigger and reference to users).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "users",
        sa.Column("time_zone", sa.String(64), server_default="UTC", nullable=False),
    )
    op.add_column(
        "users",
        sa.Column("email_notifications", sa.Boolean(), server_default=sa.true(), nullable=False),
    )


def downgrade():
    # Plain DROP COLUMNs (SQLite 3.35+): a batch copy of users would have to drop the
    # table that wallets and every other user row's references point at.
    op.drop_column("users", "email_notifications")
    op.drop_column("users", "time_zone")
