"""One posting per entry, wallet and bucket, as a unique index.

The ledger merges an entry's legs into one posting per bucket of each wallet;
this makes the database say so too. Its leading column is the entry, so it also
serves every lookup of an entry's postings, like the plain entry_id index it
replaces: the hold check of a settle or a release (`soma.ledger.core.
_hold_matches`) finds the hold's locked posting through it, one index tuple.

On a large postings table, building the unique index blocks writes to postings
for as long as it takes; run it at a quiet time.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index(
        "uq_postings_entry_wallet_bucket",
        "postings",
        ["entry_id", "wallet_id", "bucket"],
        unique=True,
    )
    op.drop_index("ix_postings_entry_id", table_name="postings")


def downgrade():
    op.create_index("ix_postings_entry_id", "postings", ["entry_id"])
    op.drop_index("uq_postings_entry_wallet_bucket", table_name="postings")
