"""The big marketplace database shared by bench/admin.py and bench/earnings.py: a ledger
of ENTRIES journal entries over a year, built in the server in about two minutes.

Not a benchmark itself (`make bench` skips files whose names start with _).

It holds STUDENTS students, TEACHERS teachers, a long-serving teacher, a new teacher
(no classes) and an admin, and ENTRIES entries one after another over the year up to
END (the last hour of the month before the build: the earnings page's worst time, see
bench/earnings.py), in blocks of ten as the ledger writes them: a purchase of 100
tokens from issuance; three one-hour classes (a hold of 10 tokens, then its settle to a
teacher); a gift of 5 tokens to another student, or (one block in fifty) a refund taking
20 bought tokens back; and a 45-minute class, or (one block in ten) a teacher's
withdrawal of $2.00 (50 tokens held, then retired: 12 to fees, 38 to redemption) with
its withdrawals row. The long-serving teacher has ENTRIES / 100 classes (100,000 at ten
million entries), about 22 a day: the first class of one block in 125 within the year
(8,000), and before the year the rest, one every 65 minutes (eleven years; entries
before the year's, with a purchase of 1,000 tokens for each student first: 204,000
entries more at ten million). Every class is a completed class_sessions row (its id the
hold's entry id, the hold and the settle referencing it), so the earnings page reads its
hours as it would in production. One purchase in a thousand blocks failed. Entry ids
follow time.

What is exact, because the pages read it: each entry's postings sum to zero; values are
frozen at the default rates (10 cents a token for students, 4 for teachers); the
wallets' balances are the sums of their postings (no balance is negative); each
wallet's postings are numbered by seq in entry order; the metrics rollup is the app's
own first fold of every entry (`metrics.catch_up`, what `flask soma metrics` does once).
What neither page reads is a stand-in, and the audit is not run on this database: the
hashes, the balances after each posting (0), and seq's gaps (seq = 3 x entry id + leg,
which spares sorting every posting by wallet). A class's times are set by its settle
(the class ends when its settle is dated); its hold is dated seconds before, as the
entries of a block are (entries are ENTRIES evenly over the year).

How it is fast (see build()): every row is made in the server by INSERT ... SELECT over
generate_series, joined to a small table of each block variant's entries and legs (no
per-row expression works out a kind), the block range split between two connections
loading at once; the secondary indexes, the unique constraints and postings' primary key
are dropped for the load and made again after it, two at a time, while the app's fold
runs beside them (it needs only the primary keys); the per-row triggers (foreign keys,
the append-only guards) are skipped for the load with session_replication_role =
replica, the rows being consistent by construction; VACUUM before the indexes (as
autovacuum would after so many inserts: the visibility map that index-only scans read)
and ANALYZE at the end. The ledger's tables are UNLOGGED (`_common.set_unlogged`): the
two benches only read them, so neither their load nor their indexes write WAL (SET
LOGGED afterwards would rewrite and WAL-log every table and index again, more than
logging the load itself). A crash of the server empties them; the next run finds the
kept database so (`_common.unlogged_intact`) and builds it again.

Kept between runs as `soma_bench_big_<digest>` (`_common.cached_database`: the migration
head, GENERATOR and ENTRIES are in its name; a stale one is dropped).
"""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
from _common import (
    build_indexes,
    cached_database,
    drop_secondary_indexes,
    libpq_url,
    make_app,
    platform_wallet,
    quick,
    set_unlogged,
    unlogged_intact,
)

ENTRIES = int(os.environ.get("SOMA_BENCH_ADMIN_ENTRIES", quick(10_000_000, 100_000))) // 100 * 100
# The generator's version: part of the kept database's name (with the migration head and
# ENTRIES), so that a change to the SQL below builds it again.
GENERATOR = "big-4"
STUDENTS = 20_000
TEACHERS = 2_000
PASSWORD = "bench-password-1"  # noqa: S105 - the bench's own throwaway accounts
ADMIN_EMAIL = "admin@bench.example"
LONG_EMAIL = "long-serving@bench.example"
NEW_EMAIL = "new@bench.example"
LOADERS = 2  # connections loading at once (the machine's cores)

