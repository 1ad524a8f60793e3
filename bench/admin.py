"""Benchmark the operator's metrics page (/admin/) on PostgreSQL: a ledger of ENTRIES
journal entries over a year against the same page on an empty database.

Run by `make bench` (or `.venv/bin/python bench/admin.py`). It prints figures, it asserts
nothing.

The big database is built once with bulk SQL in the server (see LEDGER_SQL: generate_series,
no row through Python, the secondary indexes made after the load) and kept between runs
as `soma_bench_admin_<digest>`, the digest of the migration head, GENERATOR and ENTRIES
(see `_common.cached_database`: a stale one is dropped). It holds STUDENTS students and
TEACHERS teachers, and ENTRIES entries one after another over the year up to the build's
time, in blocks of ten as the ledger writes them: a purchase of 100 tokens from issuance;
three one-hour classes (a hold of 10 tokens, then its settle to a teacher); a gift of 5
tokens to another student, or (one block in fifty) a refund taking 20 bought tokens back;
and a 45-minute class, or (one block in ten) a teacher's withdrawal of $2.00 (50 tokens
held, then retired: 12 to fees, 38 to redemption) with its withdrawals row. Each entry's
postings sum to zero, values are frozen at the default rates, and the wallets' balances
are the sums of their postings. One purchase in a thousand blocks failed. What the
metrics page never reads is a stand-in, and the audit is not run on this database: the
hashes, the balances after each posting (0), and seq (increasing in each wallet, with
gaps: 3 x entry id + leg), which spares sorting every posting by wallet. The build ends
with the rollup's first fold of every entry (what `flask soma metrics` does once), timed.

Printed: how the database was had (built now, or kept), what the build and the fold took
when it was built; then GET /admin/ through the Flask test client (server time: routing,
the session's user, the queries, the template) on the big database, on an empty one and
on one with the same users and no entries: the first view (a new app and connection),
then after a discarded warm-up pass the median of REPEATS alternating warm views, their
ratios and the database backends' CPU per view, and a verdict (TARGET); then each query
of a view with its plan, server time and buffers.

Settings (environment):
    SOMA_BENCH_POSTGRES_URL     server, default postgresql://postgres@127.0.0.1:5432/postgres
    SOMA_BENCH_ADMIN_ENTRIES    journal entries in the big database (10000000, 100000 with
                                BENCH_QUICK=1; a multiple of ten)

The small databases have unique names and are dropped at the end, even on error; the big
one is kept (DROP DATABASE it to build it again).
"""

import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg
from _common import (
    QUICK,
    SERVER_URL,
    Databases,
    ServerCPU,
    cached_database,
    drop_secondary_indexes,
    libpq_url,
    make_app,
    migrate,
    platform_wallet,
    quick,
    verdict,
)
from sqlalchemy import event
from sqlalchemy.engine import make_url

ENTRIES = int(os.environ.get("SOMA_BENCH_ADMIN_ENTRIES", quick(10_000_000, 100_000))) // 10 * 10
# The generator's version: part of the kept database's name (with the migration head and
# ENTRIES), so that a change to LEDGER_SQL or build() builds it again.
GENERATOR = "2"
# The warm view on ENTRIES entries takes at most this many times the empty database's.
TARGET = 1.25
STUDENTS = 20_000
TEACHERS = 2_000
REPEATS = quick(21, 3)
PASSWORD = "bench-password-1"  # noqa: S105 - the bench's own throwaway accounts
ADMIN_EMAIL = "admin@bench.example"

