"""Benchmark the ledger's money paths on PostgreSQL against pgbench and against each other.

Run by `make bench` (or `.venv/bin/python bench/ledger.py`). It prints figures, it
asserts nothing. Two tables:

1. Money operations at WORKERS workers (processes, each with its own app and engine,
   started once), each run SECONDS long after SETTLE_IN seconds of running in:
   - holds and settles: a class payment is a hold then a settle, two operations; the
     unit is one operation. Each is a transaction of its own (`own_transaction=True`:
     one statement in autocommit), the settle told the hold's student and amount as a
     class session that recorded its hold does;
   - transfers: 1 token from one student to another;
   both between wallets drawn at random from one shared pool of POOL students (and POOL
   teachers), so that workers contend for rows as pgbench's clients do for its POOL
   branches. Their reference is pgbench's TPC-B-like script with WORKERS clients at
   scale POOL on its own database on the same server;
   - credits from issuance (`soma.ledger.operations.credit`, 1 token to the worker's own
     student): every worker meets the others only on the platform's issuance account;
   - sandbox purchase fulfilment: pending sandbox purchases made as the buy page makes
     them (`service.start`; one made so, the rest copied from it in SQL just before the
     run, outside the timed part, as a checkout is made just before it is paid), then
     `service.fulfil(id, "sandbox", receipt=...)` as the sandbox's Pay button calls it;
     twice: of the first package with a bonus (two entries, tokens and bonus) and of the
     first without one (one entry);
   and the reference of these, transfers between distinct users: each worker between
   its own two students, so that nothing but the ledger itself is shared.
   The runs take turns in two groups (GROUPS), each with its reference: pgbench with
   holds and settles and transfers in the pool, over ROUNDS rounds; transfers between
   distinct users with credits and fulfilments, over OWN_ROUNDS. pgbench's database is
   dropped when its group is done, so that its pages leave shared_buffers. In every
   round of a group its runs take turns (the order reversed every other round); a first
   round is discarded as a warm-up; before each run a CHECKPOINT, so that none falls
   inside one.
   The figures are medians over the rounds; each ratio is the median of the rounds' own
   ratios. Beside each: latency, the workers' CPU per operation, and the server's: the
   CPU of the database's backends (from /proc/<pid>/stat, same machine) per operation.
   Then the round trips of a hold and of a settle, read off libpq's protocol trace.
2. The wallet history page, whole (GET /wallet/history through the Flask test client,
   logged in: routing, session, the query, the template), on a wallet of
   HISTORY_ENTRIES entries: page 1 against a page ~90% deep, with and without a kind
   filter, in alternating turns after a discarded warm-up, medians; and the query alone
   (`history_page`) with its plan, for context.

Settings (environment):
    SOMA_BENCH_POSTGRES_URL     server, default postgresql://postgres@127.0.0.1:5432/postgres
    SOMA_BENCH_SECONDS          measured seconds per run (2; 1 with BENCH_QUICK=1)
    SOMA_BENCH_ROUNDS           measured rounds of each group (3 and 5; 1 and no warm-up
                                round with BENCH_QUICK=1)
    SOMA_BENCH_HISTORY_ENTRIES  entries in the history wallet (1000000; 20000 quick)
    SOMA_BENCH_PGBENCH          the pgbench binary (found on PATH or in PostgreSQL's bin)
    BENCH_QUICK=1               one short round, 2 workers, small data

The history database is kept between runs (see `_common.cached_database`; its ledger's
tables UNLOGGED, only read here, see `_common.set_unlogged`); every other
database it makes has a unique name and is dropped at the end, even on error.
"""

import glob
import multiprocessing
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime

import psycopg
from _common import (
    QUICK,
    SERVER_URL,
    Databases,
    ServerCPU,
    admin_sql,
    cached_database,
    drop_secondary_indexes,
    fmt_ms,
    libpq_url,
    make_app,
    median,
    migrate,
    per_op_ms,
    platform_wallet,
    quick,
    set_unlogged,
    table,
    unlogged_intact,
    verdict,
)
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url

