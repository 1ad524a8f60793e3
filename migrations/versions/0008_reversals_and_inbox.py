"""Refunds and disputes as records of their own; the provider inbox; unmatched payments.

- purchase_reversals: one row per refund and per dispute. Purchases lose their
  running counters (refunded_minor, shortfall_tokens, disputed_minor,
  dispute_tokens): each purchase that had any gets "legacy:" reversal rows that
  carry the same amounts and tokens, so nothing is lost and the status still
  derives from them.
- purchases gain merchant_request_id and push_started_at (the STK push's claim,
  which used to be a "claim:" placeholder in checkout_request_id).
- provider_events keep their raw body, and whether each was handled, ignored
  (with why) or is to be retried.
- unmatched_payments: M-Pesa payments for a request we do not know.

SQLite rebuilds purchases and provider_events to drop columns and add a CHECK
(neither table has triggers); foreign keys are off while it does.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "purchase_reversals",
        sa.Column("id", BigId, nullable=False),
        sa.Column("purchase_id", BigId, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("provider_ref", sa.String(length=255), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tokens_taken", sa.BigInteger(), nullable=False),
        sa.Column("bonus_taken", sa.BigInteger(), nullable=False),
        sa.Column("tokens_short", sa.BigInteger(), nullable=False),
        sa.Column("bonus_short", sa.BigInteger(), nullable=False),
        sa.Column("moves", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_purchase_reversals_amount_positive")),
        sa.CheckConstraint(
            "kind IN ('refund', 'dispute')", name=op.f("ck_purchase_reversals_kind_known")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'open', 'won', 'lost')",
            name=op.f("ck_purchase_reversals_status_known"),
        ),
        sa.CheckConstraint(
            "tokens_taken >= 0 AND bonus_taken >= 0 AND tokens_short >= 0 AND bonus_short >= 0",
            name=op.f("ck_purchase_reversals_taken_not_negative"),
        ),
        sa.ForeignKeyConstraint(
            ["purchase_id"],
            ["purchases.id"],
            name=op.f("fk_purchase_reversals_purchase_id_purchases"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purchase_reversals")),
        sa.UniqueConstraint("provider_ref", name="uq_purchase_reversals_provider_ref"),
    )
    op.create_index(
        "ix_purchase_reversals_purchase_id_id", "purchase_reversals", ["purchase_id", "id"]
    )
    op.create_table(
        "unmatched_payments",
        sa.Column("id", BigId, nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("receipt", sa.String(length=64), nullable=False),
        sa.Column("checkout_request_id", sa.String(length=128), nullable=False),
        sa.Column("phone", sa.String(length=16), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("purchase_id", BigId, nullable=True),
        sa.Column("matched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("matched_by", sa.String(length=64), nullable=True),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_unmatched_payments_amount_positive")),
        sa.ForeignKeyConstraint(
            ["purchase_id"],
            ["purchases.id"],
            name=op.f("fk_unmatched_payments_purchase_id_purchases"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unmatched_payments")),
        sa.UniqueConstraint("purchase_id", name="uq_unmatched_payments_purchase_id"),
        sa.UniqueConstraint("receipt", name="uq_unmatched_payments_receipt"),
    )
    op.create_index("ix_unmatched_payments_open", "unmatched_payments", ["purchase_id", "id"])

    _legacy_reversals()

    if sqlite:
        op.execute("PRAGMA foreign_keys=OFF")
    with op.batch_alter_table("purchases") as batch:
        batch.drop_constraint(op.f("ck_purchases_refund_within"), type_="check")
        batch.drop_column("refunded_minor")
        batch.drop_column("shortfall_tokens")
        batch.drop_column("disputed_minor")
        batch.drop_column("dispute_tokens")
        batch.add_column(sa.Column("merchant_request_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("push_started_at", sa.DateTime(timezone=True), nullable=True))
    # The old STK claim lived in checkout_request_id as "claim:<hex>".
    op.execute(
        "UPDATE purchases SET push_started_at = created_at WHERE checkout_request_id IS NOT NULL"
    )
    op.execute(
        "UPDATE purchases SET checkout_request_id = NULL WHERE checkout_request_id LIKE 'claim:%'"
    )
    with op.batch_alter_table("provider_events") as batch:
        batch.add_column(
            sa.Column("status", sa.String(length=16), server_default="handled", nullable=False)
        )
        batch.add_column(sa.Column("note", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("body", sa.Text(), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_check_constraint(
            op.f("ck_provider_events_status_known"), "status IN ('handled', 'ignored', 'retry')"
        )
    if sqlite:
        op.execute("PRAGMA foreign_keys=ON")


def _legacy_reversals():
    """A reversal row for each purchase's refunded or disputed counters, so the amounts and
    tokens they recorded live on in the new model."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT id, refunded_minor, shortfall_tokens, disputed_minor, dispute_tokens, "
            "updated_at FROM purchases WHERE refunded_minor > 0 OR disputed_minor > 0"
        )
    ).all()
    reversals = sa.table(
        "purchase_reversals",
        *(sa.column(name) for name in (
            "purchase_id", "kind", "provider_ref", "amount_minor", "status", "tokens_taken",
            "bonus_taken", "tokens_short", "bonus_short", "moves", "created_at", "resolved_at",
        )),
    )  # fmt: skip
    now = datetime.now(UTC)
    for purchase_id, refunded, shortfall, disputed, _dispute_tokens, updated in rows:
        taken = _taken(bind, purchase_id)
        if refunded:
            bind.execute(
                reversals.insert().values(
                    purchase_id=purchase_id,
                    kind="refund",
                    provider_ref=f"legacy:refund:{purchase_id}",
                    amount_minor=refunded,
                    status="succeeded",
                    tokens_taken=taken["refund:tokens"],
                    bonus_taken=taken["refund:bonus"],
                    tokens_short=shortfall,
                    bonus_short=0,
                    moves=0,
                    created_at=updated or now,
                    resolved_at=updated or now,
                )
            )
        if disputed:
            bind.execute(
                reversals.insert().values(
                    purchase_id=purchase_id,
                    kind="dispute",
                    provider_ref=f"legacy:dispute:{purchase_id}",
                    amount_minor=disputed,
                    status="open",
                    tokens_taken=taken["dispute:tokens"],
                    bonus_taken=taken["dispute:bonus"],
                    tokens_short=0,
                    bonus_short=0,
                    moves=0,
                    created_at=updated or now,
                    resolved_at=None,
                )
            )