# Block b (0..B-1) holds entries 10b+1..10b+10; its student and teacher by b.
LEDGER_SQL = """
SET LOCAL work_mem = '1GB';

CREATE TEMP TABLE bench_entry ON COMMIT DROP AS
SELECT 10 * b + j AS id, b, j, kind,
    CASE kind WHEN 'purchase' THEN 100 WHEN 'refund' THEN 20 WHEN 'gift' THEN 5
        WHEN 'withdrawal_hold' THEN 50 WHEN 'withdrawal_paid' THEN 50
        ELSE CASE WHEN j >= 9 THEN 8 ELSE 10 END END AS tokens,
    %(start)s + (10 * b + j) * %(step)s::bigint * interval '1 microsecond' AS at
FROM generate_series(0, %(blocks)s - 1) AS b, generate_series(1, 10) AS j,
    LATERAL (SELECT CASE
        WHEN j = 1 THEN 'purchase'
        WHEN j IN (2, 4, 6) THEN 'class_hold'
        WHEN j IN (3, 5, 7) THEN 'class_settle'
        WHEN j = 8 AND b %% 50 = 1 THEN 'refund'
        WHEN j = 8 THEN 'gift'
        WHEN j = 9 AND b %% 10 = 0 THEN 'withdrawal_hold'
        WHEN j = 10 AND b %% 10 = 0 THEN 'withdrawal_paid'
        WHEN j = 9 THEN 'class_hold'
        ELSE 'class_settle' END AS kind) AS k;

INSERT INTO journal_entries (id, kind, idempotency_key, request_digest, tokens, usd_cents,
    teacher_usd_cents, reference_type, reference_id, closes_entry_id, memo, created_at)
SELECT id, kind, 'bench-admin-' || id, to_hex(id), tokens, tokens * 10, tokens * 4,
    CASE WHEN kind LIKE 'class_%%' THEN 'class' WHEN kind = 'refund' THEN 'reversal'
        WHEN kind LIKE 'withdrawal_%%' THEN 'withdrawal' WHEN kind = 'gift' THEN 'gift' END,
    CASE WHEN kind LIKE 'class_%%' THEN id
        WHEN kind LIKE 'withdrawal_%%' THEN b / 10 + 1 ELSE b END,
    CASE WHEN kind IN ('class_settle', 'withdrawal_paid') THEN id - 1 END,
    '', at
FROM bench_entry;

INSERT INTO postings (entry_id, wallet_id, bucket, amount, available_after, locked_after,
    kind, created_at, seq, hash)
SELECT entry_id, wallet_id, bucket, amount, 0, 0, kind, at, 3 * entry_id + n,
    to_hex(entry_id) || '-' || n
FROM (
    SELECT e.id AS entry_id, e.kind, e.at, leg.wallet_id, leg.bucket, leg.amount, leg.n
    FROM bench_entry AS e,
        LATERAL (SELECT %(student0)s + e.b %% %(students)s AS student,
            %(student0)s + (e.b + 1) %% %(students)s AS neighbour,
            %(teacher0)s + e.b %% %(teachers)s AS teacher,
            %(teacher0)s + (e.b / 10) %% %(teachers)s AS withdrawer) AS who,
        LATERAL (VALUES
            (CASE e.kind WHEN 'purchase' THEN %(issuance)s WHEN 'class_hold' THEN who.student
                WHEN 'class_settle' THEN who.student WHEN 'refund' THEN who.student
                WHEN 'gift' THEN who.student ELSE who.withdrawer END,
             CASE WHEN e.kind IN ('class_settle', 'withdrawal_paid') THEN 'locked'
                ELSE 'available' END,
             -e.tokens, 0),
            (CASE e.kind WHEN 'purchase' THEN who.student WHEN 'class_hold' THEN who.student
                WHEN 'class_settle' THEN who.teacher WHEN 'refund' THEN %(issuance)s
                WHEN 'gift' THEN who.neighbour WHEN 'withdrawal_hold' THEN who.withdrawer
                ELSE %(redemption)s END,
             CASE WHEN e.kind IN ('class_hold', 'withdrawal_hold') THEN 'locked'
                ELSE 'available' END,
             CASE WHEN e.kind = 'withdrawal_paid' THEN 38 ELSE e.tokens END, 1),
            (%(fees)s, 'available', CASE WHEN e.kind = 'withdrawal_paid' THEN 12 ELSE 0 END, 2)
        ) AS leg (wallet_id, bucket, amount, n)
    WHERE leg.amount <> 0
) AS legs;

INSERT INTO withdrawals (id, key, user_id, method_id, usd_cents, tokens, fee_cents,
    net_cents, fee_tokens, status, version, review_reason, hold_entry_id, closed_entry_id,
    created_at, updated_at, finished_at, attempt)
SELECT b / 10 + 1, 'bench-withdrawal-' || b, w.user_id, m.id, 200, 50, 50, 150, 12, 'paid',
    2, '', e.id - 1, e.id, e.at, e.at, e.at, 1
FROM bench_entry AS e
JOIN wallets AS w ON w.id = %(teacher0)s + (e.b / 10) %% %(teachers)s
JOIN payout_methods AS m ON m.user_id = w.user_id
WHERE e.kind = 'withdrawal_paid';

INSERT INTO purchases (idempotency_key, user_id, tokens, bonus_tokens, amount_minor, currency,
    provider, status, version, failure_reason, created_at, updated_at)
SELECT 'bench-failed-' || b, w.user_id, 100, 0, 1000, 'USD', 'sandbox', 'failed', 1,
    'Card declined.', e.at, e.at
FROM bench_entry AS e
JOIN wallets AS w ON w.id = %(student0)s + e.b %% %(students)s
WHERE e.j = 1 AND e.b %% 1000 = 7;

UPDATE wallets SET available = s.available, locked = s.locked, head_seq = s.head_seq
FROM (
    SELECT wallet_id,
        coalesce(sum(amount) FILTER (WHERE bucket = 'available'), 0) AS available,
        coalesce(sum(amount) FILTER (WHERE bucket = 'locked'), 0) AS locked,
        max(seq) AS head_seq
    FROM postings GROUP BY wallet_id
) AS s
WHERE wallets.id = s.wallet_id;

SELECT setval(pg_get_serial_sequence('journal_entries', 'id'),
    (SELECT max(id) FROM journal_entries));
SELECT setval(pg_get_serial_sequence('postings', 'id'), (SELECT max(id) FROM postings));
SELECT setval(pg_get_serial_sequence('withdrawals', 'id'),
    (SELECT coalesce(max(id), 1) FROM withdrawals));
CREATE TABLE bench_admin_meta (built_at timestamptz NOT NULL, entries bigint NOT NULL,
    load_seconds float, fold_seconds float, fold_through bigint);
INSERT INTO bench_admin_meta (built_at, entries) VALUES (%(end)s, %(entries)s);
"""
LOADED_TABLES = ("journal_entries", "postings", "withdrawals", "purchases")


