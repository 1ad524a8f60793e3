"""Withdrawals: teachers' payout methods, withdrawal requests and their status history.

- `payout_methods`: a teacher's sandbox, M-Pesa, bank or Stripe method. A partial
  unique index keeps one current default per teacher (`is_default AND removed_at
  IS NULL`). A bank account number is stored encrypted (`account_number_sealed`,
  Fernet) beside its last four digits; a Stripe connected account belongs to one
  method.
- `withdrawals`: the amounts fixed at request (USD asked, tokens held, fee, net,
  fee tokens), checked by constraints (the fee is taken from the payout; the fee
  tokens are fewer than the tokens), the status with its compare-and-set
  `version`, the hold and the entry that closed it, and the provider's ids.
  The form's nonce (`key`) and the provider's request id are unique.
- `withdrawal_events`: every change of status, with who (an admin, or none) and why.

New tables only: nothing existing is altered, so SQLite needs no table copy.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CURRENT_DEFAULT = "is_default AND removed_at IS NULL"


def upgrade():
    op.create_table(
        "payout_methods",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("phone", sa.String(length=12), nullable=True),
        sa.Column("account_holder", sa.String(length=120), nullable=True),
        sa.Column("bank_name", sa.String(length=120), nullable=True),
        sa.Column("account_number_sealed", sa.String(length=512), nullable=True),
        sa.Column("account_last4", sa.String(length=4), nullable=True),
        sa.Column("stripe_account_id", sa.String(length=255), nullable=True),
        sa.Column("transfers_active", sa.Boolean(), nullable=False),
        sa.Column("payouts_enabled", sa.Boolean(), nullable=False),
        sa.Column("requirements", sa.String(length=1000), nullable=False),
        sa.CheckConstraint(
            "kind IN ('sandbox', 'mpesa', 'bank', 'stripe')",
            name=op.f("ck_payout_methods_kind_known"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_payout_methods_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payout_methods")),
        sa.UniqueConstraint("stripe_account_id", name="uq_payout_methods_stripe_account_id"),
    )
    op.create_index("ix_payout_methods_user_id_id", "payout_methods", ["user_id", "id"])
    op.create_index(
        "uq_payout_methods_one_default",
        "payout_methods",
        ["user_id"],
        unique=True,
        postgresql_where=sa.text(CURRENT_DEFAULT),
        sqlite_where=sa.text(CURRENT_DEFAULT),
    )

    op.create_table(
        "withdrawals",
        sa.Column("id", BigId, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("method_id", sa.Integer(), nullable=False),
        sa.Column("usd_cents", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("fee_cents", sa.BigInteger(), nullable=False),
        sa.Column("net_cents", sa.BigInteger(), nullable=False),
        sa.Column("fee_tokens", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("review_reason", sa.String(length=255), nullable=False),
        sa.Column("hold_entry_id", BigId, nullable=True),
        sa.Column("closed_entry_id", BigId, nullable=True),
        sa.Column("provider_request_id", sa.String(length=255), nullable=True),
        sa.Column("provider_reference", sa.String(length=255), nullable=True),
        sa.Column("failure_reason", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processing_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('requested', 'processing', 'paid', 'failed', 'rejected')",
            name=op.f("ck_withdrawals_status_known"),
        ),
        sa.CheckConstraint(
            "usd_cents > 0 AND tokens > 0", name=op.f("ck_withdrawals_amount_positive")
        ),
        sa.CheckConstraint(
            "fee_cents >= 0 AND net_cents > 0 AND net_cents + fee_cents = usd_cents",
            name=op.f("ck_withdrawals_fee_from_payout"),
        ),
        sa.CheckConstraint(
            "fee_tokens >= 0 AND fee_tokens < tokens",
            name=op.f("ck_withdrawals_fee_tokens_within"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_withdrawals_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["method_id"],
            ["payout_methods.id"],
            name=op.f("fk_withdrawals_method_id_payout_methods"),
        ),
        sa.ForeignKeyConstraint(
            ["hold_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_withdrawals_hold_entry_id_journal_entries"),
        ),
        sa.ForeignKeyConstraint(
            ["closed_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_withdrawals_closed_entry_id_journal_entries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_withdrawals")),
        sa.UniqueConstraint("key", name=op.f("uq_withdrawals_key")),
        sa.UniqueConstraint("provider_request_id", name="uq_withdrawals_provider_request_id"),
    )
    op.create_index("ix_withdrawals_user_id_id", "withdrawals", ["user_id", "id"])
    op.create_index("ix_withdrawals_status_id", "withdrawals", ["status", "id"])

    op.create_table(
        "withdrawal_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("withdrawal_id", BigId, nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("note", sa.String(length=255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["withdrawal_id"],
            ["withdrawals.id"],
            name=op.f("fk_withdrawal_events_withdrawal_id_withdrawals"),
        ),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_withdrawal_events_actor_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_withdrawal_events")),
    )
    op.create_index(
        "ix_withdrawal_events_withdrawal_id_id", "withdrawal_events", ["withdrawal_id", "id"]
    )


def downgrade():
    op.drop_index("ix_withdrawal_events_withdrawal_id_id", table_name="withdrawal_events")
    op.drop_table("withdrawal_events")
    op.drop_index("ix_withdrawals_status_id", table_name="withdrawals")
    op.drop_index("ix_withdrawals_user_id_id", table_name="withdrawals")
    op.drop_table("withdrawals")
    op.drop_index("uq_payout_methods_one_default", table_name="payout_methods")
    op.drop_index("ix_payout_methods_user_id_id", table_name="payout_methods")
    op.drop_table("payout_methods")