# Who a leg moves: the platform's accounts, or the block's people (see WHO).
ISSUANCE, STUDENT, NEIGHBOUR, TEACHER, LONG, WITHDRAWER, REDEMPTION, FEES = range(1, 9)
# A block's variant, by b: a withdrawal block (b % 10 = 0), the long-serving teacher's
# (b % 125 = 3: its first class, about 22 a day), a refund block (b % 50 = 1), or a plain
# one.
PLAIN, WITHDRAWAL, LONG_CLASS, REFUND = range(4)
VARIANT = """CASE WHEN b %% 10 = 0 THEN 1 WHEN b %% 125 = 3 THEN 2 WHEN b %% 50 = 1 THEN 3
    ELSE 0 END"""


def _entries_of(variant: int) -> list[tuple]:
    """The ten entries of a block of `variant`: (j, kind, tokens, legs), each leg
    (who, bucket, amount), in the order the ledger numbers them."""

    def hold(tokens):
        return (
            "class_hold",
            tokens,
            [(STUDENT, "available", -tokens), (STUDENT, "locked", tokens)],
        )

    def settle(tokens, teacher=TEACHER):
        return (
            "class_settle",
            tokens,
            [(STUDENT, "locked", -tokens), (teacher, "available", tokens)],
        )

    block = [
        ("purchase", 100, [(ISSUANCE, "available", -100), (STUDENT, "available", 100)]),
        hold(10),
        settle(10, LONG if variant == LONG_CLASS else TEACHER),
        hold(10),
        settle(10),
        hold(10),
        settle(10),
        ("refund", 20, [(STUDENT, "available", -20), (ISSUANCE, "available", 20)])
        if variant == REFUND
        else ("gift", 5, [(STUDENT, "available", -5), (NEIGHBOUR, "available", 5)]),
    ]
    if variant == WITHDRAWAL:
        block += [
            ("withdrawal_hold", 50, [(WITHDRAWER, "available", -50), (WITHDRAWER, "locked", 50)]),
            (
                "withdrawal_paid",
                50,
                [
                    (WITHDRAWER, "locked", -50),
                    (REDEMPTION, "available", 38),
                    (FEES, "available", 12),
                ],
            ),
        ]
    else:
        block += [hold(8), settle(8)]
    return [(j, *entry) for j, entry in enumerate(block, start=1)]


def _values(rows: list[tuple]) -> str:
    return (
        "(VALUES "
        + ", ".join(
            "(" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in row) + ")"
            for row in rows
        )
        + ")"
    )


# The blocks: each b of the connection's share (lo..hi-1) with its variant, joined to
# the variant's rows of a small table made here (no per-row expression of the kind).
ENTRY_ROWS = _values(
    [
        (variant, j, kind, tokens)
        for variant in range(4)
        for j, kind, tokens, _ in _entries_of(variant)
    ]
)
LEG_ROWS = _values(
    [
        (variant, j, n, kind, bucket, amount, who)
        for variant in range(4)
        for j, kind, _, legs in _entries_of(variant)
        for n, (who, bucket, amount) in enumerate(legs)
    ]
)
FROM_BLOCKS = (
    """
FROM generate_series(%(lo)s, %(hi)s - 1) AS b
JOIN {rows} ON t.variant = """
    + VARIANT
    + """
CROSS JOIN LATERAL (SELECT %(first)s + 10 * b + t.j AS id,
    %(start)s + (10 * b + t.j) * %(step)s::bigint * interval '1 microsecond' AS at) AS e
"""
)

ENTRIES_SQL = """
INSERT INTO journal_entries (id, kind, idempotency_key, request_digest, tokens, usd_cents,
    teacher_usd_cents, reference_type, reference_id, closes_entry_id, memo, created_at)
SELECT e.id, t.kind, 'bench-admin-' || e.id, to_hex(e.id), t.tokens, t.tokens * 10,
    t.tokens * 4,
    CASE WHEN t.kind LIKE 'class_%%' THEN 'class' WHEN t.kind = 'refund' THEN 'reversal'
        WHEN t.kind LIKE 'withdrawal_%%' THEN 'withdrawal' WHEN t.kind = 'gift' THEN 'gift' END,
    CASE WHEN t.kind = 'class_hold' THEN e.id WHEN t.kind = 'class_settle' THEN e.id - 1
        WHEN t.kind LIKE 'withdrawal_%%' THEN b / 10 + 1 ELSE b END,
    CASE WHEN t.kind IN ('class_settle', 'withdrawal_paid') THEN e.id - 1 END,
    '', e.at""" + FROM_BLOCKS.format(rows=ENTRY_ROWS + " AS t (variant, j, kind, tokens)")

