"""The operator's console: frozen accounts, the admin action record, alerts, the
sweeper's heartbeat and audit runs.

- `users.frozen_at` / `users.frozen_reason`: set by an admin; a frozen account cannot
  buy, gift, book, start a class or withdraw.
- `admin_actions`: who did what to which object, with the fields before and after,
  written in the same transaction as the action. Append-only: a trigger refuses
  UPDATE and DELETE, as on the ledger's tables.
- `alerts`: raised once per cause (a unique `cause`), acknowledged by an admin.
- `heartbeats`: the sweeper's last finished pass.
- `audit_runs`: each audit started from /admin/audit, its violations and its time.

Plain added columns on `users`: SQLite needs no table copy.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
AUDIT_STATUSES = ("queued", "running", "passed", "failed", "error")


def create_append_only_triggers(table: str) -> None:
    # As in 0002 (the function soma_refuse_change() exists on PostgreSQL since then).
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION soma_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION soma_refuse_change()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_append_only_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {action} refused'); END"
            )


def upgrade():
    op.add_column("users", sa.Column("frozen_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("frozen_reason", sa.String(length=300), nullable=True))

    op.create_table(
        "admin_actions",
        sa.Column("id", BigId, nullable=False),
        sa.Column("admin_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("object_type", sa.String(length=40), nullable=False),
        sa.Column("object_id", sa.BigInteger(), nullable=True),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["admin_id"], ["users.id"], name=op.f("fk_admin_actions_admin_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_actions")),
    )
    op.create_index("ix_admin_actions_admin_id_id", "admin_actions", ["admin_id", "id"])
    op.create_index("ix_admin_actions_action_id", "admin_actions", ["action", "id"])
    op.create_index("ix_admin_actions_object", "admin_actions", ["object_type", "object_id", "id"])
    create_append_only_triggers("admin_actions")

    op.create_table(
        "alerts",
        sa.Column("id", BigId, nullable=False),
        sa.Column("rule", sa.String(length=40), nullable=False),
        sa.Column("cause", sa.String(length=200), nullable=False),
        sa.Column("message", sa.String(length=500), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("object_type", sa.String(length=40), nullable=True),
        sa.Column("object_id", sa.BigInteger(), nullable=True),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_alerts_user_id_users")),
        sa.ForeignKeyConstraint(
            ["acknowledged_by_id"], ["users.id"], name=op.f("fk_alerts_acknowledged_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index("uq_alerts_cause", "alerts", ["cause"], unique=True)
    op.create_index("ix_alerts_acknowledged_at_id", "alerts", ["acknowledged_at", "id"])
    op.create_index("ix_alerts_user_id_id", "alerts", ["user_id", "id"])
    op.create_index("ix_alerts_rule_id", "alerts", ["rule", "id"])

    op.create_table(
        "heartbeats",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_heartbeats")),
    )

    op.create_table(
        "audit_runs",
        sa.Column("id", BigId, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("violation_count", sa.Integer(), nullable=True),
        sa.Column("violations", sa.Text(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.CheckConstraint(
            f"status IN ({', '.join(repr(s) for s in AUDIT_STATUSES)})",
            name=op.f("ck_audit_runs_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["started_by_id"], ["users.id"], name=op.f("fk_audit_runs_started_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_runs")),
    )


def downgrade():
    op.drop_table("audit_runs")
    op.drop_table("heartbeats")
    op.drop_index("ix_alerts_rule_id", table_name="alerts")
    op.drop_index("ix_alerts_user_id_id", table_name="alerts")
    op.drop_index("ix_alerts_acknowledged_at_id", table_name="alerts")
    op.drop_index("uq_alerts_cause", table_name="alerts")
    op.drop_table("alerts")
    op.drop_table("admin_actions")  # its triggers go with it
    # A plain DROP COLUMN (SQLite 3.35+ has it): a batch copy of users would have to drop
    # the table that wallets and every other user row's references point at.
    op.drop_column("users", "frozen_reason")
    op.drop_column("users", "frozen_at")