def _taken(bind, purchase_id: int) -> dict[str, int]:
    """Tokens the old keys took back and returned, by reversal kind and part."""
    taken = {f"{kind}:{part}": 0 for kind in ("refund", "dispute") for part in ("tokens", "bonus")}
    entries = bind.execute(
        sa.text(
            "SELECT idempotency_key, kind, tokens FROM journal_entries "
            "WHERE reference_type = 'purchase' AND reference_id = :id "
            "AND kind IN ('refund', 'adjustment')"
        ),
        {"id": purchase_id},
    ).all()
    for key, _kind, tokens in entries:
        part = "bonus" if key.endswith(":bonus") else "tokens"
        if ":refund:" in key:
            taken[f"refund:{part}"] += tokens
        elif ":dispute-won:" in key:
            taken[f"dispute:{part}"] -= tokens
        elif ":dispute:" in key:
            taken[f"dispute:{part}"] += tokens
    return {name: max(0, value) for name, value in taken.items()}


def downgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("PRAGMA foreign_keys=OFF")
    with op.batch_alter_table("provider_events") as batch:
        batch.drop_constraint(op.f("ck_provider_events_status_known"), type_="check")
        for column in ("handled_at", "attempts", "body", "note", "status"):
            batch.drop_column(column)
    with op.batch_alter_table("purchases") as batch:
        batch.drop_column("push_started_at")
        batch.drop_column("merchant_request_id")
        batch.add_column(
            sa.Column("refunded_minor", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("shortfall_tokens", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("disputed_minor", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("dispute_tokens", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.create_check_constraint(
            "refund_within", "refunded_minor >= 0 AND refunded_minor <= amount_minor"
        )
    if sqlite:
        op.execute("PRAGMA foreign_keys=ON")
    op.drop_index("ix_unmatched_payments_open", table_name="unmatched_payments")
    op.drop_table("unmatched_payments")
    op.drop_index("ix_purchase_reversals_purchase_id_id", table_name="purchase_reversals")
    op.drop_table("purchase_reversals")
