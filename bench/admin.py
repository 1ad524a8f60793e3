"""Benchmark the operator's metrics page (/admin/) on PostgreSQL: a ledger of ENTRIES
journal entries over a year against the same page on an empty database.

Run by `make bench` (or `.venv/bin/python bench/admin.py`). It prints figures, it asserts
nothing.

The big database is bench/_big.py's, shared with bench/earnings.py: ten million entries
over a year (purchases, classes with their class_sessions rows, gifts, refunds,
withdrawals), built in the server in bulk SQL once and kept between runs as
`soma_bench_big_<digest>` (see bench/_big.py for what it holds, what is exact and what
is a stand-in, and how it is built). Its build ends with the rollup's first fold of every
entry (what `flask soma metrics` does once), timed.

Printed: how the database was had (built now, or kept), what the build and the fold took
when it was built; then GET /admin/ through the Flask test client (server time: routing,
the session's user, the queries, the template) on the big database, on an empty one and
on one with the same users and no entries: the first view (a new app and connection),
then after a discarded warm-up pass the median of REPEATS alternating warm views, their
ratios and the database backends' CPU per view, and a verdict (TARGET); then each query
of a view with its plan, server time and buffers. The app's clock is a minute after the
big database's newest entry.

Settings (environment):
    SOMA_BENCH_POSTGRES_URL     server, default postgresql://postgres@127.0.0.1:5432/postgres
    SOMA_BENCH_ADMIN_ENTRIES    journal entries in the big database (10000000, 100000 with
                                BENCH_QUICK=1; a multiple of a hundred)

The small databases have unique names and are dropped at the end, even on error; the big
one is kept (DROP DATABASE it to build it again).
"""

import statistics
import sys
import time
from datetime import datetime, timedelta

import psycopg
from _big import ADMIN_EMAIL, ENTRIES, PASSWORD, STUDENTS, TEACHERS, big_database, meta
from _common import (
    QUICK,
    SERVER_URL,
    Databases,
    ServerCPU,
    libpq_url,
    make_app,
    migrate,
    quick,
    verdict,
)
from sqlalchemy import event
from sqlalchemy.engine import make_url

# The warm view on ENTRIES entries takes at most this many times the empty database's.
TARGET = 1.25
# The big database's users: STUDENTS students, TEACHERS teachers and the two of the
# earnings bench (a long-serving teacher and a new one), besides the admin.
USERS_TEACHERS = TEACHERS + 2
REPEATS = quick(21, 3)


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
                (STUDENTS, USERS_TEACHERS),
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
    name, built, seconds = big_database()
    made = meta(name)
    with psycopg.connect(libpq_url(name)) as conn:
        size = conn.execute(
            "SELECT pg_size_pretty(pg_database_size(current_database()))"
        ).fetchone()[0]
        postings = conn.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE relname = 'postings'"
        ).fetchone()[0]
        newest = conn.execute("SELECT max(id) FROM journal_entries").fetchone()[0]
    print(
        f"{'built' if built else 'reused'} {name}: {ENTRIES:,} entries over the year to "
        f"{made['end_at']:%Y-%m-%d %H:%M} UTC ({newest - ENTRIES:,} more before it: the "
        f"long-serving teacher's earlier years), {STUDENTS:,} students, {USERS_TEACHERS:,} "
        "teachers"
        + (f", in {seconds:.0f} s" if built else " (kept between runs)")
        + (" [QUICK]" if QUICK else "")
    )
    print(f"  database size {size}, about {postings:,} postings")
    print(
        f"  when built: in {made['build_seconds']:.0f} s ({made['parts']}); the first fold "
        f"of every entry into the rollup (what `flask soma metrics` does once, beside the "
        f"index builds) took {made['fold_seconds']:.1f} s, through entry "
        f"{made['fold_through']:,} (the newest {newest - made['fold_through']:,} are "
        "younger than the fold's lag and stay in the tail)"
    )
    now = made["end_at"] + timedelta(minutes=1)
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
        f"{STUDENTS + USERS_TEACHERS + 1:,} users and no entries"
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
