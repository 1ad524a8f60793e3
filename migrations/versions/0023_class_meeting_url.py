"""Where a class happens: `class_sessions.meeting_url`, set by its teacher, shown to both.

A nullable column, added and dropped in place (no table copy on SQLite).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("class_sessions", sa.Column("meeting_url", sa.String(length=500), nullable=True))


def downgrade():
    op.drop_column("class_sessions", "meeting_url")