# A posting's id and seq: 3 x entry id + its leg (0, 1, 2), increasing in every wallet.
POSTINGS_SQL = """
INSERT INTO postings (id, entry_id, wallet_id, bucket, amount, available_after, locked_after,
    kind, created_at, seq, hash)
SELECT 3 * e.id + t.n, e.id,
    CASE t.who WHEN 1 THEN %(issuance)s WHEN 2 THEN %(student0)s + b %% %(students)s
        WHEN 3 THEN %(student0)s + (b + 1) %% %(students)s
        WHEN 4 THEN %(teacher0)s + b %% %(teachers)s WHEN 5 THEN %(long)s
        WHEN 6 THEN %(teacher0)s + (b / 10) %% %(teachers)s WHEN 7 THEN %(redemption)s
        ELSE %(fees)s END,
    t.bucket, t.amount, 0, 0, t.kind, e.at, 3 * e.id + t.n, to_hex(e.id) || '-' || t.n
""" + FROM_BLOCKS.format(rows=LEG_ROWS + " AS t (variant, j, n, kind, bucket, amount, who)")

# Each class (a settle at 10b + j): its id its hold's entry id, its people the owners of
# the settle's wallets (`owner`: a wallet's id less its user's, the same for every user,
# see build()).
CLASSES_SQL = (
    """
INSERT INTO class_sessions (id, booking_key, student_id, teacher_id, title, scheduled_start,
    scheduled_end, duration_minutes, cost_tokens, status, version, active_seconds,
    started_at, ended_at, end_reason, hold_entry_id, closing_entry_id, charged_tokens,
    created_at)
SELECT e.id - 1, 'bench-class-' || (e.id - 1), %(student0)s + b %% %(students)s - %(owner)s,
    CASE WHEN t.variant = 2 AND t.j = 3 THEN %(long)s
        ELSE %(teacher0)s + b %% %(teachers)s END - %(owner)s,
    'Class ' || (e.id - 1), e.at - c.length, e.at, c.minutes, t.tokens, 'completed', 3,
    c.minutes * 60, e.at - c.length, e.at, 'completed', e.id - 1, e.id, t.tokens,
    e.at - c.length - interval '1 day'"""
    + FROM_BLOCKS.format(rows=ENTRY_ROWS + " AS t (variant, j, kind, tokens)")
    + """CROSS JOIN LATERAL (SELECT CASE WHEN t.j >= 9 THEN 45 ELSE 60 END AS minutes,
    CASE WHEN t.j >= 9 THEN interval '45 minutes' ELSE interval '60 minutes' END AS length)
    AS c
WHERE t.kind = 'class_settle'
"""
)

