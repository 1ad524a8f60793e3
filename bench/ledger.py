"""Benchmark the ledger on PostgreSQL: throughput against pgbench, and history depth.

Run by `make bench` (or `.venv/bin/python bench/ledger.py`). It prints figures, it
asserts nothing. Two figures:

1. Ledger operations per second: WORKERS processes, each with its own app and
   engine, loop `hold 10 tokens` then `settle` it (fully or partly) to their own
   teacher, each operation a transaction of its own (`own_transaction=True`:
   one statement in autocommit, one round trip). The settle is told the
   hold's student and amount, as a class session that recorded its hold does,
   so the ledger checks them inside the entry's statement instead of reading
   the hold first. Beside it, pgbench's
   TPC-B-like tps with the same number of clients for the same time, on its own
   database on the same server with the same settings, and the ratio.
   pgbench runs at scale 8, one branch per client as is usual (scale >= clients):
   each TPC-B transaction updates one of `scale` branch rows, so with fewer
   branches than clients the clients would mostly queue on those row locks and
   pgbench would be a weak baseline. The ledger workers each use their own two
   wallets, as different users mostly do. Also printed, for context: one worker
   against one pgbench client, the round trips of a hold and of a settle (read
   off libpq's protocol trace), the workers' CPU per operation, 8 workers with
   the pool's pre-ping (DATABASE_POOL_PRE_PING=1), which costs a round trip per
   transaction, and 8 workers posting in the session's transaction instead
   (`with ledger.atomic():`, BEGIN and COMMIT around the statement), the way
   an operation that writes more than its entry runs.
2. The history page (`soma.wallet.history.history_page`) of a wallet with
   HISTORY_ENTRIES journal entries: page 1 against a page ~90% deep, with and
   without a kind filter, median of several runs, and the query plan.

Settings (environment):
    SOMA_BENCH_POSTGRES_URL     server, default postgresql://postgres@127.0.0.1:5432/postgres
    SOMA_BENCH_SECONDS          measured seconds per throughput run (6)
    SOMA_BENCH_ROUNDS           turns of pgbench and ledger at 8 clients; medians (3)
    SOMA_BENCH_HISTORY_ENTRIES  entries in the history wallet (1000000)
    SOMA_BENCH_PGBENCH          the pgbench binary (found on PATH or in PostgreSQL's bin)

Every database it makes has a unique name and is dropped at the end, even on error.
"""

import glob
import multiprocessing
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime

import psycopg
from _common import SERVER_URL, Databases, libpq_url, make_app, migrate
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url

SECONDS = float(os.environ.get("SOMA_BENCH_SECONDS", "6"))
ROUNDS = int(os.environ.get("SOMA_BENCH_ROUNDS", "3"))
WARMUP = 2.0
WORKERS = 8
PGBENCH_SCALE = 8
PGBENCH_THREADS = 2
HISTORY_ENTRIES = int(os.environ.get("SOMA_BENCH_HISTORY_ENTRIES", "1000000"))
HISTORY_DEPTH = 0.9
HOLD = 10
REPEATS = 15


def make_pairs(name: str, count: int) -> list[tuple[int, int]]:
    """Create `count` (student, teacher) pairs; fund each student generously."""
    from soma import ledger
    from soma.extensions import db
    from soma.models import User

    app = make_app(name)
    pairs = []
    with app.app_context():
        for i in range(count):
            users = [
                User(
                    email=f"bench-{role}-{i}@example.com",
                    display_name=f"Bench {role} {i}",
                    password_hash="!",  # noqa: S106 - an unusable hash: no log-in
                    role=role,
                )
                for role in ("student", "teacher")
            ]
            db.session.add_all(users)
            db.session.flush()
            for user in users:
                ledger.open_wallet(user.id)
            db.session.commit()
            with ledger.atomic():
                ledger.credit(users[0].id, 10**12, key=f"bench-fund-{users[0].id}")
            pairs.append((users[0].id, users[1].id))
        db.session.remove()
        db.engine.dispose()
    return pairs


