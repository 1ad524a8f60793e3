"""Platform sub-accounts: `wallets.shard`, unique (code, shard), and shards 1 to 15 of each
platform account.

Every purchase used to lock the one issuance row (every bonus the one promotions
row, every withdrawal paid the redemption and fees rows). Each platform account is
now 16 wallets with the same `code` (see soma.ledger.shards): the existing row is
shard 0 and keeps its balances and its posting chain; shards 1 to 15 start empty,
with the account's `is_source`. Users' wallets are shard 0.

SQLite cannot drop the UNIQUE (code) it was created with: the table is rebuilt,
with foreign keys off while it is (the postings point at wallets; SQLite's DROP
TABLE would otherwise refuse, and the check afterwards proves nothing points
nowhere). That ends the migration's transaction on SQLite before the rebuild.

Downgrade deletes the shards with no postings; one with postings cannot be folded
into shard 0 (its postings and chain are its own), so it stays as a wallet of its
own, its code suffixed with its shard ('issuance:3'), which upgrade reads back.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-01
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

SHARDS = 16  # soma.ledger.shards.DEFAULT_SHARDS when this was written
CHECK = "shard >= 0 AND (code IS NOT NULL OR shard = 0)"
OLD_UNIQUE = "CONSTRAINT uq_wallets_code UNIQUE (code)"
NEW_UNIQUE = "CONSTRAINT uq_wallets_code UNIQUE (code, shard)"
SQLITE_CHECK = f"CONSTRAINT ck_wallets_shard_of_platform CHECK ({CHECK})"


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _sqlite_rebuild(change) -> None:
    """Recreate SQLite's wallets table from its own CREATE TABLE, changed by `change`."""
    bind = op.get_bind()
    sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'wallets'"
    ).scalar_one()
    # A table SQLite has renamed reads CREATE TABLE "wallets".
    new_sql = re.sub(r'^CREATE TABLE "?wallets"? \(', "CREATE TABLE wallets_rebuilt (", change(sql))
    if new_sql == sql or "wallets_rebuilt" not in new_sql:
        raise RuntimeError("wallets is not the table this migration knows how to rebuild")
    indexes = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'wallets' "
        "AND sql IS NOT NULL"
    ).scalars()
    indexes = list(indexes)
    if bind.connection.dbapi_connection.in_transaction:
        bind.exec_driver_sql("COMMIT")  # PRAGMA foreign_keys does nothing inside a transaction
    bind.exec_driver_sql("PRAGMA foreign_keys=OFF")
    try:
        bind.exec_driver_sql("BEGIN")
        bind.exec_driver_sql(new_sql)
        bind.exec_driver_sql("INSERT INTO wallets_rebuilt SELECT * FROM wallets")
        bind.exec_driver_sql("DROP TABLE wallets")
        bind.exec_driver_sql("ALTER TABLE wallets_rebuilt RENAME TO wallets")
        for index in indexes:
            bind.exec_driver_sql(index)
        broken = bind.exec_driver_sql("PRAGMA foreign_key_check").all()
        if broken:
            bind.exec_driver_sql("ROLLBACK")
            raise RuntimeError(f"rebuilding wallets broke foreign keys: {broken[:5]}")
        bind.exec_driver_sql("COMMIT")
    finally:
        bind.exec_driver_sql("PRAGMA foreign_keys=ON")


def _add_check(sql: str) -> str:
    return sql.replace(OLD_UNIQUE, f"{SQLITE_CHECK}, \n\t{NEW_UNIQUE}")


def _drop_check(sql: str) -> str:
    return sql.replace(f"{SQLITE_CHECK}, \n\t{NEW_UNIQUE}", OLD_UNIQUE)


def upgrade():
    op.add_column(
        "wallets", sa.Column("shard", sa.SmallInteger(), server_default="0", nullable=False)
    )
    if _postgresql():
        op.drop_constraint("uq_wallets_code", "wallets", type_="unique")
        op.create_unique_constraint("uq_wallets_code", "wallets", ["code", "shard"])
        op.create_check_constraint("ck_wallets_shard_of_platform", "wallets", CHECK)
    else:
        _sqlite_rebuild(_add_check)
    # Shards a downgrade kept as 'code:shard' (see the docstring) come back as shards.
    if _postgresql():
        op.execute(
            "UPDATE wallets SET shard = CAST(split_part(code, ':', 2) AS smallint), "
            "code = split_part(code, ':', 1) WHERE code LIKE '%:%'"
        )
    else:
        op.execute(
            "UPDATE wallets SET shard = CAST(substr(code, instr(code, ':') + 1) AS INTEGER), "
            "code = substr(code, 1, instr(code, ':') - 1) WHERE code LIKE '%:%'"
        )
    for shard in range(1, SHARDS):
        op.execute(
            sa.text(
                "INSERT INTO wallets (code, shard, is_source, available, locked, created_at, "
                "head_seq, head_hash, prior_hash) "
                "SELECT code, :shard, is_source, 0, 0, created_at, 0, '', '' FROM wallets w "
                "WHERE code IS NOT NULL AND shard = 0 AND NOT EXISTS "
                "(SELECT 1 FROM wallets o WHERE o.code = w.code AND o.shard = :shard)"
            ).bindparams(shard=shard)
        )


def downgrade():
    op.execute("DELETE FROM wallets WHERE shard <> 0 AND head_seq = 0")
    op.execute(
        "UPDATE wallets SET code = code || ':' || CAST(shard AS VARCHAR(8)) WHERE shard <> 0"
    )
    if _postgresql():
        op.drop_constraint("ck_wallets_shard_of_platform", "wallets", type_="check")
        op.drop_constraint("uq_wallets_code", "wallets", type_="unique")
        op.create_unique_constraint("uq_wallets_code", "wallets", ["code"])
    else:
        _sqlite_rebuild(_drop_check)
    op.drop_column("wallets", "shard")
