"""Benchmark the teacher's earnings dashboard on PostgreSQL: a teacher with a long
history against a new one.

Run by `make bench` (or `.venv/bin/python bench/earnings.py`). It prints figures, it
asserts nothing.

One database holds a teacher with CLASSES classes (completed, every tenth ended
early, one every SPACING_MINUTES so that the last ends an hour before NOW: about 22 a
day, twelve years back), their students, and a new teacher with none. The app's clock
is NOW, the last hour of last month: the worst time for the one read that depends on
the date (last month up to the same point, which is then all of it). Along the way the
teacher rate changed twice, so the frozen values differ by era. The rows are built in
SQL (see HISTORY_SQL), as the ledger and the class service would have written them:
each class a booked, started and finished class_sessions row with its hold and its
settle, each entry's postings summing to zero, each posting's balances after its
entry, each wallet's postings numbered by seq, the entries' values frozen at the
pricing in force at their time, the wallets' balances the sums of their postings.
The hashes are stand-ins and class events are left out: the dashboard reads neither,
and the audit is not run on this database.

Printed: GET /earnings through the Flask test client (server time: routing, the
session's user, the queries, the template), and the service's queries alone
(`earnings_of`), for each teacher, median of REPEATS alternating runs, and their
ratios (target close to 1); then each query's plan with its server time and buffers.

Settings (environment):
    SOMA_BENCH_POSTGRES_URL     server, default postgresql://postgres@127.0.0.1:5432/postgres
    SOMA_BENCH_EARNINGS_CLASSES classes of the long-serving teacher (100000; 5000 with
                                BENCH_QUICK=1)

The database is kept between runs (`_common.cached_database`: its name is a digest of the
migration head, GENERATOR, CLASSES and NOW, so a new month or schema builds it again and
drops the stale one); each run first empties the earnings checkpoints, so that the first
view builds them as on a fresh database.
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
    ServerCPU,
    cached_database,
    libpq_url,
    make_app,
    platform_wallet,
    quick,
    verdict,
)
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

CLASSES = int(os.environ.get("SOMA_BENCH_EARNINGS_CLASSES", quick(100_000, 5_000)))
GENERATOR = "2"  # part of the kept database's name: change it when HISTORY_SQL changes
TARGET = 1.25  # the long-serving teacher's page takes at most this times the new one's
SPACING_MINUTES = 65
STUDENTS = 40
REPEATS = quick(31, 3)
PASSWORD = "bench-password-1"  # noqa: S105 - the bench's own throwaway accounts
# The app's clock for the bench: the last hour of last month, when a view reads the most of
# the month before (growth compares with last month up to the same point: all of it, here).
NOW = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(
    hours=1
)

HISTORY_SQL = """
-- Teacher rates over the years: v1 (4 c a token, from the migrations), then v2 and v3.
INSERT INTO token_pricing (user_type, version, tokens, usd_cents, class_tokens_per_hour,
    effective_at, created_at)
VALUES ('teacher', 2, 10, 45, 10, %(base)s + interval '4 years', %(base)s),
       ('teacher', 3, 10, 50, 10, %(base)s + interval '8 years', %(base)s);

-- Class k (1..n) of student s = k mod S: 30, 45 or 60 minutes (cost 5, 8, 10 tokens),
-- starting every SPACING minutes; every tenth ended early half-way (charge ceil(cost/2)).
CREATE TEMP TABLE bench_class AS
SELECT k, student, cost, minutes, start,
    CASE WHEN early THEN minutes * 30 ELSE minutes * 60 END AS active,
    CASE WHEN early THEN (cost + 1) / 2 ELSE cost END AS charge,
    early
FROM generate_series(1, %(n)s) AS k,
    LATERAL (SELECT (ARRAY[%(students)s])[1 + mod(k, %(s)s)] AS student,
        (ARRAY[5, 8, 10])[1 + mod(k, 3)] AS cost,
        (ARRAY[30, 45, 60])[1 + mod(k, 3)] AS minutes,
        %(base)s + (k - 1) * %(spacing)s * interval '1 minute' AS start,
        mod(k, 10) = 0 AS early) AS c;