SECONDS = float(os.environ.get("SOMA_BENCH_SECONDS", quick(2, 1)))
ROUNDS = int(os.environ.get("SOMA_BENCH_ROUNDS", quick(3, 1)))
# The second group's rounds: its ratios spread more from round to round.
OWN_ROUNDS = int(os.environ.get("SOMA_BENCH_ROUNDS", quick(5, 1)))
WARMUP_ROUNDS = quick(1, 0)
SETTLE_IN = quick(0.5, 0.2)
WORKERS = quick(8, 2)
POOL = 8
PGBENCH_THREADS = 2
HISTORY_ENTRIES = int(os.environ.get("SOMA_BENCH_HISTORY_ENTRIES", quick(1_000_000, 20_000)))
HISTORY_DEPTH = 0.9
HOLD = 10
REPEATS = quick(15, 3)
PURCHASES_PER_WORKER = quick(1500, 300)
PASSWORD = "bench-password-1"  # noqa: S105 - the bench's own throwaway accounts

# The runs of a round: (key, label, unit, reference key).
RUNS = (
    ("pgbench", f"pgbench TPC-B, {WORKERS} clients, scale {POOL}", "tx", None),
    ("holdsettle", "holds and settles, shared pool", "op", "pgbench"),
    ("transfer_pool", "transfers, shared pool", "op", "pgbench"),
    ("transfer_own", "transfers between distinct users", "op", None),
    ("credit", "credits from issuance", "op", "transfer_own"),
    ("fulfil", "sandbox fulfilment, with a bonus (2 entries)", "purchase", "transfer_own"),
    ("fulfil_plain", "sandbox fulfilment, no bonus (1 entry)", "purchase", "transfer_own"),
)
FULFILMENTS = ("fulfil", "fulfil_plain")
# The runs take turns in two groups, each with its reference: pgbench's, and that of
# transfers between distinct users. pgbench's database, as large as the server's
# shared_buffers here, pushes the ledger's pages out of them; a purchase touches many
# more pages than a transfer (the purchase's row and its eight indexes, its history, the
# notification, the mail), so in one group it paid for pgbench's run at its turn, which
# a server sized for its data does not (fulfilment with a bonus 0.50 x transfers with
# pgbench in the rounds in one trial, 0.64 and 0.55 without in two).
# Its database is dropped once its group is done: left in place, its pages still filled
# shared_buffers when the next group began, and cost that group's runs 10 to 15 % more of
# the server's CPU per operation (fulfilment with a bonus 0.44 to 0.48 in three runs of
# the whole file; 0.51 with the database dropped, 0.50 with the groups in the other order).
# A group: a reference (a run of none) and the runs measured against it, in RUNS' order.
GROUPS = tuple(
    ((root, *(key for key, *_, reference in RUNS if reference == root)), rounds)
    for root, rounds in (("pgbench", ROUNDS), ("transfer_own", OWN_ROUNDS))
)


def make_users(name: str) -> dict:
    """POOL students and POOL teachers (the shared pool), and two students per worker;
    every student funded generously. Return their user ids."""
    from werkzeug.security import generate_password_hash

    from soma import ledger
    from soma.extensions import db
    from soma.models import User

    app = make_app(name)
    hashed = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1")
    people = {"students": [], "teachers": [], "own": []}

    def person(email, role):
        user = User(email=email, display_name=email.split("@")[0], password_hash=hashed, role=role)
        db.session.add(user)
        db.session.flush()
        ledger.open_wallet(user.id)
        db.session.commit()
        if role == "student":
            ledger.credit(user.id, 10**12, key=f"bench-fund-{user.id}", own_transaction=True)
        return user.id

    with app.app_context():
        for i in range(POOL):
            people["students"].append(person(f"pool-student-{i}@bench.example", "student"))
            people["teachers"].append(person(f"pool-teacher-{i}@bench.example", "teacher"))
        for i in range(WORKERS):
            people["own"].append(
                tuple(person(f"own-{i}-{n}@bench.example", "student") for n in "ab")
            )
        db.session.remove()
        db.engine.dispose()
    return people


# -- the operations each worker loops ---------------------------------------------------