def build(name: str, entries: int) -> None:
    """Fill database `name` (made and migrated) with the year of entries, then fold them
    into the rollup; record the build's time and what each part took in bench_admin_meta."""
    from werkzeug.security import generate_password_hash

    started = time.perf_counter()
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(days=365)
    step = int(timedelta(days=365) / timedelta(microseconds=1)) // (entries + 1)
    hashed = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1")
    joined = start - timedelta(days=2)
    with psycopg.connect(libpq_url(name)) as conn:
        # Consistent by construction: skip the per-row triggers (foreign keys, the ledger's
        # entry check) for the load.
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(
            "INSERT INTO users (email, display_name, password_hash, role, created_at) "
            "SELECT role || n || '@bench.example', role || ' ' || n, %s, role, %s "
            "FROM (SELECT 'student' AS role, n FROM generate_series(1, %s) n UNION ALL "
            "SELECT 'teacher', n FROM generate_series(1, %s) n) AS u ORDER BY role, n",
            (hashed, joined, STUDENTS, TEACHERS),
        )
        conn.execute(
            "INSERT INTO users (email, display_name, password_hash, role, created_at) "
            "VALUES (%s, 'Bench Admin', %s, 'admin', %s)",
            (ADMIN_EMAIL, hashed, joined),
        )
        conn.execute(
            "INSERT INTO wallets (user_id, is_source, available, locked, created_at) "
            "SELECT id, false, 0, 0, %s FROM users ORDER BY id",
            (joined,),
        )
        conn.execute(
            "INSERT INTO payout_methods (user_id, kind, is_default, created_at, "
            "transfers_active, payouts_enabled, requirements) "
            "SELECT id, 'sandbox', true, %s, false, false, '' FROM users WHERE role = 'teacher'",
            (joined,),
        )
        first = dict(
            conn.execute(
                "SELECT u.role, min(w.id) FROM wallets w JOIN users u ON u.id = w.user_id "
                "GROUP BY u.role"
            ).fetchall()
        )
        restore = drop_secondary_indexes(conn, LOADED_TABLES)
        params = {
            "blocks": entries // 10,
            "start": start,
            "end": end,
            "step": step,
            "entries": entries,
            "student0": first["student"],
            "teacher0": first["teacher"],
            "students": STUDENTS,
            "teachers": TEACHERS,
            "issuance": platform_wallet(conn, "issuance"),
            "redemption": platform_wallet(conn, "redemption"),
            "fees": platform_wallet(conn, "fees"),
        }
        with conn.cursor() as cursor:
            for statement in LEDGER_SQL.split(";\n"):
                if statement.strip():
                    cursor.execute(statement, params if "%" in statement else None)
        restore()
        conn.commit()
    with psycopg.connect(libpq_url(name), autocommit=True) as conn:
        conn.execute("ANALYZE")
    loaded = time.perf_counter() - started
    fold_seconds, through = fold(name, end + timedelta(minutes=1))
    with psycopg.connect(libpq_url(name), autocommit=True) as conn:
        conn.execute(
            "UPDATE bench_admin_meta SET load_seconds = %s, fold_seconds = %s, fold_through = %s",
            (loaded, fold_seconds, through),
        )