# -- figure 1: ledger throughput ---------------------------------------------------------


def current_engine_options() -> dict:
    from soma.config import build_config

    settings = {"SOMA_ENV": "development", "SECRET_KEY": "-", "DATABASE_URL": SERVER_URL}
    return dict(build_config(settings, "instance")["SQLALCHEMY_ENGINE_OPTIONS"])


def describe(run: dict) -> str:
    return (
        f"p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms, "
        f"worker CPU {run['cpu_ms']:.2f} ms/op"
    )


def _hold(ledger, student: int, key: str, alone: bool):
    if alone:
        return ledger.hold(student, HOLD, key=key, own_transaction=True)
    with ledger.atomic():
        return ledger.hold(student, HOLD, key=key)


def _settle(ledger, held, charge: int, student: int, teacher: int, key: str, alone: bool):
    facts = {"to_user_id": teacher, "holder_id": student, "held": HOLD}
    if alone:
        return ledger.settle(held.id, charge, key=key, own_transaction=True, **facts)
    with ledger.atomic():
        return ledger.settle(held.id, charge, key=key, **facts)


def _one_cycle(ledger, student, teacher, tag: str, n: int, alone=True) -> tuple[float, float]:
    """Hold, then settle; return the time each operation ended.

    `alone`: each operation a transaction of its own; else in the session's.
    """
    held = _hold(ledger, student, f"{tag}-{n}-h", alone)
    t_hold = time.perf_counter()
    charge = HOLD if n % 2 else HOLD - 3
    _settle(ledger, held, charge, student, teacher, f"{tag}-{n}-s", alone)
    return t_hold, time.perf_counter()


def ledger_worker(name, pair, tag, overrides, alone, ready, go, results) -> None:
    """One worker process: its own app and engine; hold/settle until the time is up."""
    try:
        from soma import ledger
        from soma.extensions import db

        app = make_app(name, **overrides)
        with app.app_context():
            student, teacher = pair
            _one_cycle(ledger, student, teacher, f"{tag}-ready", 0, alone)  # connect, compile
            ready.put(os.getpid())
            go.wait()
            begin = time.perf_counter() + WARMUP
            end = begin + SECONDS
            ops, latencies, n = 0, [], 0
            cpu_first = cpu_last = 0.0
            last = time.perf_counter()
            while last < end:
                n += 1
                for finished in _one_cycle(ledger, student, teacher, tag, n, alone):
                    if begin <= finished < end:
                        ops += 1
                        latencies.append(finished - last)
                        cpu_last = time.process_time()
                        cpu_first = cpu_first or cpu_last
                    last = finished
            db.session.remove()
            db.engine.dispose()
        results.put(("ok", ops, latencies, (cpu_last - cpu_first) / max(ops - 1, 1)))
    except BaseException:
        results.put(("error", traceback.format_exc(), None, None))
        ready.put(None)


