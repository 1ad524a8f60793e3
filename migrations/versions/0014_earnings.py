"""Earnings: teachers' class payments summed by month, and an index of those payments.

- `earnings_checkpoints` (one row per teacher wallet, `through_seq`) and
  `earnings_months` (per wallet and UTC month "YYYY-MM": classes, active seconds,
  tokens, frozen cents): the sums of the wallet's class payments with seq <=
  through_seq. A cache of the ledger, never a source (soma.models.earnings): the
  dashboard fills them as teachers look, and the audit recomputes them. Empty here;
  dropping them on downgrade loses nothing.
- `ix_postings_class_pay` on postings (wallet_id, created_at), only the rows where
  kind = 'class_settle' AND amount > 0: a class settle's credit to its teacher (and
  the student's change, on the student's own wallet). The dashboard reads last month's
  payments up to a point in time through it. The ledger's other writes (holds,
  purchases, a settle's debit) skip it, so a class settle carries one index entry more
  and nothing else does. On PostgreSQL it also carries entry_id and amount (INCLUDE),
  so the postings side of those reads is the index alone.

On a large postings table the index build blocks writes to postings while it runs;
run it at a quiet time.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

CLASS_PAY = "kind = 'class_settle' AND amount > 0"


def upgrade():
    op.create_table(
        "earnings_checkpoints",
        sa.Column("wallet_id", sa.Integer(), nullable=False),
        sa.Column("through_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "through_seq >= 0", name=op.f("ck_earnings_checkpoints_through_seq_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_earnings_checkpoints_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("wallet_id", name=op.f("pk_earnings_checkpoints")),
    )
    op.create_table(
        "earnings_months",
        sa.Column("wallet_id", sa.Integer(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("classes", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("cents", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("classes > 0", name=op.f("ck_earnings_months_classes_positive")),
        sa.CheckConstraint("seconds >= 0", name=op.f("ck_earnings_months_seconds_not_negative")),
        sa.CheckConstraint("tokens > 0", name=op.f("ck_earnings_months_tokens_positive")),
        sa.CheckConstraint("cents >= 0", name=op.f("ck_earnings_months_cents_not_negative")),
        sa.ForeignKeyConstraint(
            ["wallet_id"],
            ["earnings_checkpoints.wallet_id"],
            name=op.f("fk_earnings_months_wallet_id_earnings_checkpoints"),
        ),
        sa.PrimaryKeyConstraint("wallet_id", "month", name=op.f("pk_earnings_months")),
    )
    op.create_index(
        "ix_postings_class_pay",
        "postings",
        ["wallet_id", "created_at"],
        postgresql_include=["entry_id", "amount"],
        postgresql_where=sa.text(CLASS_PAY),
        sqlite_where=sa.text(CLASS_PAY),
    )


def downgrade():
    op.drop_index("ix_postings_class_pay", table_name="postings")
    op.drop_table("earnings_months")
    op.drop_table("earnings_checkpoints")