def fold(name: str, now: datetime) -> tuple[float, int]:
    """Empty the rollup and sum every entry into it, as `flask soma metrics` does once."""
    from soma.admin import metrics
    from soma.extensions import db

    app = make_app(name, SOMA_CLOCK=lambda: now)
    with app.app_context():
        db.session.connection().exec_driver_sql(
            "TRUNCATE metrics_days, metrics_wallets, metrics_checkpoint"
        )
        db.session.commit()
        started = time.perf_counter()
        through = metrics.catch_up(now)
        seconds = time.perf_counter() - started
        db.session.remove()
        db.engine.dispose()
    with psycopg.connect(libpq_url(name), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) metrics_days, metrics_wallets")
    return seconds, through


def log_in(client) -> None:
    response = client.post("/login", data={"email": ADMIN_EMAIL, "password": PASSWORD})
    if response.status_code != 302:
        raise RuntimeError(f"could not log in: {response.status_code}")


def view(client) -> float:
    started = time.perf_counter()
    response = client.get("/admin/")
    took = 1000 * (time.perf_counter() - started)
    if response.status_code != 200:
        raise RuntimeError(f"/admin/ answered {response.status_code}")
    return took


def measure(names: dict, now: datetime) -> dict:
    """First views (new apps, new connections), a discarded warm-up pass, then REPEATS
    alternating warm views, each with its database backends' CPU."""
    apps = {
        label: make_app(
            name,
            WTF_CSRF_ENABLED=False,
            LOGIN_RATE_LIMIT="1000 per minute",
            SOMA_CLOCK=lambda: now,
            PROPAGATE_EXCEPTIONS=True,
        )
        for label, name in names.items()
    }
    clients = {label: app.test_client() for label, app in apps.items()}
    for client in clients.values():
        log_in(client)
    first = {label: view(client) for label, client in clients.items()}
    times = {label: [] for label in clients}
    server = {label: 0.0 for label in clients}
    for n in range(REPEATS + 1):  # alternate, so that noise hits both alike; 0 warms up
        for label, client in clients.items():
            cpu = ServerCPU(names[label]).start()
            took = view(client)
            cpu.stop()
            if n:
                times[label].append(took)
                server[label] += cpu.seconds or 0.0
    warm = {label: statistics.median(values) for label, values in times.items()}
    spread = {label: (min(values), max(values)) for label, values in times.items()}
    server = {label: 1000 * used / REPEATS for label, used in server.items()}
    plans = explain_view(apps["big"], now)
    for app in apps.values():
        with app.app_context():
            from soma.extensions import db

            db.engine.dispose()
    return {"first": first, "warm": warm, "spread": spread, "server": server, "plans": plans}