def _hold_settle(ledger, rng, people, index, key):
    """A class payment: hold 10, settle 10 or 7 of it to a teacher; two operations."""
    student = rng.choice(people["students"])
    teacher = rng.choice(people["teachers"])
    held = ledger.hold(student, HOLD, key=key + "h", own_transaction=True)
    first = time.perf_counter()
    charge = HOLD if rng.random() < 0.5 else HOLD - 3
    facts = {"to_user_id": teacher, "holder_id": student, "held": HOLD}
    ledger.settle(held.id, charge, key=key + "s", own_transaction=True, **facts)
    return first, time.perf_counter()


def _transfer_pool(ledger, rng, people, index, key):
    giver, taker = rng.sample(people["students"], 2)
    ledger.transfer(giver, taker, 1, key=key, own_transaction=True)
    return (time.perf_counter(),)


def _transfer_own(ledger, rng, people, index, key):
    giver, taker = people["own"][index]
    ledger.transfer(giver, taker, 1, key=key, own_transaction=True)
    return (time.perf_counter(),)


def _credit(ledger, rng, people, index, key):
    from soma.ledger.operations import credit

    credit(people["own"][index][0], 1, key=key, own_transaction=True)
    return (time.perf_counter(),)


OPERATIONS = {
    "holdsettle": _hold_settle,
    "transfer_pool": _transfer_pool,
    "transfer_own": _transfer_own,
    "credit": _credit,
}


def worker(name, index, people, commands, results) -> None:
    """One worker process: its own app and engine; runs what it is told until None."""
    try:
        from soma import ledger
        from soma.extensions import db
        from soma.purchases import service

        app = make_app(name)
        rng = random.Random(index)
        tag = secrets.token_hex(3)
        with app.app_context():
            for op in OPERATIONS.values():  # connect, compile (each shape of settle too)
                for _ in range(8):
                    op(ledger, rng, people, index, f"prime-{tag}-{index}-{secrets.token_hex(4)}")
            for primer in people["primers"][index]:
                service.fulfil(primer, "sandbox", receipt=f"SANDBOX-{primer}")
            results.put(("ready", index))
            while (command := commands.get()) is not None:
                run, start_at, seconds, purchases = command
                time.sleep(max(0.0, start_at - time.perf_counter()))
                begin = start_at + SETTLE_IN
                end = begin + seconds
                ops, latencies, n, exhausted = 0, [], 0, False
                cpu_first = cpu_last = None
                last = time.perf_counter()
                while last < end:
                    n += 1
                    if run in FULFILMENTS:
                        if n > len(purchases):
                            exhausted = True
                            break
                        purchase_id = purchases[n - 1]
                        service.fulfil(purchase_id, "sandbox", receipt=f"SANDBOX-{purchase_id}")
                        finished = (time.perf_counter(),)
                    else:
                        key = f"{run}-{tag}-{index}-{start_at:.3f}-{n}"
                        finished = OPERATIONS[run](ledger, rng, people, index, key)
                    for at in finished:
                        if begin <= at < end:
                            ops += 1
                            latencies.append(at - last)
                            cpu_last = time.process_time()
                            cpu_first = cpu_first if cpu_first is not None else cpu_last
                        last = at
                db.session.remove()
                # CPU from the first counted operation's end to the last's: ops - 1 of them
                cpu = (cpu_last - cpu_first, ops - 1) if ops > 1 else (0.0, 0)
                results.put(("ok", index, ops, latencies, cpu, exhausted))
            db.engine.dispose()
    except BaseException:
        results.put(("error", index, traceback.format_exc()))