-- Entries: 1..S fund each student (a purchase from issuance, a day before the first
-- class); then class k's hold (S + 2k - 1, at its start) and settle (S + 2k, at its end).
CREATE TEMP TABLE bench_entry AS
SELECT s AS id, 'purchase' AS kind, 10000000::bigint AS tokens, NULL::bigint AS class_id,
    NULL::bigint AS closes, %(base)s - interval '1 day' AS at
FROM generate_series(1, %(s)s) AS s
UNION ALL
SELECT %(s)s + 2 * k - 1, 'class_hold', cost, k, NULL, start FROM bench_class
UNION ALL
SELECT %(s)s + 2 * k, 'class_settle', charge, k, %(s)s + 2 * k - 1,
    start + active * interval '1 second' FROM bench_class;

INSERT INTO journal_entries (id, kind, idempotency_key, request_digest, tokens, usd_cents,
    teacher_usd_cents, reference_type, reference_id, closes_entry_id, memo, created_at)
SELECT e.id, e.kind, 'bench-earnings-' || e.id, md5(e.id::text) || md5(e.kind),
    e.tokens,
    (e.tokens * ps.usd_cents * 2 + ps.tokens) / (ps.tokens * 2),
    (e.tokens * pt.usd_cents * 2 + pt.tokens) / (pt.tokens * 2),
    CASE WHEN e.class_id IS NOT NULL THEN 'class' END, e.class_id, e.closes, '', e.at
FROM bench_entry AS e,
    LATERAL (SELECT tokens, usd_cents FROM token_pricing WHERE user_type = 'student'
        AND effective_at <= e.at ORDER BY effective_at DESC, version DESC LIMIT 1) AS ps,
    LATERAL (SELECT tokens, usd_cents FROM token_pricing WHERE user_type = 'teacher'
        AND effective_at <= e.at ORDER BY effective_at DESC, version DESC LIMIT 1) AS pt;

-- The legs: a purchase moves issuance to the student; a hold, the student's available to
-- locked; a settle, the locked cost out, the charge to the teacher, the rest back.
CREATE TEMP TABLE bench_leg AS
SELECT s AS entry_id, %(issuance)s AS wallet_id, 'available' AS bucket,
    -10000000::bigint AS amount, 'purchase' AS kind, %(base)s - interval '1 day' AS at
FROM generate_series(1, %(s)s) AS s
UNION ALL
SELECT s, (ARRAY[%(students)s])[s], 'available', 10000000, 'purchase',
    %(base)s - interval '1 day'
FROM generate_series(1, %(s)s) AS s
UNION ALL
SELECT %(s)s + 2 * k - 1, student, bucket, amount, 'class_hold', start
FROM bench_class,
    LATERAL (VALUES ('available', -cost), ('locked', cost)) AS leg (bucket, amount)
UNION ALL
SELECT %(s)s + 2 * k, wallet_id, bucket, amount, 'class_settle',
    start + active * interval '1 second'
FROM bench_class,
    LATERAL (VALUES (student, 'locked', -cost), (%(teacher)s, 'available', charge),
        (student, 'available', cost - charge)) AS leg (wallet_id, bucket, amount)
WHERE amount <> 0;

INSERT INTO postings (entry_id, wallet_id, bucket, amount, available_after, locked_after,
    kind, created_at, seq, hash)
SELECT entry_id, wallet_id, bucket, amount,
    sum(CASE WHEN bucket = 'available' THEN amount ELSE 0 END)
        OVER (PARTITION BY wallet_id ORDER BY entry_id),
    sum(CASE WHEN bucket = 'locked' THEN amount ELSE 0 END)
        OVER (PARTITION BY wallet_id ORDER BY entry_id),
    kind, at,
    row_number() OVER (PARTITION BY wallet_id ORDER BY entry_id, bucket),
    md5(entry_id::text || bucket) || md5(wallet_id::text || entry_id)
FROM bench_leg
ORDER BY entry_id, wallet_id, bucket;

-- The students' user ids are their wallets' owners (see build()).
INSERT INTO class_sessions (id, booking_key, student_id, teacher_id, title, scheduled_start,
    scheduled_end, duration_minutes, cost_tokens, status, version, active_seconds,
    started_at, ended_at, end_reason, hold_entry_id, closing_entry_id, charged_tokens,
    created_at)