def explain_view(app, now: datetime) -> list[dict]:
    """Each statement the figures send, EXPLAIN (ANALYZE, BUFFERS)."""
    from soma.admin import metrics
    from soma.extensions import db

    sent = []
    with app.app_context():

        def capture(conn, cur, statement, parameters, context, executemany):
            sent.append((statement, parameters))

        event.listen(db.engine, "before_cursor_execute", capture)
        result = metrics.figures(now)
        event.remove(db.engine, "before_cursor_execute", capture)
        db.session.rollback()
        plans = [explain(db, sql, params) for sql, params in sent]
        db.session.remove()
    plans.append({"result": result})
    return plans


def explain(db, sql: str, params) -> dict:
    raw = db.session.connection().connection.dbapi_connection
    with raw.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
        plan = cur.fetchone()[0][0]
    nodes = []

    def walk(node):
        label = node["Node Type"]
        if node.get("Index Name"):
            label += f" {node['Index Name']}"
        elif node.get("Relation Name"):
            label += f" {node['Relation Name']}"
        label += f" rows={node.get('Actual Rows')}x{node.get('Actual Loops')}"
        nodes.append(label)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return {
        "what": " ".join(sql.split())[:70],
        "nodes": nodes,
        "server_ms": plan["Execution Time"],
        "buffers": plan["Plan"].get("Shared Hit Blocks", 0)
        + plan["Plan"].get("Shared Read Blocks", 0),
    }


def empty_database(dbs: Databases, users: bool, template: str) -> str:
    """A database with no entries: only the admin, or (`users`) the big one's users too."""
    from werkzeug.security import generate_password_hash

    name = dbs.create("admin_users" if users else "admin_empty", template=template)
    with psycopg.connect(libpq_url(name)) as conn:
        if users:
            conn.execute(
                "INSERT INTO users (email, display_name, password_hash, role, created_at) "
                "SELECT role || n || '@bench.example', role || ' ' || n, 'x', role, now() "
                "FROM (SELECT 'student' AS role, n FROM generate_series(1, %s) n UNION ALL "
                "SELECT 'teacher', n FROM generate_series(1, %s) n) AS u",
                (STUDENTS, TEACHERS),
            )
            conn.execute(
                "INSERT INTO wallets (user_id, is_source, available, locked, created_at) "
                "SELECT id, false, 0, 0, now() FROM users"
            )
        user_id = conn.execute(
            "INSERT INTO users (email, display_name, password_hash, role, created_at) "
            "VALUES (%s, 'Bench Admin', %s, 'admin', now()) RETURNING id",
            (ADMIN_EMAIL, generate_password_hash(PASSWORD, method="pbkdf2:sha256:1")),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO wallets (user_id, is_source, available, locked, created_at) "
            "VALUES (%s, false, 0, 0, now())",
            (user_id,),
        )
    return name


