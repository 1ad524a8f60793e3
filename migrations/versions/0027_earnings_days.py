"""Earnings by day: `earnings_days` (per teacher wallet and UTC day "YYYY-MM-DD", the
frozen cents of its class payments up to the wallet's earnings checkpoint).

The dashboard's "last month up to the same point" sums these whole days and reads only
the rest of the last day (and the tail after the checkpoint) from the ledger, instead
of a month of payments. A cache of the ledger like `earnings_months`: filled here from
the postings up to each existing checkpoint (so checkpoints already made stay whole),
then by the dashboard as it moves checkpoints on; dropping it on downgrade loses
nothing.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "earnings_days",
        sa.Column("wallet_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("cents", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("cents >= 0", name=op.f("ck_earnings_days_cents_not_negative")),
        sa.ForeignKeyConstraint(
            ["wallet_id"],
            ["earnings_checkpoints.wallet_id"],
            name=op.f("fk_earnings_days_wallet_id_earnings_checkpoints"),
        ),
        sa.PrimaryKeyConstraint("wallet_id", "day", name=op.f("pk_earnings_days")),
    )
    # The existing checkpoints' days, as soma.earnings.service sums them: each class
    # payment's share of its entry's frozen teacher value, rounded half up.
    # (Fixed SQL: the day expression is one of two literals, no input.)
    op.execute(BACKFILL.format(day=DAY[op.get_bind().dialect.name == "postgresql"]))


DAY = ("strftime('%Y-%m-%d', p.created_at)", "to_char(timezone('UTC', p.created_at), 'YYYY-MM-DD')")
BACKFILL = """
        INSERT INTO earnings_days (wallet_id, day, cents)
        SELECT p.wallet_id, {day},
               sum((p.amount * e.teacher_usd_cents * 2 + e.tokens) / (e.tokens * 2))
        FROM postings p
        JOIN earnings_checkpoints c ON c.wallet_id = p.wallet_id AND p.seq <= c.through_seq
        JOIN journal_entries e ON e.id = p.entry_id
        WHERE p.kind = 'class_settle' AND p.amount > 0
        GROUP BY p.wallet_id, {day}
        """


def downgrade():
    op.drop_table("earnings_days")
