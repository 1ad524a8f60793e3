"""A function that makes the ledger's one-statement entry fail as a whole.

`soma_refuse_entry(step)` raises SQLSTATE SM001, naming the step that refused
(its DETAIL is the step): the index of the wallet whose conditional UPDATE
matched no row, or the index after the last wallet when the hold the entry
closes is not what the caller said. It is STRICT: a NULL step (nothing
refused) returns NULL without calling it. The ledger calls it from the entry's
statement when the entry runs as a transaction of its own (autocommit), so a
refused entry leaves no trace at all.
PostgreSQL only: on SQLite an entry is several statements in one transaction.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION soma_refuse_entry(step integer) RETURNS integer
            LANGUAGE plpgsql VOLATILE STRICT AS $$
            BEGIN
                RAISE EXCEPTION 'ledger entry refused at step %', step
                    USING ERRCODE = 'SM001', DETAIL = step::text;
            END
            $$
            """
        )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION soma_refuse_entry(integer)")