# The long-serving teacher's years before the year: first a purchase of 1,000 tokens for
# each student (entries 1..S), then `before` one-hour classes one every 65 minutes up to
# the year's start, class k (1..before) with student k mod S: its hold S + 2k - 1, its
# settle S + 2k. The year's entries come after them (ids from `first` + 1).
BEFORE_SQL = [
    """
INSERT INTO journal_entries (id, kind, idempotency_key, request_digest, tokens, usd_cents,
    teacher_usd_cents, reference_type, reference_id, closes_entry_id, memo, created_at)
SELECT s, 'purchase', 'bench-admin-' || s, to_hex(s), 1000, 10000, 4000, NULL, NULL, NULL, '',
    %(origin)s - interval '1 day'
FROM generate_series(1, %(students)s) AS s
UNION ALL
SELECT %(students)s + 2 * k - 2 + h, kind, 'bench-admin-' || (%(students)s + 2 * k - 2 + h),
    to_hex(%(students)s + 2 * k - 2 + h), 10, 100, 40, 'class', %(students)s + 2 * k - 1,
    CASE WHEN h = 2 THEN %(students)s + 2 * k - 1 END, '',
    %(origin)s + (k - 1) * interval '65 minutes' + (h - 1) * interval '60 minutes'
FROM generate_series(1, %(before)s) AS k,
    (VALUES (1, 'class_hold'), (2, 'class_settle')) AS t (h, kind)
""",
    """
INSERT INTO postings (id, entry_id, wallet_id, bucket, amount, available_after, locked_after,
    kind, created_at, seq, hash)
SELECT 3 * s + n, s, wallet_id, 'available', amount, 0, 0, 'purchase',
    %(origin)s - interval '1 day', 3 * s + n, to_hex(s) || '-' || n
FROM generate_series(1, %(students)s) AS s,
    LATERAL (VALUES (0, %(issuance)s, -1000), (1, %(student0)s + s - 1, 1000))
        AS leg (n, wallet_id, amount)
UNION ALL
SELECT 3 * e + n, e, CASE WHEN who = 0 THEN %(student0)s + k %% %(students)s ELSE %(long)s END,
    bucket, amount, 0, 0, kind,
    %(origin)s + (k - 1) * interval '65 minutes' + (h - 1) * interval '60 minutes',
    3 * e + n, to_hex(e) || '-' || n
FROM generate_series(1, %(before)s) AS k,
    (VALUES (1, 0, 'class_hold', 0, 'available', -10), (1, 1, 'class_hold', 0, 'locked', 10),
        (2, 0, 'class_settle', 0, 'locked', -10), (2, 1, 'class_settle', 1, 'available', 10))
        AS t (h, n, kind, who, bucket, amount),
    LATERAL (SELECT %(students)s + 2 * k - 2 + h AS e) AS x
""",
    """
INSERT INTO class_sessions (id, booking_key, student_id, teacher_id, title, scheduled_start,
    scheduled_end, duration_minutes, cost_tokens, status, version, active_seconds,
    started_at, ended_at, end_reason, hold_entry_id, closing_entry_id, charged_tokens,
    created_at)
SELECT id, 'bench-class-' || id, %(student0)s + k %% %(students)s - %(owner)s,
    %(long)s - %(owner)s, 'Class ' || id, at, at + interval '60 minutes', 60, 10,
    'completed', 3, 3600, at, at + interval '60 minutes', 'completed', id, id + 1, 10,
    at - interval '1 day'
FROM generate_series(1, %(before)s) AS k,
    LATERAL (SELECT %(students)s + 2 * k - 1 AS id,
        %(origin)s + (k - 1) * interval '65 minutes' AS at) AS c
""",
]

WITHDRAWALS_SQL = """
INSERT INTO withdrawals (id, key, user_id, method_id, usd_cents, tokens, fee_cents,
    net_cents, fee_tokens, status, version, review_reason, hold_entry_id, closed_entry_id,
    created_at, updated_at, finished_at, attempt)
SELECT b / 10 + 1, 'bench-withdrawal-' || b, w.user_id, m.id, 200, 50, 50, 150, 12, 'paid',
    2, '', %(first)s + 10 * b + 9, %(first)s + 10 * b + 10, at, at, at, 1
FROM generate_series(0, %(blocks)s - 1, 10) AS b
CROSS JOIN LATERAL (SELECT %(start)s + (10 * b + 10) * %(step)s::bigint * interval '1 microsecond'
        AS at) AS e
JOIN wallets AS w ON w.id = %(teacher0)s + (b / 10) %% %(teachers)s
JOIN payout_methods AS m ON m.user_id = w.user_id
"""

FAILED_SQL = """
INSERT INTO purchases (idempotency_key, user_id, tokens, bonus_tokens, amount_minor, currency,
    provider, status, version, failure_reason, created_at, updated_at)
SELECT 'bench-failed-' || b, w.user_id, 100, 0, 1000, 'USD', 'sandbox', 'failed', 1,
    'Card declined.', at, at
FROM generate_series(7, %(blocks)s - 1, 1000) AS b
CROSS JOIN LATERAL (SELECT %(start)s + (10 * b + 1) * %(step)s::bigint * interval '1 microsecond'
        AS at) AS e
JOIN wallets AS w ON w.id = %(student0)s + b %% %(students)s
"""

# Each wallet's balances and head: the sums of its postings (read in parallel, see build()).
SUMS_SQL = """
SELECT wallet_id,
    coalesce(sum(amount) FILTER (WHERE bucket = 'available'), 0)::bigint,
    coalesce(sum(amount) FILTER (WHERE bucket = 'locked'), 0)::bigint,
    max(seq)
FROM postings GROUP BY wallet_id
"""

LOADED_TABLES = ("journal_entries", "postings", "withdrawals", "purchases", "class_sessions")


