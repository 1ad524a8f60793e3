"""Shards 16 to 127 of each platform account: SOMA_PLATFORM_SHARDS is now 128 by default.

With 16 shards and 8 concurrent purchases, a purchase found its issuance shard
locked, or changed since its statement began, about as often as not, and waited
for the other purchase's commit or re-checked its row (PostgreSQL's EvalPlanQual,
which sets up the whole statement a second time). With 128, fulfilment with a
bonus ran at 0.56 to 0.60 of transfers between distinct users where 16 gave 0.51
to 0.54 (see the README's Performance section). A shard is one row: the reports
and the audit sum and check 512 platform wallets instead of 64.

The new shards start empty, each with its account's `is_source`, as `flask soma
shards` makes them. Downgrade deletes the ones above 15 that have no postings; one
with postings stays, as a shard the app no longer posts to (see soma.ledger.shards).

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None

BEFORE = 16  # what 0024 made
SHARDS = 128  # soma.ledger.shards.DEFAULT_SHARDS when this was written


def upgrade():
    # One statement on both databases: the shard numbers from a recursive CTE.
    op.execute(
        sa.text(
            "WITH RECURSIVE n(shard) AS (SELECT CAST(:first AS INTEGER) UNION ALL "
            "SELECT shard + 1 FROM n WHERE shard + 1 < :shards) "
            "INSERT INTO wallets (code, shard, is_source, available, locked, created_at, "
            "head_seq, head_hash, prior_hash) "
            "SELECT w.code, n.shard, w.is_source, 0, 0, w.created_at, 0, '', '' "
            "FROM wallets w JOIN n ON true "
            "WHERE w.code IS NOT NULL AND w.shard = 0 AND NOT EXISTS "
            "(SELECT 1 FROM wallets o WHERE o.code = w.code AND o.shard = n.shard)"
        ).bindparams(first=BEFORE, shards=SHARDS)
    )


def downgrade():
    op.execute(
        sa.text(
            "DELETE FROM wallets WHERE code IS NOT NULL AND shard >= :first AND head_seq = 0 "
            "AND available = 0 AND locked = 0"
        ).bindparams(first=BEFORE)
    )