class Workers:
    """WORKERS worker processes, started once for every run."""

    def __init__(self, name: str, people: dict):
        # Forked, not spawned: the app's modules are already imported here, and a worker
        # starts in a moment instead of importing them again (seconds each on a busy
        # machine). Nothing here holds a connection or a thread when they fork.
        context = multiprocessing.get_context("fork")
        self.name = name
        self.results = context.Queue()
        self.commands = [context.Queue() for _ in range(WORKERS)]
        self.processes = [
            context.Process(target=worker, args=(name, i, people, self.commands[i], self.results))
            for i in range(WORKERS)
        ]

    def __enter__(self):
        for process in self.processes:
            process.start()
        for _ in self.processes:
            self._get(180)
        return self

    def _get(self, timeout: float):
        found = self.results.get(timeout=timeout)
        if found[0] == "error":
            raise RuntimeError(f"ledger worker {found[1]} failed:\n{found[2]}")
        return found

    def run(self, run: str, purchases: list[list[int]] | None = None) -> dict:
        """Ops/s of every worker doing `run` for SECONDS, and the server's CPU meanwhile."""
        start_at = time.perf_counter() + 0.3
        for i, queue in enumerate(self.commands):
            queue.put((run, start_at, SECONDS, purchases[i] if purchases else None))
        time.sleep(max(0.0, start_at + SETTLE_IN - time.perf_counter()))
        server = ServerCPU(self.name).start()
        time.sleep(max(0.0, start_at + SETTLE_IN + SECONDS - time.perf_counter()))
        server.stop()
        outcomes = [self._get(SECONDS + 120) for _ in self.processes]
        ops = sum(outcome[2] for outcome in outcomes)
        latencies = sorted(x for outcome in outcomes for x in outcome[3])
        return {
            "rate": ops / SECONDS,
            "ops": ops,
            "worker_cpu_ms": per_op_ms(
                sum(outcome[4][0] for outcome in outcomes),
                sum(outcome[4][1] for outcome in outcomes),
            ),
            "server_cpu_ms": per_op_ms(server.seconds, ops),
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
            "exhausted": any(outcome[5] for outcome in outcomes),
        }

    def __exit__(self, *_):
        for queue in self.commands:
            queue.put(None)
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()


# -- purchases to fulfil ---------------------------------------------------------------------


def first_purchases(name: str, people: dict) -> dict[str, list[tuple[int, int]]]:
    """Two pending sandbox purchases per worker's student and kind of fulfilment, made as
    the buy page makes them (a package, the sandbox, a fresh form key): the first to be
    copied, the second for the worker to fulfil before it is timed. Return, per kind
    ("fulfil": the first package with a bonus; "fulfil_plain": the first without), the
    pairs per worker."""
    from soma.extensions import db
    from soma.models import Provider, User
    from soma.purchases import service

    app = make_app(name)
    made = {}
    with app.app_context():
        quotes = service.package_quotes()
        packages = {
            "fulfil": next(q for q in quotes if q.bonus_tokens),
            "fulfil_plain": next(q for q in quotes if not q.bonus_tokens),
        }
        for kind, chosen in packages.items():
            made[kind] = []
            for student, _ in people["own"]:
                user = db.session.get(User, student)
                pair = tuple(
                    service.start(user, chosen, Provider.SANDBOX, secrets.token_urlsafe(16)).id
                    for _ in range(2)
                )
                made[kind].append(pair)
        db.session.remove()
        db.engine.dispose()
    return made


def copy_purchases(name: str, templates: list[int], count: int) -> list[list[int]]:
    """`count` pending copies of each template purchase, with its status history, in SQL
    (whatever columns the tables have); fresh keys and times. Return the ids per worker."""
    made = []
    with psycopg.connect(libpq_url(name)) as conn:

        def columns(table, leave_out):
            rows = conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = %s AND table_schema = current_schema() "
                "ORDER BY ordinal_position",
                (table,),
            ).fetchall()
            return [column for (column,) in rows if column not in leave_out]

        purchase_columns = columns("purchases", ("id",))
        event_columns = columns("purchase_events", ("id", "purchase_id"))
        fresh = {
            "idempotency_key": "p.idempotency_key || '-' || %(tag)s || '-' || g",
            "created_at": "now()",
            "updated_at": "now()",
        }
        chosen = ", ".join(fresh.get(column, f"p.{column}") for column in purchase_columns)
        for template in templates:
            ids = [
                row[0]
                for row in conn.execute(
                    f"INSERT INTO purchases ({', '.join(purchase_columns)}) "
                    f"SELECT {chosen} FROM purchases p, generate_series(1, %(n)s) g "
                    "WHERE p.id = %(id)s ORDER BY g RETURNING id",
                    {"id": template, "n": count, "tag": secrets.token_hex(4)},
                ).fetchall()
            ]
            copied = ", ".join(f"e.{column}" for column in event_columns)
            conn.execute(
                f"INSERT INTO purchase_events (purchase_id, {', '.join(event_columns)}) "
                f"SELECT new.id, {copied} FROM purchase_events e, unnest(%s::bigint[]) new(id) "
                "WHERE e.purchase_id = %s",
                (ids, template),
            )
            made.append(ids)
        conn.commit()
    with psycopg.connect(libpq_url(name), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) purchases, purchase_events")
    return made


