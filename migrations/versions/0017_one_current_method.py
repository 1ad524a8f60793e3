"""One current Stripe method and one sandbox method per teacher, and each M-Pesa number
once among a teacher's current methods: partial unique indexes, so that two clicks at
once on "Connect with Stripe" make one method and one connected account.

Duplicates made before this migration (by such double clicks) are removed first,
keeping each teacher's oldest (the default, if it is one of them); a removed method
stays in the table, so the withdrawals that name it still do.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

INDEXES = {
    "uq_payout_methods_one_stripe": (["user_id"], "kind = 'stripe' AND removed_at IS NULL"),
    "uq_payout_methods_one_sandbox": (["user_id"], "kind = 'sandbox' AND removed_at IS NULL"),
    "uq_payout_methods_mpesa_phone": (
        ["user_id", "phone"],
        "kind = 'mpesa' AND removed_at IS NULL",
    ),
}


def upgrade():
    methods = sa.table(
        "payout_methods",
        sa.column("id", sa.Integer),
        sa.column("user_id", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("phone", sa.String),
        sa.column("is_default", sa.Boolean),
        sa.column("removed_at", sa.DateTime(timezone=True)),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(methods.c.id, methods.c.user_id, methods.c.kind, methods.c.phone)
        .where(methods.c.removed_at.is_(None), methods.c.kind.in_(("stripe", "sandbox", "mpesa")))
        .order_by(methods.c.user_id, methods.c.is_default.desc(), methods.c.id)
    ).all()
    kept, duplicates = set(), []
    for row in rows:
        group = (row.user_id, row.kind, row.phone if row.kind == "mpesa" else None)
        if group in kept:
            duplicates.append(row.id)
        else:
            kept.add(group)
    if duplicates:
        connection.execute(
            methods.update()
            .where(methods.c.id.in_(duplicates))
            .values(removed_at=datetime.now(UTC), is_default=False)
        )
    for name, (columns, where) in INDEXES.items():
        op.create_index(
            name,
            "payout_methods",
            columns,
            unique=True,
            postgresql_where=sa.text(where),
            sqlite_where=sa.text(where),
        )


def downgrade():
    for name in INDEXES:
        op.drop_index(name, table_name="payout_methods")
