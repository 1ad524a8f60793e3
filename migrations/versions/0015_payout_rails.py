"""Payout rails: what the Stripe Connect and M-Pesa B2C rails keep on a method and a withdrawal.

- `payout_methods.stripe_event_at`: the `created` time of the `account.updated` event
  whose readiness is stored, so an older event that arrives late does not undo it.
- `payout_methods.payout_failure`: the last failed payout of the connected account to
  its bank (`payout.failed`), shown to the teacher (the money is in their Stripe balance).
- `withdrawals.attempt`: which attempt key a transfer is sent under (1: the withdrawal's
  own key). Raised, and committed, before each new attempt; only after an answer that
  says nothing was made (the platform's balance was short).
- `withdrawals.send_state`: what the rail last heard when it sent: "balance" (nothing
  made, retry under the next attempt key), "unknown" (it may exist: look, then retry
  under the same key), "not_made" (retry under the same key), "taken" (the provider
  refused a repeat as a duplicate: it has the first; only ask); null once sent and known.
- `withdrawals.amount_kes`: the whole shillings an M-Pesa withdrawal sends, fixed when it
  is requested (its net at MPESA_KES_PER_USD, rounded down).
- `withdrawals.reversed_at`: when a paid withdrawal's transfer was reversed and its
  tokens returned to the teacher.

Plain added columns: SQLite needs no table copy.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "payout_methods", sa.Column("stripe_event_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("payout_methods", sa.Column("payout_failure", sa.String(300), nullable=True))
    op.add_column(
        "withdrawals",
        sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False),
    )
    op.add_column("withdrawals", sa.Column("send_state", sa.String(16), nullable=True))
    op.add_column("withdrawals", sa.Column("amount_kes", sa.BigInteger(), nullable=True))
    op.add_column(
        "withdrawals", sa.Column("reversed_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade():
    op.drop_column("withdrawals", "reversed_at")
    op.drop_column("withdrawals", "amount_kes")
    op.drop_column("withdrawals", "send_state")
    op.drop_column("withdrawals", "attempt")
    op.drop_column("payout_methods", "payout_failure")
    op.drop_column("payout_methods", "stripe_event_at")