def main() -> int:
    started = time.perf_counter()
    print(f"Soma admin metrics benchmark on {make_url(SERVER_URL).render_as_string()}")
    try:
        psycopg.connect(SERVER_URL, connect_timeout=5).close()
    except psycopg.Error as error:
        print(f"cannot connect to PostgreSQL (SOMA_BENCH_POSTGRES_URL): {error}", file=sys.stderr)
        return 1
    name, built, seconds = cached_database("admin", GENERATOR, build, entries=ENTRIES)
    with psycopg.connect(libpq_url(name)) as conn:
        built_at, loaded, fold_seconds, through = conn.execute(
            "SELECT built_at, load_seconds, fold_seconds, fold_through FROM bench_admin_meta"
        ).fetchone()
        size = conn.execute(
            "SELECT pg_size_pretty(pg_database_size(current_database()))"
        ).fetchone()[0]
        postings = conn.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE relname = 'postings'"
        ).fetchone()[0]
    print(
        f"{'built' if built else 'reused'} {name}: {ENTRIES:,} entries over the year to "
        f"{built_at:%Y-%m-%d %H:%M} UTC, {STUDENTS:,} students, {TEACHERS:,} teachers"
        + (f", in {seconds:.0f} s" if built else " (kept between runs)")
        + (" [QUICK]" if QUICK else "")
    )
    print(f"  database size {size}, about {postings:,} postings")
    print(
        f"  when built: loaded in {loaded:.0f} s; the first fold of every entry into the "
        f"rollup (what `flask soma metrics` does once) took {fold_seconds:.1f} s, through "
        f"entry {through:,} (the newest {ENTRIES - through:,} are younger than the fold's "
        "lag and stay in the tail)"
    )
    now = built_at + timedelta(minutes=1)
    with Databases() as dbs:
        template = dbs.create("admin_template")
        migrate(template)
        empty = empty_database(dbs, users=False, template=template)
        users_only = empty_database(dbs, users=True, template=template)
        with psycopg.connect(libpq_url(users_only), autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) users, wallets")
        figures = measure({"big": name, "empty": empty, "users": users_only}, now)
    first, warm, spread = figures["first"], figures["warm"], figures["spread"]
    server = figures["server"]
    print()
    print("GET /admin/ through the Flask test client (server time), milliseconds")
    print(
        f"  references: an empty database (the admin alone), and one with the same "
        f"{STUDENTS + TEACHERS:,} users and no entries"
    )
    print(f"  {'':28} {ENTRIES:>12,} entries {'empty':>9} {'ratio':>7} {'users':>9} {'ratio':>7}")
    for label, found in (
        ("first view (new app, conn.)", first),
        (f"warm, median of {REPEATS}", warm),
        ("server CPU per warm view", server),
    ):
        print(
            f"  {label:28} {found['big']:20.2f} {found['empty']:9.2f} "
            f"{found['big'] / max(found['empty'], 1e-9):7.2f} {found['users']:9.2f} "
            f"{found['big'] / max(found['users'], 1e-9):7.2f}"
        )
    print(
        "  (a warm-up pass discarded, then alternating views; server CPU from the database's "
        "backends, /proc)"
    )
    print(
        "  "
        + verdict(
            f"/admin/ on {ENTRIES:,} entries / on an empty database, warm time",
            warm["big"] / warm["empty"],
            TARGET,
            higher=False,
        )
    )
    for label, (low, high) in spread.items():
        print(f"      warm range, {label}: {low:.2f}-{high:.2f}")
    plans = figures["plans"]
    result = plans.pop()["result"]
    print(
        f"  figures: {result.days_total:,} entries in 90 days, {result.active_total:,} active "
        f"wallets, twelve months' revenue ${result.year.revenue_cents / 100:,.2f} "
        f"(margin ${result.year.margin_cents / 100:,.2f}, "
        f"fees ${result.year.fee_cents / 100:,.2f}, "
        f"refunds ${result.year.refund_cents / 100:,.2f}); {result.failed.purchases} failed "
        f"purchases in 30 days; tail {result.tail_entries} entries"
    )
    print()
    print(f"the queries of one view on {ENTRIES:,} entries (EXPLAIN ANALYZE, BUFFERS)")
    for plan in plans:
        print(f"  {plan['server_ms']:7.2f} ms {plan['buffers']:6} buffers  {plan['what']}")
        print("      " + " > ".join(plan["nodes"]))
    print()
    print(f"bench/admin.py finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
