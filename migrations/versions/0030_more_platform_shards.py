"""Shards 16 to 127 of each platform account: SOMA_PLATFORM_SHARDS is now 128 by default.

With 16 shards and 8 writers at once, two purchases met on a shard about
(writers - 1) / N of the time: the one that met waited for the other's commit, or
re-checked its row (PostgreSQL's EvalPlanQual, which sets up the whole statement a
second time). With 128, in runs that took turns at 16 and 128 shards with the same
workers, the database's CPU per purchase was 1.63 ms against 1.81 and 1.80 against
1.95. A shard is one row: the reports and the audit sum and check 512 platform
wallets instead of 64.

The new shards start empty, each with its account's `is_source`, as `flask soma
shards` makes them; one that exists already (made by the command) is left as it is,
and so is one the command makes at the same moment (ON CONFLICT DO NOTHING).

Downgrade leaves every shard in place. Deleting the empty ones above 15 could leave
the accounts with different runs of shards once some of them hold postings (an
issuance shard 100 used, a fees shard 100 not), which the audit refuses; the code
before this migration uses min(setting, shards that exist) and posts to none above
its setting, and 0024's downgrade, if run after, deletes the empty ones of every
account at once.

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
            "(SELECT 1 FROM wallets o WHERE o.code = w.code AND o.shard = n.shard) "
            "ON CONFLICT (code, shard) DO NOTHING"
        ).bindparams(first=BEFORE, shards=SHARDS)
    )


def downgrade():
    pass  # every shard stays (see the docstring)
