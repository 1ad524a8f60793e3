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
    # Read the old counters before anything is written: on SQLite the first write
    # opens a transaction, inside which foreign keys can no longer be switched off.
    legacy = _legacy_reversals()
    if sqlite:
        op.execute("PRAGMA foreign_keys=OFF")
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

    with op.batch_alter_table("purchases") as batch:
        batch.drop_constraint(op.f("ck_purchases_refund_within"), type_="check")
        batch.drop_column("refunded_minor")
        batch.drop_column("shortfall_tokens")
        batch.drop_column("disputed_minor")
        batch.drop_column("dispute_tokens")
        batch.add_column(sa.Column("merchant_request_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("push_started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True))
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
    if legacy:
        op.bulk_insert(_REVERSALS, legacy)


_REVERSALS = sa.table(
    "purchase_reversals",
    *(sa.column(name) for name in (
        "purchase_id", "kind", "provider_ref", "amount_minor", "status", "tokens_taken",
        "bonus_taken", "tokens_short", "bonus_short", "moves", "created_at", "resolved_at",
    )),
)  # fmt: skip


def _legacy_reversals() -> list[dict]:
    """Reversal rows for each purchase's old refund and dispute counters, so the amounts
    and tokens they recorded live on in the new model.

    A dispute keeps its Stripe id (its old keys hold it), so its later events find
    it. Refunds were kept as a running total: they become one "legacy:refund:<id>"
    row, which the refunds Stripe later reports from before this migration are
    folded into (`reversals.report`); a dispute whose id no key holds (it took no
    tokens) becomes "legacy:dispute:<id>", which its next Stripe event adopts. Each
    row's shortfall, per part, is what the old scheme owed it less what it took.
    """
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT id, tokens, bonus_tokens, amount_minor, refunded_minor, shortfall_tokens, "
            "disputed_minor FROM purchases "
            "WHERE refunded_minor > 0 OR disputed_minor > 0 OR shortfall_tokens > 0 "
            "OR id IN (SELECT reference_id FROM journal_entries WHERE reference_type = "
            "'purchase' AND kind = 'adjustment')"
        )
    ).all()
    now = datetime.now(UTC)
    made = []
    for purchase_id, tokens, bonus, whole, refunded, _shortfall, disputed in rows:
        taken, disputes = _taken(bind, purchase_id)
        if disputed and not any(status == "open" for status, _, _ in disputes.values()):
            disputes[f"legacy:dispute:{purchase_id}"] = ("open", 0, 0)
        base = {"purchase_id": purchase_id, "moves": 0, "created_at": now}

        for dispute_id, (status, dispute_tokens, dispute_bonus) in disputes.items():
            amount = disputed if status == "open" and disputed else whole
            short = (0, 0)
            if status == "open":
                due_tokens, due_bonus = _owed((tokens, bonus), whole, refunded, refunded + amount)
                short = (max(0, due_tokens - dispute_tokens), max(0, due_bonus - dispute_bonus))
            made.append({
                **base, "kind": "dispute", "provider_ref": dispute_id, "amount_minor": amount,
                "status": status, "tokens_taken": dispute_tokens, "bonus_taken": dispute_bonus,
                "tokens_short": short[0], "bonus_short": short[1],
                "resolved_at": None if status == "open" else now,
            })  # fmt: skip
        if refunded:
            due_tokens, due_bonus = _owed((tokens, bonus), whole, 0, refunded)
            made.append({
                **base, "kind": "refund", "provider_ref": f"legacy:refund:{purchase_id}",
                "amount_minor": refunded, "status": "succeeded",
                "tokens_taken": taken["tokens"], "bonus_taken": taken["bonus"],
                "tokens_short": max(0, due_tokens - taken["tokens"]),
                "bonus_short": max(0, due_bonus - taken["bonus"]), "resolved_at": now,
            })  # fmt: skip
    return made


def _owed(parts: tuple[int, int], whole: int, start: int, end: int) -> tuple[int, ...]:
    """What the money from `start` to `end` of `whole` bought of each part (ceil)."""
    return tuple(
        -(-part * min(end, whole) // whole) - -(-part * min(start, whole) // whole)
        for part in parts
    )


def _taken(bind, purchase_id: int):
    """What the old keys took back for refunds, (tokens, bonus); and for each dispute by its
    Stripe id: (open or won, tokens held back, bonus held back)."""
    refunds = {"tokens": 0, "bonus": 0}
    disputes: dict[str, list] = {}
    entries = bind.execute(
        sa.text(
            "SELECT idempotency_key, tokens FROM journal_entries "
            "WHERE reference_type = 'purchase' AND reference_id = :id "
            "AND kind IN ('refund', 'adjustment') ORDER BY id"
        ),
        {"id": purchase_id},
    ).all()
    for key, count in entries:
        # purchase:<id>:refund:<total>:<part>, purchase:<id>:dispute:<dp>:<part>,
        # purchase:<id>:dispute-won:<dp>:<part>
        _, _, what, reference, part = key.split(":", 4)
        index = 1 if part == "tokens" else 2
        if what == "refund":
            refunds[part] += count
        elif what == "dispute":
            disputes.setdefault(reference, ["open", 0, 0])[index] += count
        elif what == "dispute-won":
            held = disputes.setdefault(reference, ["open", 0, 0])
            held[0] = "won"
            held[index] -= count
    return refunds, {ref: (s, max(0, t), max(0, b)) for ref, (s, t, b) in disputes.items()}


def downgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("PRAGMA foreign_keys=OFF")
    with op.batch_alter_table("provider_events") as batch:
        batch.drop_constraint(op.f("ck_provider_events_status_known"), type_="check")
        for column in ("handled_at", "attempts", "body", "note", "status"):
            batch.drop_column(column)
    with op.batch_alter_table("purchases") as batch:
        batch.drop_column("checked_at")
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
