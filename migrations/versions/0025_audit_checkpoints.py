"""Audit checkpoints: what a clean audit proved, so the next run checks only what came after.

`audit_checkpoints` holds one row per clean run (its hash chained to the one before);
`audit_checkpoint_wallets` the newest checkpoint's wallet heads and balances (see
soma.models.audit). `audit_runs.full` says whether a run rechecked everything.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    # A wallet's postings are numbered from 1: a posting numbered 0 or below would sit
    # before every checkpointed head, where an incremental audit does not look.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE postings ADD CONSTRAINT ck_postings_seq_from_one CHECK (seq >= 1)")
    else:
        op.execute(
            "CREATE TRIGGER postings_seq_from_one BEFORE INSERT ON postings "
            "WHEN NEW.seq < 1 BEGIN SELECT RAISE(ABORT, 'postings are numbered from 1'); END"
        )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", BigId, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("full", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("through_entry_id", sa.BigInteger(), nullable=False),
        sa.Column("through_class_id", sa.BigInteger(), nullable=False),
        sa.Column("through_purchase_id", sa.BigInteger(), nullable=False),
        sa.Column("through_reversal_id", sa.BigInteger(), nullable=False),
        sa.Column("through_gift_id", sa.BigInteger(), nullable=False),
        sa.Column("through_withdrawal_id", sa.BigInteger(), nullable=False),
        sa.Column("wallets", sa.Integer(), nullable=False),
        sa.Column("wallets_digest", sa.String(length=64), nullable=False),
        sa.Column("previous_id", sa.BigInteger(), nullable=False),
        sa.Column("previous_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
        sa.UniqueConstraint("previous_id", name=op.f("uq_audit_checkpoints_previous_id")),
    )
    op.create_table(
        "audit_checkpoint_wallets",
        sa.Column("checkpoint_id", BigId, nullable=False),
        sa.Column("wallet_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("available", sa.BigInteger(), nullable=False),
        sa.Column("locked", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["audit_checkpoints.id"],
            name=op.f("fk_audit_checkpoint_wallets_checkpoint_id_audit_checkpoints"),
        ),
        sa.PrimaryKeyConstraint(
            "checkpoint_id", "wallet_id", name=op.f("pk_audit_checkpoint_wallets")
        ),
    )
    op.add_column(
        "audit_runs", sa.Column("full", sa.Boolean(), server_default=sa.false(), nullable=False)
    )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE postings DROP CONSTRAINT ck_postings_seq_from_one")
    else:
        op.execute("DROP TRIGGER postings_seq_from_one")
    op.drop_column("audit_runs", "full")
    op.drop_table("audit_checkpoint_wallets")
    op.drop_table("audit_checkpoints")