def end_of_data(today: datetime | None = None) -> datetime:
    """The time of the newest entry: a minute before the last hour of last month."""
    today = today or datetime.now(UTC)
    month = today.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return month - timedelta(hours=1, minutes=1)


def _log(parts: dict, what: str, started: float) -> None:
    parts[what] = parts.get(what, 0.0) + time.perf_counter() - started


def build(name: str, entries: int) -> None:
    """Fill database `name` (made and migrated); record what each part took in
    bench_big_meta."""
    from werkzeug.security import generate_password_hash

    parts: dict[str, float] = {}
    began = time.perf_counter()
    end = end_of_data()
    start = end - timedelta(days=365)
    step = int(timedelta(days=365) / timedelta(microseconds=1)) // (entries + 1)
    hashed = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1")
    joined = start - timedelta(days=2)
    url = libpq_url(name)
    with psycopg.connect(url, autocommit=True) as conn:
        # Consistent by construction: skip the per-row triggers (foreign keys, the
        # append-only guards) for the load.
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO users (email, display_name, password_hash, role, created_at) "
            "SELECT role || n || '@bench.example', role || ' ' || n, %s, role, %s "
            "FROM (SELECT 'student' AS role, n FROM generate_series(1, %s) n UNION ALL "
            "SELECT 'teacher', n FROM generate_series(1, %s) n) AS u ORDER BY role, n",
            (hashed, joined, STUDENTS, TEACHERS),
        )
        for email, display, role in (
            (LONG_EMAIL, "Long-serving teacher", "teacher"),
            (NEW_EMAIL, "New teacher", "teacher"),
            (ADMIN_EMAIL, "Bench Admin", "admin"),
        ):
            conn.execute(
                "INSERT INTO users (email, display_name, password_hash, role, created_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                (email, display, hashed, role, joined),
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
                "WHERE u.email LIKE 'student%%' OR u.email LIKE 'teacher%%' GROUP BY u.role"
            ).fetchall()
        )
        offsets = conn.execute(
            "SELECT min(id - user_id), max(id - user_id) FROM wallets WHERE user_id IS NOT NULL"
        ).fetchone()
        if offsets[0] != offsets[1]:
            raise RuntimeError(f"wallet ids are not their users' ids plus one offset: {offsets}")
        (long_wallet,) = conn.execute(
            "SELECT w.id FROM wallets w JOIN users u ON u.id = w.user_id WHERE u.email = %s",
            (LONG_EMAIL,),
        ).fetchone()
        set_unlogged(conn)
        restore = drop_secondary_indexes(conn, LOADED_TABLES)
        # The long-serving teacher: CLASSES classes, those of the year (a block in 125)
        # and the rest before it, one every 65 minutes.
        before = entries // 100 - len(range(3, entries // 10, 125))
        params = {
            "blocks": entries // 10,
            "before": before,
            "origin": start - before * timedelta(minutes=65),
            "first": STUDENTS + 2 * before,
            "start": start,
            "step": step,
            "student0": first["student"],
            "teacher0": first["teacher"],
            "students": STUDENTS,
            "teachers": TEACHERS,
            "long": long_wallet,
            "owner": offsets[0],
            "issuance": platform_wallet(conn, "issuance"),
            "redemption": platform_wallet(conn, "redemption"),
            "fees": platform_wallet(conn, "fees"),
        }
        _log(parts, "people", began)

        # The load: each connection its share of the blocks, in one transaction.
        started = time.perf_counter()
        lock = threading.Lock()
        blocks = entries // 10
        shares = [(blocks * i // LOADERS, blocks * (i + 1) // LOADERS) for i in range(LOADERS)]

        def load(share: tuple[int, int]) -> None:
            with psycopg.connect(url) as loader:
                loader.execute("SET session_replication_role = replica")
                loader.execute("SET max_parallel_workers_per_gather = 0")
                values = {**params, "lo": share[0], "hi": share[1]}
                for what, statement in (
                    ("entries", ENTRIES_SQL),
                    ("postings", POSTINGS_SQL),
                    ("classes", CLASSES_SQL),
                ):
                    began_statement = time.perf_counter()
                    loader.execute(statement, values)
                    with lock:
                        _log(parts, f"{what} (each)", began_statement)
                loader.commit()

        with ThreadPoolExecutor(LOADERS) as pool:
            list(pool.map(load, shares))
        for statement in BEFORE_SQL:
            conn.execute(statement, params)
        conn.execute(WITHDRAWALS_SQL, params)
        conn.execute(FAILED_SQL, params)
        _log(parts, "load", started)

        started = time.perf_counter()
        conn.execute("SET work_mem = '256MB'")
        sums = conn.execute(SUMS_SQL).fetchall()
        conn.execute(
            "CREATE TEMP TABLE bench_sums (id integer PRIMARY KEY, available bigint, "
            "locked bigint, head_seq bigint)"
        )
        with conn.cursor().copy("COPY bench_sums FROM STDIN") as copy:
            for row in sums:
                copy.write_row(row)
        conn.execute(
            "UPDATE wallets w SET available = s.available, locked = s.locked, "
            "head_seq = s.head_seq FROM bench_sums s WHERE s.id = w.id"
        )
        for table, column in (
            ("journal_entries", "id"),
            ("postings", "id"),
            ("withdrawals", "id"),
            ("class_sessions", "id"),
        ):
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                f"(SELECT coalesce(max({column}), 1) FROM {table}))"
            )
        conn.execute(
            "CREATE TABLE bench_big_meta (end_at timestamptz NOT NULL, entries bigint NOT NULL, "
            "build_seconds float, fold_seconds float, fold_through bigint, parts text)"
        )
        conn.execute("INSERT INTO bench_big_meta (end_at, entries) VALUES (%s, %s)", (end, entries))
        _log(parts, "balances", started)

        # VACUUM, as autovacuum would after so many inserts (the visibility map, which
        # index-only scans read): now, before the indexes, rather than under the benches.
        started = time.perf_counter()

        def vacuum(tables: str) -> None:
            with psycopg.connect(url, autocommit=True) as vacuumer:
                vacuumer.execute(f"VACUUM {tables}")

        with ThreadPoolExecutor(LOADERS) as pool:
            list(pool.map(vacuum, ("postings", "journal_entries, class_sessions, withdrawals")))
        _log(parts, "vacuum", started)

        # The indexes, two at a time, beside the app's fold.
        started = time.perf_counter()
        builds, attach = restore(apply=False)
        fold_result = {}

        def built(seconds: float) -> None:
            with lock:
                parts["indexes (each)"] = parts.get("indexes (each)", 0.0) + seconds

        def run_fold() -> None:
            fold_result["seconds"], fold_result["through"] = fold(name, end + timedelta(minutes=1))

        build_indexes(
            url, builds, attach, jobs=LOADERS, beside=(run_fold,), each=built, memory="2GB"
        )
        _log(parts, "indexes and fold", started)

    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
    _log(parts, "analyze", started)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE bench_big_meta SET build_seconds = %s, fold_seconds = %s, "
            "fold_through = %s, parts = %s",
            (
                time.perf_counter() - began,
                fold_result["seconds"],
                fold_result["through"],
                ", ".join(f"{what} {seconds:.0f} s" for what, seconds in parts.items()),
            ),
        )


