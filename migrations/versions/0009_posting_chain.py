"""A hash chain per wallet: every posting carries its wallet's seq and a SHA-256 link.

postings.seq numbers a wallet's postings 1, 2, 3... (unique per wallet) and
postings.hash is hex(SHA-256(UTF-8 of "previous hash|entry id|wallet id|seq|
bucket|amount|available after|locked after")), the previous hash '' for a
wallet's first posting (see soma.ledger.core). wallets.head_seq / head_hash
are the wallet's last posting's; prior_hash is the one before it. History now
walks (wallet_id, seq) and (wallet_id, kind, seq) instead of the created_at
indexes.

PostgreSQL computes the links inside the entry's one statement, under the
wallet's row lock, with `soma_link` (one link) and `soma_head` / `soma_prior`
(the wallet's new head, and the hash before it, once an entry posted to the
wallet as it was). All three are plain SQL, so the planner can inline them.

Existing postings are chained here, per wallet in order of posting id (the
order they were written in: a wallet's row lock was held from its UPDATE to
the commit, and ids were drawn after it), so the audit is clean on an upgraded
database. The backfill has to UPDATE postings, so it lifts the append-only
trigger for itself and puts it back. On SQLite, making seq and hash NOT NULL
copies the postings table, which drops its triggers: they are re-created.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BATCH = 5000

LINK_FUNCTIONS = """
-- STABLE, not IMMUTABLE: concat_ws turns numbers into text through their output functions,
-- which are stable; a function no more volatile than its body can be inlined.
CREATE FUNCTION soma_link(previous text, entry_id bigint, wallet_id integer, seq bigint,
        bucket text, amount bigint, available_after bigint, locked_after bigint)
    RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT encode(sha256(convert_to(concat_ws('|', previous, entry_id, wallet_id, seq,
        bucket, amount, available_after, locked_after), 'UTF8')), 'hex') $$;

-- The hash before that head: the entry's first posting of two, else the old head.
CREATE FUNCTION soma_prior(w wallets, entry_id bigint, d_available bigint, d_locked bigint)
    RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN d_available <> 0 AND d_locked <> 0 THEN soma_link(w.head_hash, entry_id, w.id,
            w.head_seq + 1, 'available', d_available, w.available + d_available,
            w.locked + d_locked)
        ELSE w.head_hash
    END $$;

-- The wallet's new head once an entry posts d_available and d_locked (0: that bucket is
-- not posted to) to w, the wallet as it was: available chains first, then locked.
CREATE FUNCTION soma_head(w wallets, entry_id bigint, d_available bigint, d_locked bigint)
    RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN d_locked = 0 THEN soma_link(w.head_hash, entry_id, w.id, w.head_seq + 1,
            'available', d_available, w.available + d_available, w.locked + d_locked)
        WHEN d_available = 0 THEN soma_link(w.head_hash, entry_id, w.id, w.head_seq + 1,
            'locked', d_locked, w.available + d_available, w.locked + d_locked)
        ELSE soma_link(soma_prior(w, entry_id, d_available, d_locked), entry_id, w.id,
            w.head_seq + 2, 'locked', d_locked, w.available + d_available, w.locked + d_locked)
    END $$;
"""

DROP_LINK_FUNCTIONS = """
DROP FUNCTION soma_prior(wallets, bigint, bigint, bigint);
DROP FUNCTION soma_head(wallets, bigint, bigint, bigint);
DROP FUNCTION soma_link(text, bigint, integer, bigint, text, bigint, bigint, bigint);
"""


def _link(previous, entry_id, wallet_id, seq, bucket, amount, available_after, locked_after):
    """soma.ledger.core.chain_link as of this revision (copied: a migration stays as written)."""
    fields = (previous, entry_id, wallet_id, seq, bucket, amount, available_after, locked_after)
    return hashlib.sha256("|".join(map(str, fields)).encode()).hexdigest()


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _create_sqlite_triggers() -> None:
    """Migration 0002's append-only triggers on postings, as a table copy drops them."""
    for action in ("UPDATE", "DELETE"):
        op.execute(f"DROP TRIGGER IF EXISTS postings_append_only_{action.lower()}")
        op.execute(
            f"CREATE TRIGGER postings_append_only_{action.lower()} BEFORE {action} ON postings "
            f"BEGIN SELECT RAISE(ABORT, 'postings is append-only: {action} refused'); END"
        )


