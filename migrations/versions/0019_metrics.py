"""The operator's metrics: the ledger's entries summed by day, and wallets' last activity.

- `metrics_checkpoint` (one row, `through_entry_id`), `metrics_days` (per UTC day
  "YYYY-MM-DD": entries, class payments and their margin, paid withdrawals and their
  fees, refunds and their value, in cents at the entries' frozen values) and
  `metrics_wallets` (per user's wallet, its latest posting and the user's role): sums of the entries with id <=
  through_entry_id. A cache of the ledger, never a source (soma.models.metrics): /admin/
  fills them as it is viewed. Empty here; dropping them on downgrade loses nothing.
- `ix_purchases_status_updated_at` on purchases (status, updated_at): the failed
  payments of the last 30 days without reading every purchase.

On a large purchases table the index build blocks writes to purchases while it runs.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "metrics_checkpoint",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("through_entry_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_metrics_checkpoint_one_row")),
        sa.CheckConstraint(
            "through_entry_id >= 0", name=op.f("ck_metrics_checkpoint_through_not_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metrics_checkpoint")),
    )
    op.create_table(
        "metrics_days",
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("classes", sa.BigInteger(), nullable=False),
        sa.Column("margin_cents", sa.BigInteger(), nullable=False),
        sa.Column("withdrawals", sa.BigInteger(), nullable=False),
        sa.Column("fee_cents", sa.BigInteger(), nullable=False),
        sa.Column("refunds", sa.BigInteger(), nullable=False),
        sa.Column("refund_cents", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("entries >= 0", name=op.f("ck_metrics_days_entries_not_negative")),
        sa.CheckConstraint("classes >= 0", name=op.f("ck_metrics_days_classes_not_negative")),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_metrics_days")),
    )
    op.create_table(
        "metrics_wallets",
        sa.Column("wallet_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_metrics_wallets_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("wallet_id", name=op.f("pk_metrics_wallets")),
    )
    op.create_index(
        "ix_metrics_wallets_last_at",
        "metrics_wallets",
        ["last_at"],
        postgresql_include=["wallet_id", "role"],
    )
    op.create_index("ix_purchases_status_updated_at", "purchases", ["status", "updated_at"])


def downgrade():
    op.drop_index("ix_purchases_status_updated_at", table_name="purchases")
    op.drop_index("ix_metrics_wallets_last_at", table_name="metrics_wallets")
    op.drop_table("metrics_wallets")
    op.drop_table("metrics_days")
    op.drop_table("metrics_checkpoint")