SELECT k, 'bench-class-' || k, w.user_id, %(teacher_user)s, 'Class ' || k, start,
    start + minutes * interval '1 minute', minutes, cost,
    CASE WHEN early THEN 'ended_early' ELSE 'completed' END, 3, active,
    start, start + active * interval '1 second',
    CASE WHEN early THEN 'ended_by_teacher' ELSE 'completed' END,
    %(s)s + 2 * k - 1, %(s)s + 2 * k, charge, start - interval '1 day'
FROM bench_class JOIN wallets AS w ON w.id = bench_class.student;

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
SELECT setval(pg_get_serial_sequence('class_sessions', 'id'),
    (SELECT max(id) FROM class_sessions));
"""


def build(name: str, classes: int, now: str) -> None:
    """Fill database `name` (made and migrated) for the clock `now` (NOW, which is part of
    the kept database's name: a new month builds it again)."""
    from werkzeug.security import generate_password_hash

    hashed = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1")
    base = NOW - timedelta(hours=1) - timedelta(minutes=SPACING_MINUTES * classes)
    with psycopg.connect(libpq_url(name)) as conn:
        # Consistent by construction: skip the per-row foreign key triggers for the load.
        try:
            conn.execute("SET session_replication_role = replica")
        except psycopg.Error:
            conn.rollback()
        conn.execute("SET maintenance_work_mem = '256MB'")

        def user(email: str, role: str) -> tuple[int, int]:
            user_id = conn.execute(
                "INSERT INTO users (email, display_name, password_hash, role, created_at) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (email, email.split("@")[0], hashed, role, base - timedelta(days=2)),
            ).fetchone()[0]
            wallet_id = conn.execute(
                "INSERT INTO wallets (user_id, is_source, available, locked, created_at) "
                "VALUES (%s, false, 0, 0, %s) RETURNING id",
                (user_id, base - timedelta(days=2)),
            ).fetchone()[0]
            return user_id, wallet_id

        long_user, long_wallet = user("long-serving@bench.example", "teacher")
        user("new@bench.example", "teacher")
        students = [user(f"student{i}@bench.example", "student")[1] for i in range(STUDENTS)]
        issuance = platform_wallet(conn, "issuance")
        params = {
            "n": classes,
            "s": STUDENTS,
            "base": base,
            "spacing": SPACING_MINUTES,
            "students": students,
            "teacher": long_wallet,
            "teacher_user": long_user,
            "issuance": issuance,
        }
        with conn.cursor() as cursor:
            for statement in HISTORY_SQL.split(";\n"):
                if statement.strip():
                    cursor.execute(_students_inline(statement, students), params)
        conn.commit()
    with psycopg.connect(libpq_url(name), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) journal_entries, postings, wallets, class_sessions")


EMAILS = {"long-serving": "long-serving@bench.example", "new": "new@bench.example"}


def teachers_of(name: str) -> dict:
    """The two teachers' user ids and emails."""
    with psycopg.connect(libpq_url(name)) as conn:
        ids = {
            label: conn.execute("SELECT id FROM users WHERE email = %s", (email,)).fetchone()[0]
            for label, email in EMAILS.items()
        }
    return {"ids": ids, "emails": dict(EMAILS)}


def _students_inline(statement: str, students: list[int]) -> str:
    """The students' wallet ids written into ARRAY[...] (a parameter list would be one value)."""
    return statement.replace("ARRAY[%(students)s]", f"ARRAY[{', '.join(map(str, students))}]")


def log_in(client, email: str) -> None:
    response = client.post("/login", data={"email": email, "password": PASSWORD})
    if response.status_code != 302:
        raise RuntimeError(f"could not log in as {email}: {response.status_code}")


def timed_views(clients: dict, repeats: int, name: str | None = None) -> dict:
    """Median ms of GET /earnings per client, the clients taking turns; with the database
    `name`, also the median server CPU ms of each view (its backends', from /proc)."""
    times = {label: [] for label in clients}
    server = {label: [] for label in clients}
    for _ in range(repeats):  # alternate, so that noise hits both alike
        for label, client in clients.items():
            cpu = ServerCPU(name).start() if name else None
            started = time.perf_counter()
            response = client.get("/earnings")
            times[label].append(1000 * (time.perf_counter() - started))
            if cpu is not None:
                server[label].append(1000 * (cpu.stop() or 0.0))
            if response.status_code != 200:
                raise RuntimeError(f"/earnings answered {response.status_code}")
    found = {label: statistics.median(values) for label, values in times.items()}
    if name:
        found["server"] = {label: statistics.mean(values) for label, values in server.items()}
    return found


def timed_service(app, teachers: dict) -> tuple[dict, dict, dict]:
    """Median ms of earnings_of per teacher (taking turns), what it returned, and the
    statements it sent."""
    from soma.earnings.service import earnings_of
    from soma.extensions import db
    from soma.models import User

    runs, results, statements = {label: [] for label in teachers["ids"]}, {}, {}
    with app.app_context():
        users = {label: db.session.get(User, user_id) for label, user_id in teachers["ids"].items()}
        sent = []

        def capture(conn, cur, statement, parameters, context, executemany):
            sent.append((statement, parameters))

        for label, user in users.items():
            event.listen(db.engine, "before_cursor_execute", capture)
            results[label] = earnings_of(user)
            event.remove(db.engine, "before_cursor_execute", capture)
            statements[label], sent[:] = list(sent), []
            db.session.rollback()
        for _ in range(REPEATS):
            for label, user in users.items():
                started = time.perf_counter()
                earnings_of(user)
                runs[label].append(1000 * (time.perf_counter() - started))
                db.session.rollback()
        plans = {
            label: [explain(db, sql, params) for sql, params in sent_by]
            for label, sent_by in statements.items()
        }
        db.session.remove()
    times = {label: statistics.median(values) for label, values in runs.items()}
    return times, results, plans


def set_tail(app, wallet_id: int, payments: int) -> None:
    """Sum the wallet's payments into its checkpoint, all but the newest `payments`."""
    from soma.earnings.service import advance_checkpoint
    from soma.extensions import db

    with app.app_context():
        connection = db.session.connection()
        for table in ("earnings_months", "earnings_checkpoints"):
            connection.exec_driver_sql(f"DELETE FROM {table} WHERE wallet_id = %s", (wallet_id,))
        upto = connection.exec_driver_sql(
            "SELECT seq FROM postings WHERE wallet_id = %s AND kind = 'class_settle' "
            "AND amount > 0 ORDER BY seq DESC OFFSET %s LIMIT 1",
            (wallet_id, payments),
        ).scalar()
        db.session.commit()
        advance_checkpoint(wallet_id, upto=upto)
        db.session.remove()


def measure(name: str, teachers: dict) -> dict:
    """The first views (the long-serving teacher's builds the checkpoint), then views and
    the service with no tail and with the longest tail a view leaves, for both teachers."""
    from soma.earnings.service import CHECKPOINT_AFTER
    from soma.extensions import db

    app = make_app(
        name, WTF_CSRF_ENABLED=False, LOGIN_RATE_LIMIT="1000 per minute", SOMA_CLOCK=lambda: NOW
    )
    clients = {label: app.test_client() for label in teachers["emails"]}
    for label, client in clients.items():
        log_in(client, teachers["emails"][label])
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with psycopg.connect(libpq_url(name)) as conn:  # (kept between runs: start with none)
        conn.execute("DELETE FROM earnings_months")
        conn.execute("DELETE FROM earnings_checkpoints")
    first = timed_views(clients, 1)
    with app.app_context():
        wallet_id, months = db.session.execute(
            text(
                "SELECT w.id, (SELECT count(*) FROM earnings_months m WHERE m.wallet_id = w.id) "
                "FROM wallets w WHERE w.user_id = :user"
            ),
            {"user": teachers["ids"]["long-serving"]},
        ).one()
        db.session.remove()
    figures = {"first": first, "months": months, "cases": {}}
    for case, tail in (("no tail", 0), ("longest tail", CHECKPOINT_AFTER - 1)):
        set_tail(app, wallet_id, tail)
        timed_views(clients, 2)  # warm
        views = timed_views(clients, REPEATS, name)
        service, results, plans = timed_service(app, teachers)
        figures["cases"][case] = {
            "tail": tail,
            "views": views,
            "service": service,
            "results": results,
            "plans": plans,
        }
    with app.app_context():
        db.engine.dispose()
    return figures


def explain(db, sql: str, params) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) one statement: its nodes, server time and buffers."""
    raw = db.session.connection().connection.dbapi_connection
    with raw.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
        plan = cur.fetchone()[0][0]
    nodes = []

    def walk(node):
        label = node["Node Type"]
        if node.get("Index Name"):
            label += f" {node['Index Name']}"
        if node.get("Relation Name") and not node.get("Index Name"):
            label += f" {node['Relation Name']}"
        label += f" rows={node.get('Actual Rows')}x{node.get('Actual Loops')}"
        if node.get("Heap Fetches"):
            label += f" heap={node['Heap Fetches']}"
        nodes.append(label)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    first = " ".join(sql.split())[:60]
    return {
        "what": first,
        "nodes": nodes,
        "server_ms": plan["Execution Time"],
        "buffers": plan["Plan"].get("Shared Hit Blocks", 0)
        + plan["Plan"].get("Shared Read Blocks", 0),
    }


def main() -> int:
    started = time.perf_counter()
    print(f"Soma earnings benchmark on {make_url(SERVER_URL).render_as_string()}")
    try:
        psycopg.connect(SERVER_URL, connect_timeout=5).close()
    except psycopg.Error as error:
        print(f"cannot connect to PostgreSQL (SOMA_BENCH_POSTGRES_URL): {error}", file=sys.stderr)
        return 1
    name, built, seconds = cached_database(
        "earnings", GENERATOR, build, classes=CLASSES, now=NOW.isoformat()
    )
    teachers = teachers_of(name)
    print(
        f"{'built' if built else 'reused'} {name}: a teacher with {CLASSES:,} classes, one every "
        f"{SPACING_MINUTES} minutes (~{24 * 60 // SPACING_MINUTES} a day) with {STUDENTS} "
        "students, and a new teacher"
        + (f", in {seconds:.1f} s" if built else " (kept between runs)")
        + (" [QUICK]" if QUICK else "")
    )
    figures = measure(name, teachers)
    first = figures["first"]
    print()
    print("GET /earnings through the Flask test client (server time), milliseconds")
    print(
        f"  first view, no checkpoint yet: long-serving {first['long-serving']:.1f} "
        f"(reads every payment, then sums {figures['months']} months into the checkpoint), "
        f"new {first['new']:.1f}"
    )
    for case, result in figures["cases"].items():
        views, service = result["views"], result["service"]
        print(
            f"  {case} ({result['tail']} payments after the checkpoint), median of {REPEATS} "
            "alternating views after 2 discarded:"
        )
        print(
            f"    page      long-serving {views['long-serving']:7.2f}   new {views['new']:7.2f}"
            f"   ratio {views['long-serving'] / views['new']:5.2f}"
        )
        cpu = views["server"]
        print(
            f"    server CPU long-serving {cpu['long-serving']:7.2f}   new {cpu['new']:7.2f}"
            "   (mean per view, the database's backends)"
        )
        print(
            f"    queries   long-serving {service['long-serving']:7.2f}   new "
            f"{service['new']:7.2f}   ratio {service['long-serving'] / service['new']:5.2f}"
            "   (earnings_of alone)"
        )
    for case, result in figures["cases"].items():
        views = result["views"]
        print(
            "  "
            + verdict(
                f"/earnings, {case}, long-serving / new teacher",
                views["long-serving"] / views["new"],
                TARGET,
                higher=False,
            )
        )
    result = figures["cases"]["no tail"]["results"]["long-serving"]
    print(
        f"  long-serving: {result.lifetime.classes:,} classes, {result.lifetime.hours:,} hours, "
        f"lifetime ${result.lifetime.cents / 100:,.2f}; last 12 months {result.year.classes:,} "
        f"classes, ${result.year.cents / 100:,.2f}"
    )
    for case, result in figures["cases"].items():
        print()
        print(f"plans, long-serving teacher, {case} (EXPLAIN ANALYZE, BUFFERS)")
        for plan in result["plans"]["long-serving"]:
            print(f"  {plan['server_ms']:7.2f} ms {plan['buffers']:6} buffers  {plan['what']}")
            print("      " + " > ".join(plan["nodes"]))
    print()
    print(f"bench/earnings.py finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