def run_ledger(
    name: str, pairs: list[tuple[int, int]], workers: int, alone: bool = True, **overrides
) -> dict:
    """Ops/s of `workers` processes over SECONDS after WARMUP (app settings `overrides`).

    `alone`: each operation a transaction of its own; else in the session's.
    """
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    tag = f"run{workers}-{secrets.token_hex(3)}"
    processes = [
        context.Process(
            target=ledger_worker,
            args=(name, pairs[i], f"{tag}-{i}", overrides, alone, ready, go, results),
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        for _ in processes:
            if ready.get(timeout=120) is None:
                break
        go.set()
        outcomes = [results.get(timeout=WARMUP + SECONDS + 120) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    errors = [detail for status, detail, _, _ in outcomes if status == "error"]
    if errors:
        raise RuntimeError("a ledger worker failed:\n" + errors[0])
    ops = sum(count for _, count, _, _ in outcomes)
    latencies = sorted(x for _, _, lat, _ in outcomes for x in lat)
    return {
        "ops_per_s": ops / SECONDS,
        "ops": ops,
        "cpu_ms": 1000 * statistics.mean(cpu for _, _, _, cpu in outcomes),
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
    }


def round_trips_per_op(name: str, pair: tuple[int, int], alone: bool, cycles: int = 50) -> dict:
    """Count the round trips of one hold and one settle, from libpq's protocol trace.

    Every connection the pool hands out is traced while it is out; each
    ReadyForQuery the server sends ends one round trip, named by the first
    message the client sent in it (a simple query's first word, or "statement"
    for an extended-protocol statement). A pre-ping, which SQLAlchemy sends
    before handing the connection out, is counted from the pool's events.
    """
    from soma import ledger
    from soma.extensions import db

    app = make_app(name)
    counts = {"hold": {}, "settle": {}}
    with tempfile.TemporaryFile("w+") as trace, app.app_context():
        engine = db.engine
        pre_pings = []

        def start(dbapi_connection, *_):
            if engine.pool._pre_ping:
                pre_pings.append(1)
            dbapi_connection.pgconn.trace(trace.fileno())
            dbapi_connection.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

        def stop(dbapi_connection, *_):
            dbapi_connection.pgconn.untrace()

        def count(op: str, run, *args):
            """Run `run(*args)`, tallying its round trips under `op`; return what it returns."""
            trace.seek(0, os.SEEK_END)
            begin = trace.tell()
            pre_pings.clear()
            result = run(*args)
            trace.seek(begin)
            tally = counts[op]
            if pre_pings:
                tally["pre-ping"] = tally.get("pre-ping", 0) + len(pre_pings)
            first = None
            for line in trace.read().splitlines():
                direction, _, message, *rest = line.split("\t")
                if direction == "F" and first is None:
                    quoted = rest[0].strip().split('"')
                    first = quoted[1].split()[0] if message == "Query" else "statement"
                if direction == "B" and message == "ReadyForQuery":
                    tally[first] = tally.get(first, 0) + 1
                    first = None
            return result

        listeners = [(engine.pool, "checkout", start), (engine.pool, "checkin", stop)]
        for target, name_, fn in listeners:
            event.listen(target, name_, fn)
        student, teacher = pair
        tag = f"count-{secrets.token_hex(3)}"
        _one_cycle(ledger, student, teacher, tag + "-warm", 0, alone)
        for n in range(1, cycles + 1):
            held = count("hold", _hold, ledger, student, f"{tag}-{n}-h", alone)
            charge, settle_key = HOLD - 3, f"{tag}-{n}-s"
            count("settle", _settle, ledger, held, charge, student, teacher, settle_key, alone)
        for target, name_, fn in listeners:
            event.remove(target, name_, fn)
        db.session.remove()
        engine.dispose()
    return {op: {k: v / cycles for k, v in c.items()} for op, c in counts.items()}


# -- pgbench -----------------------------------------------------------------------------


def median_run(runs: list[dict], figure: str) -> dict:
    """The run whose `figure` is the median of `runs` (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda run: run[figure])
    return ordered[(len(ordered) - 1) // 2]


def find_pgbench() -> str | None:
    found = os.environ.get("SOMA_BENCH_PGBENCH") or shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    return candidates[-1] if candidates else None


def pgbench_init(pgbench: str, name: str) -> None:
    command = [pgbench, "-i", "-q", "-s", str(PGBENCH_SCALE)]
    done = subprocess.run([*command, libpq_url(name)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")


def run_pgbench(pgbench: str, name: str, clients: int) -> dict:
    threads = min(PGBENCH_THREADS, clients)
    command = [pgbench, "-c", str(clients), "-j", str(threads), "-T", str(round(SECONDS))]
    done = subprocess.run([*command, libpq_url(name)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    if not tps:
        raise RuntimeError("cannot read pgbench's output:\n" + done.stdout + done.stderr)
    return {
        "tps": float(tps.group(1)),
        "latency_ms": float(latency.group(1)) if latency else float("nan"),
    }


# -- figure 2: history depth ---------------------------------------------------------------

HISTORY_SQL = """
-- One student wallet W with every entry, a teacher T, and the issuance account I.
-- Entry g is, by r = mod(g - 1, 4): a purchase of 100 (I -> W), a class hold of 10
-- on W, the settle of that hold (7 to T, 3 back to W), a gift of 5 (W -> T), in
-- cycles c = (g - 1) / 4. Balanced, and each posting's *_after is the wallet's
-- true balance after its entry. One entry every 30 seconds.
INSERT INTO journal_entries (id, kind, idempotency_key, request_digest, tokens, usd_cents,
    teacher_usd_cents, reference_type, reference_id, closes_entry_id, memo, created_at)
SELECT g, (ARRAY['purchase', 'class_hold', 'class_settle', 'gift'])[r + 1],
    'bench-history-' || g, md5(g::text) || md5(g::text),
    tokens, tokens * 10, tokens * 4,
    CASE WHEN r IN (1, 2) THEN 'class' END,
    CASE WHEN r IN (1, 2) THEN c + 1 END,
    CASE WHEN r = 2 THEN g - 1 END,
    '', %(base)s + g * interval '30 seconds'
FROM generate_series(1, %(n)s) AS g,
    LATERAL (SELECT mod(g - 1, 4) AS r, (g - 1) / 4 AS c) AS cycle,
    LATERAL (SELECT (ARRAY[100, 10, 7, 5])[r + 1] AS tokens) AS amount;

-- seq numbers each wallet's postings in entry order; the hashes are stand-ins (the
-- history page never reads them, and the audit is not run on this database).
INSERT INTO postings (entry_id, wallet_id, bucket, amount, available_after, locked_after,
    kind, created_at, seq, hash)
SELECT g, wallet_id, leg.bucket, leg.amount,
    CASE leg.who
        WHEN 'W' THEN 88 * c + (ARRAY[100, 90, 93, 88])[r + 1]
        WHEN 'T' THEN 12 * c + (ARRAY[0, 0, 7, 12])[r + 1]
        ELSE -100 * (c + 1)
    END,
    CASE leg.who WHEN 'W' THEN (ARRAY[0, 10, 0, 0])[r + 1] ELSE 0 END,
    (ARRAY['purchase', 'class_hold', 'class_settle', 'gift'])[r + 1],
    %(base)s + g * interval '30 seconds',
    row_number() OVER (PARTITION BY wallet_id ORDER BY g, leg.n),
    md5(g::text || leg.n) || md5(leg.n || g::text)
FROM generate_series(1, %(n)s) AS g,
    LATERAL (SELECT mod(g - 1, 4) AS r, (g - 1) / 4 AS c) AS cycle,
    (VALUES
        (0, 1, 'I', 'available', -100), (0, 2, 'W', 'available', 100),
        (1, 1, 'W', 'available', -10), (1, 2, 'W', 'locked', 10),
        (2, 1, 'W', 'locked', -10), (2, 2, 'T', 'available', 7), (2, 3, 'W', 'available', 3),
        (3, 1, 'W', 'available', -5), (3, 2, 'T', 'available', 5)
    ) AS leg (leg_r, n, who, bucket, amount),
    LATERAL (SELECT CASE leg.who WHEN 'W' THEN %(w)s WHEN 'T' THEN %(t)s ELSE %(i)s END
        AS wallet_id) AS owner
WHERE leg_r = r
ORDER BY g, leg.n;

UPDATE wallets SET available = s.available, locked = s.locked, head_seq = s.head_seq
FROM (
    SELECT wallet_id,
        coalesce(sum(amount) FILTER (WHERE bucket = 'available'), 0) AS available,
        coalesce(sum(amount) FILTER (WHERE bucket = 'locked'), 0) AS locked,
        max(seq) AS head_seq
    FROM postings GROUP BY wallet_id
) AS s
WHERE wallets.id = s.wallet_id;

SELECT setval(pg_get_serial_sequence('journal_entries', 'id'), %(n)s);
SELECT setval(pg_get_serial_sequence('postings', 'id'), (SELECT max(id) FROM postings));
"""


def build_history(name: str, entries: int) -> tuple[int, float]:
    """Fill database `name` with a wallet of `entries` entries; return (wallet id, seconds)."""
    started = time.perf_counter()
    with psycopg.connect(libpq_url(name)) as conn:
        # The rows are consistent by construction: skip the per-row foreign key
        # triggers for the load (a session setting, for superusers only).
        try:
            conn.execute("SET session_replication_role = replica")
        except psycopg.Error:
            conn.rollback()
        conn.execute("SET maintenance_work_mem = '256MB'")
        ids = {}
        for who, role in (("w", "student"), ("t", "teacher")):
            user_id = conn.execute(
                "INSERT INTO users (email, display_name, password_hash, role, created_at) "
                "VALUES (%s, %s, '!', %s, now()) RETURNING id",
                (f"bench-history-{role}@example.com", f"History {role}", role),
            ).fetchone()[0]
            ids[who] = conn.execute(
                "INSERT INTO wallets (user_id, is_source, available, locked, created_at) "
                "VALUES (%s, false, 0, 0, now()) RETURNING id",
                (user_id,),
            ).fetchone()[0]
        ids["i"] = conn.execute("SELECT id FROM wallets WHERE code = 'issuance'").fetchone()[0]
        params = {"n": entries, "base": datetime(2020, 1, 1, tzinfo=UTC), **ids}
        with conn.cursor() as cursor:
            for statement in HISTORY_SQL.split(";\n"):
                if statement.strip():
                    cursor.execute(statement, params)
        conn.commit()
    with psycopg.connect(libpq_url(name), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) journal_entries, postings, wallets")
    return ids["w"], time.perf_counter() - started


def entry_cursor(name: str, wallet_id: int, back: int):
    """The history cursor of the wallet's entry `back` entries from the newest."""
    from soma.wallet.history import Cursor

    with psycopg.connect(libpq_url(name)) as conn:
        (seq,) = conn.execute(
            "SELECT min(seq) FROM postings WHERE wallet_id = %s "
            "GROUP BY entry_id ORDER BY min(seq) DESC OFFSET %s LIMIT 1",
            (wallet_id, back - 1),
        ).fetchone()
    return Cursor(seq)


def time_history(name: str, wallet_id: int, cursor) -> list[dict]:
    """Median time of history_page for page 1 and the deep page, with and without a kind."""
    from soma.extensions import db
    from soma.wallet.history import history_page

    app = make_app(name)
    cases = []
    with app.app_context():
        engine = db.engine
        captured = {}

        def capture(conn, cur, statement, parameters, context, executemany):
            captured["sql"], captured["params"] = statement, parameters

        event.listen(engine, "before_cursor_execute", capture)
        for kind in (None, "class_hold"):
            where = {"page 1": None, "deep": cursor}
            timings = {label: [] for label in where}
            pages = {
                label: history_page(wallet_id, kind=kind, cursor=at) for label, at in where.items()
            }
            db.session.rollback()
            for _ in range(REPEATS):  # alternate, so that noise hits both alike
                for label, at in where.items():
                    started = time.perf_counter()
                    history_page(wallet_id, kind=kind, cursor=at)
                    timings[label].append(time.perf_counter() - started)
                    db.session.rollback()
            for label, at in where.items():
                history_page(wallet_id, kind=kind, cursor=at)
                plan = explain(db, captured["sql"], captured["params"])
                db.session.rollback()
                page = pages[label]
                cases.append(
                    {
                        "kind": kind or "any",
                        "page": label,
                        "ms": 1000 * statistics.median(timings[label]),
                        "rows": len(page.rows),
                        "first": page.rows[0].entry_id if page.rows else None,
                        "more": page.next_cursor is not None,
                        "plan": plan,
                    }
                )
        event.remove(engine, "before_cursor_execute", capture)
        total = db.session.scalar(select(func.count()).select_from(db.metadata.tables["postings"]))
        db.session.remove()
        engine.dispose()
    return cases, total


def explain(db, sql: str, params) -> dict:
    """EXPLAIN ANALYZE the statement history_page sent: its node shape and buffers."""
    raw = db.session.connection().connection.dbapi_connection
    with raw.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
        plan = cur.fetchone()[0][0]
    nodes, big_sorts = [], []

    def walk(node, depth=0):
        label = node["Node Type"]
        if node.get("Strategy") in ("Sorted", "Hashed"):
            label = f"{'Group' if node['Strategy'] == 'Sorted' else 'Hash'}{label}"
        if node.get("Index Name"):
            label += f" {node['Index Name']}"
        if node.get("Scan Direction") == "Backward":
            label += " (backward)"
        if node["Node Type"] in ("Sort", "Incremental Sort") or node.get("Index Name"):
            label += f" rows={node.get('Actual Rows')}x{node.get('Actual Loops')}"
        nodes.append(label)
        if "Sort" in node["Node Type"] and node.get("Actual Rows", 0) > 1000:
            big_sorts.append(label)
        for child in node.get("Plans", []):
            walk(child, depth + 1)

    walk(plan["Plan"])
    return {
        "nodes": nodes,
        "server_ms": plan["Execution Time"],
        "buffers": plan["Plan"].get("Shared Hit Blocks", 0)
        + plan["Plan"].get("Shared Read Blocks", 0),
        "sorts_all": bool(big_sorts),
    }


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    started = time.perf_counter()
    pgbench = find_pgbench()
    print(f"Soma ledger benchmark on {make_url(SERVER_URL).render_as_string()}")
    print(
        f"{WORKERS} workers (processes), {SECONDS:g} s measured after {WARMUP:g} s warm-up, "
        f"{ROUNDS} rounds; "
        f"{os.cpu_count()} CPUs; pgbench {'at ' + pgbench if pgbench else 'not found'}"
    )
    try:
        conn = psycopg.connect(SERVER_URL, connect_timeout=5)
    except psycopg.Error as error:
        print(f"cannot connect to PostgreSQL (SOMA_BENCH_POSTGRES_URL): {error}", file=sys.stderr)
        return 1
    with conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('server_version', 'synchronous_commit', 'fsync', 'shared_buffers')"
            ).fetchall()
        )
    print("server: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    with Databases() as dbs:
        template = dbs.create("template")
        migrate(template)
        ledger_db = dbs.create("ledger", template=template)
        history_db = dbs.create("history", template=template)
        pairs = make_pairs(ledger_db, WORKERS)
        counted = round_trips_per_op(ledger_db, pairs[0], alone=True)
        counted_in_session = round_trips_per_op(ledger_db, pairs[0], alone=False)

        pgbench_db = None
        if pgbench:
            pgbench_db = dbs.create("pgbench")
            pgbench_init(pgbench, pgbench_db)

        # pgbench and the ledger take turns, ROUNDS times, so that a checkpoint
        # or another process weighs on both alike; the figures are medians.
        bases, multis = [], []
        for _ in range(ROUNDS):
            if pgbench:
                bases.append(run_pgbench(pgbench, pgbench_db, WORKERS))
            multis.append(run_ledger(ledger_db, pairs, WORKERS))
        base = median_run(bases, "tps") if pgbench else None
        multi = median_run(multis, "ops_per_s")
        # Context only: the same with the pool's pre-ping (a round trip per
        # transaction). Every other figure uses the app's own engine options.
        options = {**current_engine_options(), "pool_pre_ping": True}
        pinged = run_ledger(ledger_db, pairs, WORKERS, SQLALCHEMY_ENGINE_OPTIONS=options)
        in_session = run_ledger(ledger_db, pairs, WORKERS, alone=False)
        single = run_ledger(ledger_db, pairs, 1)
        base_single = run_pgbench(pgbench, pgbench_db, 1) if pgbench else None

        print()
        print("1. Ledger throughput (hold and settle alternately, each its own transaction)")
        rows = [
            ("ledger, 1 worker", f"{single['ops_per_s']:9.0f} ops/s", describe(single)),
            (f"ledger, {WORKERS} workers", f"{multi['ops_per_s']:9.0f} ops/s", describe(multi)),
        ]
        if base:
            rows += [
                ("pgbench TPC-B, 1 client", f"{base_single['tps']:9.0f} tps",
                 f"avg {base_single['latency_ms']:.2f} ms"),
                (f"pgbench TPC-B, {WORKERS} clients", f"{base['tps']:9.0f} tps",
                 f"avg {base['latency_ms']:.2f} ms (scale {PGBENCH_SCALE}, "
                 f"-j {PGBENCH_THREADS})"),
                ("ratio ledger/pgbench, 1", f"{single['ops_per_s'] / base_single['tps']:9.2f}", ""),
                (f"ratio ledger/pgbench, {WORKERS}", f"{multi['ops_per_s'] / base['tps']:9.2f}",
                 "target >= 0.5; per round " + ", ".join(
                     f"{m['ops_per_s'] / b['tps']:.2f} ({m['ops_per_s']:.0f}/{b['tps']:.0f})"
                     for m, b in zip(multis, bases, strict=True))),
            ]  # fmt: skip
        rows.append(
            (f"(ledger, {WORKERS}, pre-ping on)", f"{pinged['ops_per_s']:9.0f} ops/s",
             describe(pinged) + (f"; ratio {pinged['ops_per_s'] / base['tps']:.2f}"
                                 if base else ""))
        )  # fmt: skip
        rows.append(
            (f"(ledger, {WORKERS}, in session tx)", f"{in_session['ops_per_s']:9.0f} ops/s",
             describe(in_session) + (f"; ratio {in_session['ops_per_s'] / base['tps']:.2f}"
                                     if base else ""))
        )  # fmt: skip
        for label, figure, note in rows:
            print(f"  {label:<28}{figure:>16}   {note}")
        for how, tallies in (("", counted), (" in session tx", counted_in_session)):
            for op, c in tallies.items():
                trips = sum(c.values())
                detail = ", ".join(f"{k} {v:g}" for k, v in sorted(c.items()))
                print(f"  {op + ' round trips' + how:<32}{trips:>12.1f}   {detail}")

        print()
        n = HISTORY_ENTRIES
        print(f"2. History page of a wallet with {n:,} entries (median of {REPEATS})", flush=True)
        wallet_id, seconds = build_history(history_db, n)
        cursor = entry_cursor(history_db, wallet_id, int(n * HISTORY_DEPTH))
        cases, postings = time_history(history_db, wallet_id, cursor)
        print(f"  built {n:,} entries, {postings:,} postings in {seconds:.1f} s; deep = after")
        print(f"  the cursor of the entry {int(n * HISTORY_DEPTH):,} back from the newest")
        by = {(c["kind"], c["page"]): c for c in cases}
        for c in cases:
            print(
                f"  kind={c['kind']:<11} {c['page']:<7}{c['ms']:9.2f} ms   "
                f"server {c['plan']['server_ms']:.2f} ms, {c['plan']['buffers']} buffers, "
                f"{c['rows']} rows from entry {c['first']:,}{', more' if c['more'] else ''}"
            )
        for kind in ("any", "class_hold"):
            ratio = by[(kind, "deep")]["ms"] / by[(kind, "page 1")]["ms"]
            print(f"  kind={kind:<11} deep/page 1 {ratio:7.2f}    target close to 1")
        for c in cases:
            if c["page"] == "deep":
                print(f"  plan, kind={c['kind']}, deep: " + " > ".join(c["plan"]["nodes"]))
        if any(c["plan"]["sorts_all"] for c in cases):
            print("  WARNING: a plan sorts more than one page of rows")
    print()
    print(f"bench/ledger.py finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