def upgrade():
    op.add_column(
        "wallets", sa.Column("head_seq", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column(
        "wallets",
        sa.Column("head_hash", sa.String(length=64), server_default=sa.text("''"), nullable=False),
    )
    op.add_column(
        "wallets",
        sa.Column("prior_hash", sa.String(length=64), server_default=sa.text("''"), nullable=False),
    )
    op.add_column("postings", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column("postings", sa.Column("hash", sa.String(length=64), nullable=True))

    if _postgresql():
        op.execute("ALTER TABLE postings DISABLE TRIGGER postings_append_only")
    else:
        op.execute("DROP TRIGGER postings_append_only_update")
    backfill()
    if _postgresql():
        op.execute("ALTER TABLE postings ENABLE TRIGGER postings_append_only")
        op.alter_column("postings", "seq", nullable=False)
        op.alter_column("postings", "hash", nullable=False)
        op.execute(LINK_FUNCTIONS)
    else:
        with op.batch_alter_table("postings") as batch_op:
            batch_op.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
            batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        _create_sqlite_triggers()

    op.drop_index("ix_postings_wallet_history", table_name="postings")
    op.drop_index("ix_postings_wallet_kind_history", table_name="postings")
    op.create_index("uq_postings_wallet_seq", "postings", ["wallet_id", "seq"], unique=True)
    op.create_index("ix_postings_wallet_kind_seq", "postings", ["wallet_id", "kind", "seq"])


def backfill() -> None:
    """Chain every existing posting, per wallet in id order, and set each wallet's head.

    A batch at a time by keyset, each batch read in full before its UPDATEs, so
    memory stays bounded and no cursor is open on the rows being updated.
    """
    connection = op.get_bind()
    page = sa.text(
        "SELECT id, wallet_id, entry_id, bucket, amount, available_after, locked_after "
        "FROM postings WHERE wallet_id > :p_wallet OR (wallet_id = :p_wallet AND id > :p_id) "
        "ORDER BY wallet_id, id LIMIT :p_limit"
    )
    write_link = sa.text("UPDATE postings SET seq = :p_seq, hash = :p_hash WHERE id = :p_id")
    write_head = sa.text(
        "UPDATE wallets SET head_seq = :p_seq, head_hash = :p_head, prior_hash = :p_prior "
        "WHERE id = :p_wallet"
    )
    heads: dict[int, dict] = {}
    last_wallet, last_id = -1, -1
    while True:
        rows = connection.execute(
            page, {"p_wallet": last_wallet, "p_id": last_id, "p_limit": BATCH}
        ).all()
        if not rows:
            break
        links = []
        for row in rows:
            head = heads.get(row.wallet_id, {"p_seq": 0, "p_head": ""})
            seq = head["p_seq"] + 1
            content = (row.bucket, row.amount, row.available_after, row.locked_after)
            link = _link(head["p_head"], row.entry_id, row.wallet_id, seq, *content)
            heads[row.wallet_id] = {
                "p_wallet": row.wallet_id,
                "p_seq": seq,
                "p_head": link,
                "p_prior": head["p_head"],
            }
            links.append({"p_id": row.id, "p_seq": seq, "p_hash": link})
        connection.execute(write_link, links)
        last_wallet, last_id = rows[-1].wallet_id, rows[-1].id
    if heads:
        connection.execute(write_head, list(heads.values()))


def downgrade():
    op.drop_index("ix_postings_wallet_kind_seq", table_name="postings")
    op.drop_index("uq_postings_wallet_seq", table_name="postings")
    op.create_index(
        "ix_postings_wallet_history", "postings", ["wallet_id", "created_at", "entry_id"]
    )
    op.create_index(
        "ix_postings_wallet_kind_history",
        "postings",
        ["wallet_id", "kind", "created_at", "entry_id"],
    )
    if _postgresql():
        op.execute(DROP_LINK_FUNCTIONS)
    # Plain DROP COLUMNs (SQLite 3.35+ has them): no table copy, so SQLite keeps every
    # trigger, and no copy of wallets that the postings' foreign keys would refuse.
    op.drop_column("postings", "hash")
    op.drop_column("postings", "seq")
    op.drop_column("wallets", "prior_hash")
    op.drop_column("wallets", "head_hash")
    op.drop_column("wallets", "head_seq")
