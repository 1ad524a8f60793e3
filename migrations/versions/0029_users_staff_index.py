"""`ix_users_staff` on users (role), only the rows where role <> 'student': the operator's
metrics count and sum the teachers' and admins' wallets through it and take the
students as the rest, instead of joining every user to every wallet on each view.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

STAFF = "role <> 'student'"


def upgrade():
    op.create_index(
        "ix_users_staff",
        "users",
        ["role"],
        postgresql_where=sa.text(STAFF),
        sqlite_where=sa.text(STAFF),
    )


def downgrade():
    op.drop_index("ix_users_staff", table_name="users")