# -- pgbench ----------------------------------------------------------------------------------


def run_pgbench(pgbench: str, name: str, clients: int, seconds: float) -> dict:
    threads = min(PGBENCH_THREADS, clients)
    command = [pgbench, "-c", str(clients), "-j", str(threads), "-T", str(max(1, round(seconds)))]
    server = ServerCPU(name).start(poll=True)
    done = subprocess.run([*command, libpq_url(name)], capture_output=True, text=True)
    server.stop()
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    if not tps:
        raise RuntimeError("cannot read pgbench's output:\n" + done.stdout + done.stderr)
    return {
        "rate": float(tps.group(1)),
        "ops": int(processed.group(1)) if processed else 0,
        "p50_ms": float(latency.group(1)) if latency else float("nan"),  # (its average)
        "p99_ms": float("nan"),
        "worker_cpu_ms": None,  # (pgbench's client is not ours to measure)
        "server_cpu_ms": per_op_ms(server.seconds, int(processed.group(1)) if processed else 0),
        "exhausted": False,
    }


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


def find_pgbench() -> str | None:
    found = os.environ.get("SOMA_BENCH_PGBENCH") or shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    return candidates[-1] if candidates else None


def pgbench_init(pgbench: str, name: str) -> None:
    command = [pgbench, "-i", "-q", "-s", str(POOL)]
    done = subprocess.run([*command, libpq_url(name)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")


HISTORY_SQL = """
-- One student wallet W with every entry, a teacher T, and the issuance account I.
-- Entry g is, by r = mod(g - 1, 4): a purchase of 100 (I -> W), a class hold of 10
-- on W, the settle of that hold (7 to T, 3 back to W), a gift of 5 (W -> T), in
-- cycles c = (g - 1) / 4. Balanced, and each posting's *_after is the wallet's
-- true balance after its entry. One entry every 30 seconds.
INSERT INTO journal_entries (id, kind, idempotency_key, request_digest, tokens, usd_cents,
    teacher_usd_cents, reference_type, reference_id, closes_entry_id, memo, created_at)
SELECT g, (ARRAY['purchase', 'class_hold', 'class_settle', 'gift'])[r + 1],
    'bench-history-' || g, to_hex(g),
    tokens, tokens * 10, tokens * 4,
    CASE WHEN r IN (1, 2) THEN 'class' END,
    CASE WHEN r IN (1, 2) THEN c + 1 END,
    CASE WHEN r = 2 THEN g - 1 END,
    '', %(base)s + g * interval '30 seconds'
FROM generate_series(1, %(n)s) AS g,
    LATERAL (SELECT mod(g - 1, 4) AS r, (g - 1) / 4 AS c) AS cycle,
    LATERAL (SELECT (ARRAY[100, 10, 7, 5])[r + 1] AS tokens) AS amount;

-- seq numbers each wallet's postings in entry order, worked out from the cycle (W has
-- six postings a cycle, T two, I one) rather than by sorting; the hashes are stand-ins
-- (the history page never reads them, and the audit is not run on this database).
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
    leg.per_cycle * c + leg.nth,
    to_hex(g) || '-' || leg.n
FROM generate_series(1, %(n)s) AS g,
    LATERAL (SELECT mod(g - 1, 4) AS r, (g - 1) / 4 AS c) AS cycle,
    (VALUES
        (0, 1, 'I', 'available', -100, 1, 1), (0, 2, 'W', 'available', 100, 6, 1),
        (1, 1, 'W', 'available', -10, 6, 2), (1, 2, 'W', 'locked', 10, 6, 3),
        (2, 1, 'W', 'locked', -10, 6, 4), (2, 2, 'T', 'available', 7, 2, 1),
        (2, 3, 'W', 'available', 3, 6, 5),
        (3, 1, 'W', 'available', -5, 6, 6), (3, 2, 'T', 'available', 5, 2, 2)
    ) AS leg (leg_r, n, who, bucket, amount, per_cycle, nth),
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


def build_history(name: str, entries: int) -> None:
    """Fill database `name` (migrated) with a wallet of `entries` entries, its owner
    HISTORY_EMAIL (password PASSWORD)."""
    from werkzeug.security import generate_password_hash

    hashed = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1")
    with psycopg.connect(libpq_url(name)) as conn:
        # The rows are consistent by construction: skip the per-row foreign key
        # triggers for the load (a session setting, for superusers only).
        try:
            conn.execute("SET session_replication_role = replica")
        except psycopg.Error:
            conn.rollback()
        conn.execute("SET maintenance_work_mem = '256MB'")
        set_unlogged(conn)  # only read by the bench
        restore = drop_secondary_indexes(conn, ("journal_entries", "postings"))
        ids = {}
        for who, role in (("w", "student"), ("t", "teacher")):
            user_id = conn.execute(
                "INSERT INTO users (email, display_name, password_hash, role, created_at) "
                "VALUES (%s, %s, %s, %s, now()) RETURNING id",
                (f"bench-history-{role}@example.com", f"History {role}", hashed, role),
            ).fetchone()[0]
            ids[who] = conn.execute(
                "INSERT INTO wallets (user_id, is_source, available, locked, created_at) "
                "VALUES (%s, false, 0, 0, now()) RETURNING id",
                (user_id,),
            ).fetchone()[0]
        ids["i"] = platform_wallet(conn, "issuance")
        params = {"n": entries, "base": datetime(2020, 1, 1, tzinfo=UTC), **ids}
        with conn.cursor() as cursor:
            for statement in HISTORY_SQL.split(";\n"):
                if statement.strip():
                    cursor.execute(statement, params)
        restore()
        conn.commit()
    with psycopg.connect(libpq_url(name), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) journal_entries, postings, wallets")


def entry_cursor(entries: int, back: int):
    """The history cursor of the wallet's entry `back` entries from the newest: its first
    posting's seq, worked out as HISTORY_SQL numbers them (the wallet is in every entry)."""
    from soma.wallet.history import Cursor

    g = entries - back + 1
    cycle, r = divmod(g - 1, 4)
    return Cursor(6 * cycle + (1, 2, 4, 6)[r])


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
                        "ms": 1000 * median(timings[label]),
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


HISTORY_EMAIL = "bench-history-student@example.com"


def history_database() -> tuple[str, int, str]:
    """The kept history database: (name, wallet id, how it was had)."""
    name, built, seconds = cached_database(
        "history", "4", build_history, intact=unlogged_intact, entries=HISTORY_ENTRIES
    )
    with psycopg.connect(libpq_url(name)) as conn:
        (wallet_id,) = conn.execute(
            "SELECT w.id FROM wallets w JOIN users u ON u.id = w.user_id WHERE u.email = %s",
            (HISTORY_EMAIL,),
        ).fetchone()
    how = f"built in {seconds:.0f} s" if built else "reused (kept between runs)"
    return name, wallet_id, how


def time_pages(name: str, cursor) -> list[dict]:
    """The whole history page through the test client: page 1 and deep, with and without a
    kind; a discarded warm-up pass, then REPEATS alternating passes; medians."""
    from _common import log_in

    from soma.extensions import db

    app = make_app(name, PROPAGATE_EXCEPTIONS=True)
    client = app.test_client()
    log_in(client, HISTORY_EMAIL, PASSWORD)
    cases = {}
    for kind in (None, "class_hold"):
        filtered = f"kind={kind}&" if kind else ""
        cases[(kind or "any", "page 1")] = f"/wallet/history?{filtered}"
        cases[(kind or "any", "deep")] = f"/wallet/history?{filtered}cursor={cursor.encode()}"
    times = {case: [] for case in cases}
    server = {case: 0.0 for case in cases}
    for n in range(REPEATS + 1):  # the first pass warms up and is discarded
        for case, url in cases.items():
            cpu = ServerCPU(name).start()
            started = time.perf_counter()
            response = client.get(url)
            took = time.perf_counter() - started
            cpu.stop()
            if response.status_code != 200 or "<table" not in response.get_data(as_text=True):
                raise RuntimeError(f"{url} answered {response.status_code} without its table")
            if n:
                times[case].append(took)
                server[case] += cpu.seconds or 0.0
    with app.app_context():
        db.engine.dispose()
    return [
        {
            "kind": kind,
            "page": page,
            "ms": 1000 * median(times[(kind, page)]),
            "server_ms": 1000 * server[(kind, page)] / REPEATS,
        }
        for kind, page in cases
    ]


# -- main ------------------------------------------------------------------------------------


def row(label: str, found: dict, unit: str, ratio: str = "", rounds: str = "") -> tuple:
    return (
        label,
        f"{found['rate']:.0f} {unit}/s",
        f"{found['p50_ms']:.2f}",
        "" if found["p99_ms"] != found["p99_ms"] else f"{found['p99_ms']:.2f}",  # (nan: none)
        fmt_ms(found["worker_cpu_ms"]).removesuffix(" ms").replace("n/a", ""),
        fmt_ms(found["server_cpu_ms"]).removesuffix(" ms"),
        ratio,
        rounds,
    )


def main() -> int:
    started = time.perf_counter()
    pgbench = find_pgbench()
    print(f"Soma ledger benchmark on {make_url(SERVER_URL).render_as_string()}")
    print(
        f"{WORKERS} workers (processes), {SECONDS:g} s measured after {SETTLE_IN:g} s per run; "
        f"{WARMUP_ROUNDS} warm-up round discarded, then {ROUNDS} rounds (pgbench's group) and "
        f"{OWN_ROUNDS} (transfers between distinct users'); {os.cpu_count()} CPUs; "
        f"pgbench {'at ' + pgbench if pgbench else 'not found'}" + (" [QUICK]" if QUICK else "")
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
    print("server: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())), flush=True)
    found = {key: [] for key, *_ in RUNS}
    with Databases() as dbs:
        template = dbs.create("template")
        migrate(template)
        ledger_db = dbs.create("ledger", template=template)
        people = make_users(ledger_db)
        pair = (people["students"][0], people["teachers"][0])
        counted = round_trips_per_op(ledger_db, pair, alone=True)
        print(f"  set up in {time.perf_counter() - started:.0f} s", flush=True)
        made = first_purchases(ledger_db, people)
        templates = {kind: [pair[0] for pair in pairs] for kind, pairs in made.items()}
        people["primers"] = [[made[kind][i][1] for kind in FULFILMENTS] for i in range(WORKERS)]
        pgbench_db = None
        if pgbench:
            pgbench_db = dbs.create("pgbench")
            pgbench_init(pgbench, pgbench_db)
        with Workers(ledger_db, people) as workers:
            for group, rounds in GROUPS:
                for n in range(WARMUP_ROUNDS + rounds):
                    this = {}
                    for key in group if n % 2 == 0 else reversed(group):
                        # Every run from the same state: no checkpoint left to finish,
                        # none due during it (a run writes far less WAL than max_wal_size).
                        admin_sql("CHECKPOINT")
                        if key == "pgbench":
                            if pgbench:
                                this[key] = run_pgbench(pgbench, pgbench_db, WORKERS, SECONDS)
                        elif key in FULFILMENTS:
                            # Made just before, as a checkout is made just before it is paid.
                            made = copy_purchases(ledger_db, templates[key], PURCHASES_PER_WORKER)
                            this[key] = workers.run(key, made)
                        else:
                            this[key] = workers.run(key)
                    if n >= WARMUP_ROUNDS:
                        for key, value in this.items():
                            found[key].append(value)
                    print(
                        f"  {group[0]}'s group: round {n + 1} of {WARMUP_ROUNDS + rounds} done"
                        + (" (a warm-up, discarded)" if n < WARMUP_ROUNDS else "")
                        + f" at {time.perf_counter() - started:.0f} s",
                        flush=True,
                    )
                if group[0] == "pgbench" and pgbench_db:
                    # Done with: its pages would otherwise fill shared_buffers during the
                    # next group's runs (see GROUPS).
                    dbs.drop(pgbench_db)
                    pgbench_db = None

    def middle(key: str) -> dict:
        runs = found[key]
        out = {}
        for figure in runs[0]:
            values = [run[figure] for run in runs if run[figure] is not None]
            if figure == "exhausted":
                out[figure] = any(values)
            else:
                out[figure] = median(values) if values else None
        return out

    ratios = {}
    print()
    print("1. Money operations, each its own transaction (medians of the rounds)")
    rows = []
    for key, label, unit, reference in RUNS:
        if not found[key]:
            continue
        note = rounds = ""
        if reference and found[reference]:
            each = [
                run["rate"] / base["rate"]
                for run, base in zip(found[key], found[reference], strict=True)
            ]
            ratios[key] = median(each)
            note = f"{ratios[key]:.2f} x {reference}"
            rounds = ", ".join(f"{r:.2f}" for r in each)
        rows.append(row(label, middle(key), unit, note, rounds))
    table(
        rows,
        ("run", "rate", "p50 ms", "p99 ms", "worker CPU ms", "server CPU ms",
         "ratio (median)", "per round"),
    )  # fmt: skip
    print(
        "  (an op is one money operation; a class payment is a hold plus a settle, two ops;\n"
        "   CPU per op (per pgbench transaction); pgbench's p50 is its average latency)"
    )
    for op, tally in counted.items():
        detail = ", ".join(f"{k} {v:g}" for k, v in sorted(tally.items()))
        print(f"  round trips of a {op}: {sum(tally.values()):.1f} ({detail})")
    if any(found[kind] and middle(kind)["exhausted"] for kind in FULFILMENTS):
        print("  WARNING: a worker ran out of purchases to fulfil: raise PURCHASES_PER_WORKER")
    lines = [
        ("holdsettle", "holds and settles / pgbench TPC-B", 0.5),
        ("transfer_pool", "transfers / pgbench TPC-B", 0.5),
        ("fulfil", f"fulfilment with a bonus / transfers, {WORKERS} workers", 0.5),
        ("fulfil_plain", f"fulfilment without a bonus / transfers, {WORKERS} workers", 0.5),
        ("credit", f"credits from issuance / transfers between distinct users, {WORKERS}", 0.8),
    ]
    for key, what, target in lines:
        if key in ratios:
            print("  " + verdict(what, ratios[key], target))
    for kind, what in (("fulfil", "with a bonus"), ("fulfil_plain", "without a bonus")):
        cpu = middle(kind)["worker_cpu_ms"] if found[kind] else None
        if cpu is not None:
            line = verdict(f"worker CPU per fulfilment {what}", cpu, 1.0, higher=False, unit=" ms")
            print("  " + line)

    print()
    n = HISTORY_ENTRIES
    print(f"2. Wallet history page, wallet of {n:,} entries (median of {REPEATS})", flush=True)
    history_db, wallet_id, how = history_database()
    cursor = entry_cursor(n, int(n * HISTORY_DEPTH))
    pages = time_pages(history_db, cursor)
    cases, postings = time_history(history_db, wallet_id, cursor)
    print(f"  database {history_db}: {postings:,} postings, {how}; deep = after the cursor")
    print(f"  of the entry {int(n * HISTORY_DEPTH):,} back from the newest")
    by = {(c["kind"], c["page"]): c for c in cases}
    rows = []
    for kind in ("any", "class_hold"):
        first, deep = (next(p for p in pages if p["kind"] == kind and p["page"] == page)
                       for page in ("page 1", "deep"))  # fmt: skip
        rows.append((
            f"kind={kind}", f"{first['ms']:.2f}", f"{deep['ms']:.2f}",
            f"{deep['ms'] / first['ms']:.2f}", f"{first['server_ms']:.2f}",
            f"{deep['server_ms']:.2f}", f"{by[(kind, 'page 1')]['ms']:.2f}",
            f"{by[(kind, 'deep')]['ms']:.2f}",
        ))  # fmt: skip
    table(
        rows,
        ("whole page, ms", "page 1", "deep", "deep/page 1", "server CPU p1", "server CPU deep",
         "query p1", "query deep"),
    )  # fmt: skip
    for kind, (*_, ratio, _, _, _, _) in zip(("any", "class_hold"), rows, strict=True):
        print("  " + verdict(f"history kind={kind}, deep/page 1 time", float(ratio), 1.25,
                             higher=False))  # fmt: skip
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
