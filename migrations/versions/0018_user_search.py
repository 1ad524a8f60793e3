"""The operator's user search: trigram indexes on users' emails and display names.

/admin/users finds an account by any part of its email or its name (see
soma.admin.users for why a substring, not a prefix). On PostgreSQL, pg_trgm's GIN
indexes on lower(email) and lower(display_name) make `lower(x) LIKE '%text%'` an index
scan. pg_trgm is a trusted extension (PostgreSQL 13 and later): the database's owner can
create it. SQLite gets nothing: it scans, which is fine for development.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE INDEX ix_users_email_trgm ON users USING gin (lower(email) gin_trgm_ops)")
    op.execute(
        "CREATE INDEX ix_users_display_name_trgm ON users "
        "USING gin (lower(display_name) gin_trgm_ops)"
    )


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX ix_users_display_name_trgm")
    op.execute("DROP INDEX ix_users_email_trgm")
    # pg_trgm stays: another schema object may use it, and it costs nothing unused.
