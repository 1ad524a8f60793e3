"""The sweeper's alert rules: an index, and where each rule starts reading.

- `ix_purchases_user_id_created_at`: one account's purchases of the last hour (the
  "more than 5 purchases in an hour" rule reads only those).
- The rules read each table past a watermark (a `heartbeats` row "alerts:<source>",
  see soma.alert_rules). On a database that already holds rows, each watermark starts
  at the table's last id, so alerts begin with what happens from now on rather than
  raising one for every refund, failure and low balance of the past. An empty table
  gets no row: its rule starts from the beginning.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

# source (as soma.alert_rules names it) -> the table it reads
SOURCES = {
    "postings": "postings",
    "purchase_events": "purchase_events",
    "withdrawal_events": "withdrawal_events",
    "purchases": "purchases",
    "reversals": "purchase_reversals",
    "withdrawals": "withdrawals",
    "unmatched": "unmatched_payments",
}


def upgrade():
    op.create_index("ix_purchases_user_id_created_at", "purchases", ["user_id", "created_at"])
    connection = op.get_bind()
    heartbeats = sa.table(
        "heartbeats",
        sa.column("name", sa.String),
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("detail", sa.String),
    )
    for source, table in SOURCES.items():
        last = connection.execute(sa.text(f"SELECT max(id) FROM {table}")).scalar()  # noqa: S608
        if last is not None:
            connection.execute(
                heartbeats.insert().values(
                    name=f"alerts:{source}", at=sa.func.current_timestamp(), detail=str(last)
                )
            )


def downgrade():
    connection = op.get_bind()
    connection.execute(
        sa.text("DELETE FROM heartbeats WHERE name IN :names").bindparams(
            sa.bindparam("names", [f"alerts:{source}" for source in SOURCES], expanding=True)
        )
    )
    op.drop_index("ix_purchases_user_id_created_at", table_name="purchases")