def fold(name: str, now: datetime) -> tuple[float, int]:
    """Empty the rollup and sum every entry into it, as `flask soma metrics` does once."""
    from soma.admin import metrics
    from soma.extensions import db

    app = make_app(name, SOMA_CLOCK=lambda: now)
    with app.app_context():
        db.session.connection().exec_driver_sql(
            "TRUNCATE metrics_days, metrics_wallets, metrics_active_days, metrics_checkpoint"
        )
        db.session.commit()
        started = time.perf_counter()
        through = metrics.catch_up(now)
        seconds = time.perf_counter() - started
        db.session.remove()
        db.engine.dispose()
    with psycopg.connect(libpq_url(name), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) metrics_days, metrics_wallets, metrics_active_days")
    return seconds, through


def big_database() -> tuple[str, bool, float]:
    """The kept big database: (name, built now, seconds to build)."""
    return cached_database("big", GENERATOR, build, intact=unlogged_intact, entries=ENTRIES)


def meta(name: str) -> dict:
    with psycopg.connect(libpq_url(name)) as conn:
        row = conn.execute(
            "SELECT end_at, entries, build_seconds, fold_seconds, fold_through, parts "
            "FROM bench_big_meta"
        ).fetchone()
    keys = ("end_at", "entries", "build_seconds", "fold_seconds", "fold_through", "parts")
    return dict(zip(keys, row, strict=True))
