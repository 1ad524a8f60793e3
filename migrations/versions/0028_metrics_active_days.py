"""Active wallets by day: `metrics_active_days` (per UTC day "YYYY-MM-DD" and role, how
many users' wallets have their latest posting, `metrics_wallets.last_at`, in that day).

The operator's metrics count the active wallets from these day rows (and the window's
first day and the tail) rather than reading a row per active wallet. A cache of the
ledger like the rest of the rollup: filled here from `metrics_wallets`, then kept by
each fold; dropping it on downgrade loses nothing.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

# Fixed SQL: the day expression is one of two literals, no input.
DAY = ("strftime('%Y-%m-%d', last_at)", "to_char(timezone('UTC', last_at), 'YYYY-MM-DD')")
BACKFILL = """
    INSERT INTO metrics_active_days (day, role, wallets)
    SELECT {day}, role, count(*) FROM metrics_wallets GROUP BY {day}, role
"""


def upgrade():
    op.create_table(
        "metrics_active_days",
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("wallets", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "role", name=op.f("pk_metrics_active_days")),
    )
    op.execute(BACKFILL.format(day=DAY[op.get_bind().dialect.name == "postgresql"]))


def downgrade():
    op.drop_table("metrics_active_days")
