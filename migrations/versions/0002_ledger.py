"""The ledger: wallets, journal entries, postings, versioned pricing, notifications.

Seeds the platform's accounts, a wallet for every existing user, and pricing
version 1 (students 10 tokens = $1.00, teachers 10 tokens = $0.40, a class 10
tokens an hour). Journal entries, postings and pricing rows are append-only: a
trigger refuses UPDATE and DELETE on them, on PostgreSQL and on SQLite.

Note for later migrations: a batch (table-copying) alter of these tables on
SQLite drops their triggers; re-create them with `create_append_only_triggers`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY_TABLES = ("journal_entries", "postings", "token_pricing")
ENTRY_KINDS = (
    "purchase", "bonus", "class_hold", "class_settle", "class_release", "withdrawal_hold",
    "withdrawal_paid", "withdrawal_release", "refund", "gift", "adjustment",
)  # fmt: skip


def create_append_only_triggers(table: str) -> None:
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
    op.create_table(
        "wallets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("code", sa.String(length=32), nullable=True),
        sa.Column("is_source", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("available", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("locked", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(user_id IS NULL) <> (code IS NULL)", name=op.f("ck_wallets_user_or_platform")
        ),
        sa.CheckConstraint(
            "NOT is_source OR user_id IS NULL", name=op.f("ck_wallets_only_platform_is_source")
        ),
        sa.CheckConstraint(
            "available >= 0 OR is_source", name=op.f("ck_wallets_available_not_negative")
        ),
        sa.CheckConstraint("locked >= 0", name=op.f("ck_wallets_locked_not_negative")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_wallets_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallets")),
        sa.UniqueConstraint("code", name=op.f("uq_wallets_code")),
        sa.UniqueConstraint("user_id", name=op.f("uq_wallets_user_id")),
    )

    kinds = ", ".join(f"'{kind}'" for kind in ENTRY_KINDS)
    op.create_table(
        "journal_entries",
        sa.Column("id", BigId, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("usd_cents", sa.BigInteger(), nullable=False),
        sa.Column("teacher_usd_cents", sa.BigInteger(), nullable=False),
        sa.Column("reference_type", sa.String(length=32), nullable=True),
        sa.Column("reference_id", sa.BigInteger(), nullable=True),
        sa.Column("closes_entry_id", BigId, nullable=True),
        sa.Column("memo", sa.String(length=500), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"kind IN ({kinds})", name=op.f("ck_journal_entries_kind_known")),
        sa.CheckConstraint("tokens >= 0", name=op.f("ck_journal_entries_tokens_not_negative")),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_journal_entries_actor_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["closes_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_journal_entries_closes_entry_id_journal_entries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_entries")),
        sa.UniqueConstraint("closes_entry_id", name=op.f("uq_journal_entries_closes_entry_id")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_journal_entries_idempotency_key")),
    )
    op.create_index("ix_journal_entries_created_at", "journal_entries", ["created_at"])
    op.create_index(
        "ix_journal_entries_reference", "journal_entries", ["reference_type", "reference_id"]
    )

    op.create_table(
        "postings",
        sa.Column("id", BigId, nullable=False),
        sa.Column("entry_id", BigId, nullable=False),
        sa.Column("wallet_id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("available_after", sa.BigInteger(), nullable=False),
        sa.Column("locked_after", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "bucket IN ('available', 'locked')", name=op.f("ck_postings_bucket_known")
        ),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_postings_amount_not_zero")),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["journal_entries.id"], name=op.f("fk_postings_entry_id_journal_entries")
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_postings_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_postings")),
    )
    op.create_index("ix_postings_entry_id", "postings", ["entry_id"])
    op.create_index(
        "ix_postings_wallet_history", "postings", ["wallet_id", "created_at", "entry_id"]
    )
    op.create_index(
        "ix_postings_wallet_kind_history",
        "postings",
        ["wallet_id", "kind", "created_at", "entry_id"],
    )

    op.create_table(
        "token_pricing",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_type", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("usd_cents", sa.BigInteger(), nullable=False),
        sa.Column("class_tokens_per_hour", sa.Integer(), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "user_type IN ('student', 'teacher')", name=op.f("ck_token_pricing_user_type_known")
        ),
        sa.CheckConstraint(
            "class_tokens_per_hour > 0", name=op.f("ck_token_pricing_class_rate_positive")
        ),
        sa.CheckConstraint("tokens > 0", name=op.f("ck_token_pricing_tokens_positive")),
        sa.CheckConstraint("usd_cents > 0", name=op.f("ck_token_pricing_usd_cents_positive")),
        sa.CheckConstraint("version > 0", name=op.f("ck_token_pricing_version_positive")),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_token_pricing_created_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_pricing")),
    )
    op.create_index(
        "ix_token_pricing_user_type_effective_at", "token_pricing", ["user_type", "effective_at"]
    )
    op.create_index(
        "uq_token_pricing_user_type_version", "token_pricing", ["user_type", "version"], unique=True
    )

    op.create_table(
        "notifications",
        sa.Column("id", BigId, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("message", sa.String(length=500), nullable=False),
        sa.Column("link", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_notifications_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    op.create_index("ix_notifications_user_id_id", "notifications", ["user_id", "id"])

    seed()

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION soma_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                    USING ERRCODE = 'restrict_violation';
            END
            $$
            """
        )
    for table in APPEND_ONLY_TABLES:
        create_append_only_triggers(table)


def seed() -> None:
    """Platform accounts, a wallet for each existing user, and pricing version 1."""
    now = datetime.now(UTC)
    wallets = sa.table(
        "wallets",
        sa.column("code", sa.String),
        sa.column("is_source", sa.Boolean),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        wallets,
        [
            {"code": "issuance", "is_source": True, "created_at": now},
            {"code": "promotions", "is_source": True, "created_at": now},
            {"code": "redemption", "is_source": False, "created_at": now},
            {"code": "fees", "is_source": False, "created_at": now},
        ],
    )
    op.execute(
        sa.text(
            "INSERT INTO wallets (user_id, is_source, available, locked, created_at) "
            "SELECT id, :no, 0, 0, created_at FROM users"
        ).bindparams(no=False)
    )
    pricing = sa.table(
        "token_pricing",
        sa.column("user_type", sa.String),
        sa.column("version", sa.Integer),
        sa.column("tokens", sa.Integer),
        sa.column("usd_cents", sa.BigInteger),
        sa.column("class_tokens_per_hour", sa.Integer),
        sa.column("effective_at", sa.DateTime(timezone=True)),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    since = datetime(1970, 1, 1, tzinfo=UTC)
    if op.get_bind().dialect.name == "sqlite":
        # SQLite keeps no zone: the app stores naive UTC there.
        since, now = since.replace(tzinfo=None), now.replace(tzinfo=None)
    op.bulk_insert(
        pricing,
        [
            {"user_type": "student", "version": 1, "tokens": 10, "usd_cents": 100,
             "class_tokens_per_hour": 10, "effective_at": since, "created_at": now},
            {"user_type": "teacher", "version": 1, "tokens": 10, "usd_cents": 40,
             "class_tokens_per_hour": 10, "effective_at": since, "created_at": now},
        ],
    )  # fmt: skip


def downgrade():
    for table in APPEND_ONLY_TABLES:
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
        else:
            op.execute(f"DROP TRIGGER {table}_append_only_update")
            op.execute(f"DROP TRIGGER {table}_append_only_delete")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION soma_refuse_change()")
    op.drop_table("notifications")
    op.drop_table("token_pricing")
    op.drop_table("postings")
    op.drop_table("journal_entries")
    op.drop_table("wallets")
