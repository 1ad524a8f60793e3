"""Buying tokens: packages (with SPEC §5's defaults), purchases, their history, provider events.

Purchases keep the provider's references unique (a checkout session, an STK
CheckoutRequestID and a receipt each belong to one purchase), and
`provider_events` records each webhook event id once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# (tokens, bonus tokens, price in US cents)
DEFAULT_PACKAGES = [(50, 0, 500), (100, 0, 1000), (250, 10, 2500), (500, 50, 5000)]


def upgrade():
    op.create_table(
        "provider_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_events")),
        sa.UniqueConstraint("provider", "event_id", name="uq_provider_events_event"),
    )
    op.create_table(
        "token_packages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("bonus_tokens", sa.BigInteger(), nullable=False),
        sa.Column("price_cents", sa.BigInteger(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("sort_order", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("bonus_tokens >= 0", name=op.f("ck_token_packages_bonus_not_negative")),
        sa.CheckConstraint("price_cents > 0", name=op.f("ck_token_packages_price_positive")),
        sa.CheckConstraint("tokens > 0", name=op.f("ck_token_packages_tokens_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_packages")),
    )
    packages = sa.table(
        "token_packages",
        sa.column("tokens", sa.BigInteger),
        sa.column("bonus_tokens", sa.BigInteger),
        sa.column("price_cents", sa.BigInteger),
        sa.column("active", sa.Boolean),
        sa.column("sort_order", sa.Integer),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # SQLite keeps no zone: naive UTC
    op.bulk_insert(
        packages,
        [
            {"tokens": tokens, "bonus_tokens": bonus, "price_cents": cents, "active": True,
             "sort_order": order, "created_at": now}
            for order, (tokens, bonus, cents) in enumerate(DEFAULT_PACKAGES)
        ],
    )  # fmt: skip
    op.create_table(
        "purchases",
        sa.Column("id", BigId, nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("package_id", sa.Integer(), nullable=True),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("bonus_tokens", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("checkout_session_id", sa.String(length=255), nullable=True),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("checkout_request_id", sa.String(length=255), nullable=True),
        sa.Column("receipt", sa.String(length=255), nullable=True),
        sa.Column("phone", sa.String(length=16), nullable=True),
        sa.Column("failure_reason", sa.String(length=255), nullable=True),
        sa.Column("refunded_minor", sa.BigInteger(), nullable=False),
        sa.Column("shortfall_tokens", sa.BigInteger(), nullable=False),
        sa.Column("credited_entry_id", BigId, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "provider IN ('stripe', 'mpesa', 'sandbox')", name=op.f("ck_purchases_provider_known")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'paid', 'failed', 'expired', 'refunded', 'disputed')",
            name=op.f("ck_purchases_status_known"),
        ),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_purchases_amount_positive")),
        sa.CheckConstraint("bonus_tokens >= 0", name=op.f("ck_purchases_bonus_not_negative")),
        sa.CheckConstraint(
            "refunded_minor >= 0 AND refunded_minor <= amount_minor",
            name=op.f("ck_purchases_refund_within"),
        ),
        sa.CheckConstraint("tokens > 0", name=op.f("ck_purchases_tokens_positive")),
        sa.ForeignKeyConstraint(
            ["credited_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_purchases_credited_entry_id_journal_entries"),
        ),
        sa.ForeignKeyConstraint(
            ["package_id"],
            ["token_packages.id"],
            name=op.f("fk_purchases_package_id_token_packages"),
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_purchases_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purchases")),
        sa.UniqueConstraint("checkout_request_id", name="uq_purchases_checkout_request_id"),
        sa.UniqueConstraint("checkout_session_id", name="uq_purchases_checkout_session_id"),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_purchases_idempotency_key")),
        sa.UniqueConstraint("receipt", name="uq_purchases_receipt"),
    )
    op.create_index("ix_purchases_user_id_id", "purchases", ["user_id", "id"])

    op.create_table(
        "purchase_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("purchase_id", BigId, nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("note", sa.String(length=255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["purchase_id"], ["purchases.id"], name=op.f("fk_purchase_events_purchase_id_purchases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purchase_events")),
    )
    op.create_index("ix_purchase_events_purchase_id_id", "purchase_events", ["purchase_id", "id"])


def downgrade():
    op.drop_index("ix_purchase_events_purchase_id_id", table_name="purchase_events")

    op.drop_table("purchase_events")
    op.drop_index("ix_purchases_user_id_id", table_name="purchases")

    op.drop_table("purchases")
    op.drop_table("token_packages")
    op.drop_table("provider_events")
