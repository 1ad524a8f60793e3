"""Benchmark `flask soma audit` on PostgreSQL: full against incremental, and its memory.

Run by `make bench` (or `.venv/bin/python bench/audit.py`). It prints figures and a
verdict per target; it asserts nothing.

1. A journal of ENTRIES entries (1M, then 3M) is built in bulk: users' wallets, and in
   cycles of four a purchase (issuance to a student), a class hold on the student, its
   settle (7 to a teacher, 3 back) and a gift (student to teacher), each entry valued at
   the pricing in force, each wallet's postings chained (the hashes computed here, in one
   pass) and its balances and head set, and every teacher's earnings checkpoint moved to
   their newest class payment (a day before the audit, as their earnings page would
   have): a journal the audit finds clean. Rows go in by
   COPY (a batch made while the one before is sent), with the journal's secondary
   indexes dropped and built again afterwards, two at a time; 3M is 1M's copy extended.
   The ledger's tables are UNLOGGED (`_common.set_unlogged`: the audit only reads them,
   and writes its checkpoint to logged tables; the entries added before the incremental
   run are not timed), so the build writes no WAL for them.
   Each size is kept as a template database named after the migration head
   (soma_bench_audit_<size>_<head>), so later runs only copy it; templates of another
   head, or left half-built, are dropped. Building is the slow part, once.
2. On a copy of each size, the full audit (`soma.audit.audit(full=True)`, as
   `flask soma audit --full` runs it) in a subprocess of its own: its time, each check's
   (the slowest are printed), and the peak resident set of that process during the audit
   (VmHWM, reset just before it through /proc/self/clear_refs; ru_maxrss where that is
   not allowed, which also counts the imports), against its resident set just before.
   Constant memory: the audit's own growth about the same at 1M and 3M.
3. On the largest, after the full audit's checkpoint, NEW_ENTRIES entries more through the
   ledger (credits and gifts, 100 to a transaction), then the incremental audit (`flask
   soma audit`), in a subprocess too. Target: under 2 % of the full audit's time.

BENCH_QUICK=1: 100k entries, 1,000 new ones, one size. Settings (environment):
    SOMA_BENCH_POSTGRES_URL     server, default postgresql://postgres@127.0.0.1:5432/postgres

The machine may be shared: times are noisy, the ratio less so (both measured here).
"""

import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
from _common import (
    ROOT,
    SERVER_URL,
    Databases,
    admin_sql,
    build_indexes,
    copy_of,
    drop_secondary_indexes,
    libpq_url,
    make_app,
    migrate,
    set_unlogged,
    unlogged_intact,
)

QUICK = os.environ.get("BENCH_QUICK") == "1"
SIZES = [100_000] if QUICK else [1_000_000, 3_000_000]
NEW_ENTRIES = 1_000 if QUICK else 10_000
STUDENTS, TEACHERS = (200, 20) if QUICK else (2000, 200)
PER_TRANSACTION = 100
CACHE_PREFIX = "soma_bench_audit_"
BASE = datetime(2024, 1, 1, tzinfo=UTC)
RATIO_TARGET = 0.02
TOTAL_TARGET = 180.0
SLOWEST = 4  # checks named in the breakdown


def link(previous, entry_id, wallet_id, seq, bucket, amount, available, locked) -> str:
    """soma.ledger.core.chain_link, inlined (a hot loop)."""
    text = f"{previous}|{entry_id}|{wallet_id}|{seq}|{bucket}|{amount}|{available}|{locked}"
    return hashlib.sha256(text.encode()).hexdigest()


def migration_head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(ROOT / "migrations")).get_current_head()


def cached(name: str) -> bool:
    """Whether cache `name` is complete (marked a template once built); one left
    half-built by an interrupted run is dropped."""
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        row = conn.execute(
            "SELECT datistemplate FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    if row and row[0] and not unlogged_intact(name):
        print(f"dropping the cache {name}: a crash of the server emptied its ledger")
        admin_sql(f'ALTER DATABASE "{name}" IS_TEMPLATE false')
        row = (False,)
    if row and not row[0]:
        print(f"dropping the unfinished cache {name}")
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return bool(row and row[0])


def drop_stale(head: str) -> None:
    """Drop the cached templates of another migration head (or size)."""
    keep = {cache_name(size, head) for size in (100_000, 1_000_000, 3_000_000)}
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (CACHE_PREFIX + "%",)
            )
        ]
    for name in names:
        if name not in keep:
            print(f"dropping stale cache {name}")
            admin_sql(f'ALTER DATABASE "{name}" IS_TEMPLATE false')
            admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# A new build of the same migration head (here: the ledger's tables UNLOGGED, see
# _common.set_unlogged; "e" added the teachers' earnings checkpoints).
BUILD = "u"


def cache_name(size: int, head: str) -> str:
    return f"{CACHE_PREFIX}{size // 1000}k_{head}{BUILD}"


# -- building ------------------------------------------------------------------------------


def add_people(conn) -> tuple[list[int], list[int], dict[int, list]]:
    """STUDENTS and TEACHERS users with wallets; return their wallets' ids and the state
    {wallet id: [seq, hash, prior hash, available, locked]} of every wallet."""
    for role, count in (("student", STUDENTS), ("teacher", TEACHERS)):
        conn.execute(
            "INSERT INTO users (email, display_name, password_hash, role, created_at) "
            "SELECT 'bench-audit-' || %s || g || '@example.com', 'Bench ' || %s || g, '!', "
            "%s, now() FROM generate_series(1, %s) AS g",
            (role, role, role, count),
        )
    conn.execute(
        "INSERT INTO wallets (user_id, is_source, available, locked, created_at) "
        "SELECT id, false, 0, 0, now() FROM users WHERE email LIKE 'bench-audit-%%' "
        "AND id NOT IN (SELECT user_id FROM wallets WHERE user_id IS NOT NULL)"
    )
    return wallets_by_role(conn)


def wallets_by_role(conn):
    rows = conn.execute(
        "SELECT w.id, u.role FROM wallets w JOIN users u ON u.id = w.user_id "
        "WHERE u.email LIKE 'bench-audit-%%' ORDER BY w.id"
    ).fetchall()
    students = [wallet for wallet, role in rows if role == "student"]
    teachers = [wallet for wallet, role in rows if role == "teacher"]
    state = {
        wallet: [seq, head, prior, available, locked]
        for wallet, seq, head, prior, available, locked in conn.execute(
            "SELECT id, head_seq, head_hash, prior_hash, available, locked FROM wallets"
        )
    }
    return students, teachers, state


def pricing(conn, user_type: str) -> tuple[int, int]:
    return conn.execute(
        "SELECT tokens, usd_cents FROM token_pricing WHERE user_type = %s AND effective_at <= %s "
        "ORDER BY effective_at DESC, version DESC LIMIT 1",
        (user_type, BASE),
    ).fetchone()


def extend(name: str, upto: int) -> float:
    """Add entries to database `name` (built by this script) until it holds `upto`: loaded
    without the journal's secondary indexes, which are then built again, two at a time."""
    started = time.perf_counter()
    url = libpq_url(name)
    with psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")  # no FK triggers for the load
        done = conn.execute(
            "SELECT count(*) FROM journal_entries WHERE idempotency_key LIKE 'bench-audit-%%'"
        ).fetchone()[0]
        if done == 0:
            set_unlogged(conn)  # read, not written, by the audits (3M is 1M's copy: unlogged too)
            students, teachers, state = add_people(conn)
        else:
            students, teachers, state = wallets_by_role(conn)
        issuance = conn.execute("SELECT id FROM wallets WHERE code = 'issuance'").fetchone()[0]
        first_id = conn.execute("SELECT coalesce(max(id), 0) FROM journal_entries").fetchone()[0]
        rates = {kind: pricing(conn, kind) for kind in ("student", "teacher")}
        restore = drop_secondary_indexes(conn, ("journal_entries", "postings"))
        _load(conn, done, upto, first_id, students, teachers, issuance, state, rates)
        conn.execute(
            "CREATE TEMP TABLE bench_heads (id integer PRIMARY KEY, head_seq bigint, "
            "head_hash text, prior_hash text, available bigint, locked bigint)"
        )
        with conn.cursor().copy(
            "COPY bench_heads (id, head_seq, head_hash, prior_hash, available, locked) FROM STDIN"
        ) as copy:
            for wallet, row in state.items():
                copy.write_row((wallet, *row))
        conn.execute(
            "UPDATE wallets w SET head_seq = h.head_seq, head_hash = h.head_hash, "
            "prior_hash = h.prior_hash, available = h.available, locked = h.locked "
            "FROM bench_heads h WHERE h.id = w.id AND (w.head_seq, w.head_hash) "
            "IS DISTINCT FROM (h.head_seq, h.head_hash)"
        )
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('journal_entries', 'id'), "
            "(SELECT max(id) FROM journal_entries))"
        )
        conn.commit()
    # An interrupted build is not marked a template, so the next run drops it (cached()).
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM journal_entries, postings, wallets")
    build_indexes(url, *restore(apply=False))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE journal_entries, postings, wallets")
    advance_earnings(name)
    return time.perf_counter() - started


def advance_earnings(name: str) -> None:
    """Move every teacher's earnings checkpoint to their newest class payment, as their
    earnings page does (soma.earnings.service), dated a day back: the audit finds them
    as on a journal in service, none moved since its own checkpoint."""
    from sqlalchemy import select, text

    from soma.earnings.service import advance_checkpoint
    from soma.extensions import db
    from soma.models import User, Wallet

    app = make_app(name)
    with app.app_context():
        teachers = db.session.scalars(
            select(Wallet.id)
            .join(User, User.id == Wallet.user_id)
            .where(User.email.like("bench-audit-teacher%"))
            .order_by(Wallet.id)
        ).all()
        db.session.commit()

    def advance(wallets: list[int]) -> None:
        with app.app_context():  # a session of this thread's own
            for wallet_id in wallets:
                advance_checkpoint(wallet_id)
            db.session.remove()

    # The sums are the database's work: one thread per CPU keeps it busy.
    threads = os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(advance, [teachers[n::threads] for n in range(threads)]))
    with app.app_context():
        db.session.execute(
            text("UPDATE earnings_checkpoints SET updated_at = updated_at - interval '1 day'")
        )
        db.session.commit()
        db.engine.dispose()


def _load(conn, done, upto, first_id, students, teachers, issuance, state, rates) -> None:
    """COPY entries done+1..upto and their postings, chaining each wallet's postings; a
    batch is made while the one before is sent."""
    (s_tokens, s_cents), (t_tokens, t_cents) = rates["student"], rates["teacher"]

    def value(tokens: int, rate_tokens: int, rate_cents: int) -> int:
        return (tokens * rate_cents * 2 + rate_tokens) // (rate_tokens * 2)

    values = {
        t: (value(t, s_tokens, s_cents), value(t, t_tokens, t_cents)) for t in (100, 10, 7, 5)
    }
    kinds = ("purchase", "class_hold", "class_settle", "gift")
    tokens_of = (100, 10, 7, 5)
    batch = 200_000

    def send(entries: str, postings: str) -> None:
        with conn.cursor().copy(
            "COPY journal_entries (id, kind, idempotency_key, request_digest, tokens, usd_cents, "
            "teacher_usd_cents, closes_entry_id, memo, created_at) FROM STDIN"
        ) as copy:
            copy.write(entries)
        with conn.cursor().copy(
            "COPY postings (entry_id, wallet_id, bucket, amount, available_after, locked_after, "
            "kind, created_at, seq, hash) FROM STDIN"
        ) as copy:
            copy.write(postings)

    def batches():
        """The COPY texts of the entries and of their postings, a batch at a time."""
        for start in range(done, upto, batch):
            entries, postings = io.StringIO(), io.StringIO()
            for g in range(start, min(start + batch, upto)):
                entry_id = first_id + g - done + 1
                r, c = g % 4, g // 4
                student, teacher = students[c % len(students)], teachers[c % len(teachers)]
                at = (BASE + timedelta(seconds=g)).isoformat()
                kind, tokens = kinds[r], tokens_of[r]
                usd, teacher_usd = values[tokens]
                closes = str(entry_id - 1) if r == 2 else "\\N"
                entries.write(
                    f"{entry_id}\t{kind}\tbench-audit-{g}\t{'0' * 64}\t{tokens}\t{usd}\t"
                    f"{teacher_usd}\t{closes}\t\t{at}\n"
                )
                if r == 0:
                    legs = ((issuance, (("available", -100),)), (student, (("available", 100),)))
                elif r == 1:
                    legs = ((student, (("available", -10), ("locked", 10))),)
                elif r == 2:
                    legs = (
                        (teacher, (("available", 7),)),
                        (student, (("available", 3), ("locked", -10))),
                    )
                else:
                    legs = ((student, (("available", -5),)), (teacher, (("available", 5),)))
                for wallet, moves in legs:
                    head = state[wallet]
                    available = head[3] + sum(a for b, a in moves if b == "available")
                    locked = head[4] + sum(a for b, a in moves if b == "locked")
                    prior = head[1]
                    for bucket, amount in moves:
                        seq = head[0] + 1
                        digest = link(
                            head[1], entry_id, wallet, seq, bucket, amount, available, locked
                        )
                        postings.write(
                            f"{entry_id}\t{wallet}\t{bucket}\t{amount}\t{available}\t{locked}\t"
                            f"{kind}\t{at}\t{seq}\t{digest}\n"
                        )
                        prior, head[0], head[1] = head[1], seq, digest
                    head[2], head[3], head[4] = prior, available, locked
            yield entries.getvalue(), postings.getvalue()

    # Each batch is sent by a thread of its own while this one makes the next; on an
    # error, the one being sent is waited for (the pool's exit) before the connection closes.
    with ThreadPoolExecutor(1) as sender:
        sending = None
        for entries, postings in batches():
            if sending is not None:
                sending.result()
            sending = sender.submit(send, entries, postings)
        if sending is not None:
            sending.result()


# -- measuring -----------------------------------------------------------------------------


def _status_mb(field: str) -> float | None:
    """A figure of this process's /proc/self/status (VmRSS, VmHWM) in MB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Start this process's peak resident set (VmHWM) again from its current size (Linux:
    /proc/self/clear_refs), so the peak read after the audit is the audit's own, not the
    imports' before it. False when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _timed_checks(timings: dict) -> None:
    """Time each of soma.audit.CHECKS into `timings` (the bench's breakdown)."""
    import soma.audit

    def timed(check):
        def run(scope):
            started = time.perf_counter()
            try:
                return check(scope)
            finally:
                timings[check.__name__] = time.perf_counter() - started

        return run

    soma.audit.CHECKS[:] = [timed(check) for check in soma.audit.CHECKS]


def audit_here(name: str, full: bool) -> None:
    """In a subprocess: run the audit on database `name`; print its figures as JSON."""
    from soma.audit import audit
    from soma.extensions import db

    app = make_app(name)
    timings: dict[str, float] = {}
    _timed_checks(timings)
    with app.app_context():
        db.session.execute(db.text("SELECT 1"))  # connected: the baseline includes that
        before = _status_mb("VmRSS") if _reset_peak() else None
        if before is None:  # no /proc: the process's peak since it started
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        result = audit(full=full)
        seconds = time.perf_counter() - started
        peak = _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            json.dumps(
                {
                    "seconds": seconds,
                    "before_mb": before,
                    "peak_mb": peak,
                    "violations": [str(v) for v in result.violations[:5]],
                    "count": len(result.violations),
                    "full": result.full,
                    "checkpoint": result.checkpoint_id,
                    "checks": sorted(timings.items(), key=lambda item: -item[1]),
                }
            )
        )
        db.engine.dispose()


def run_audit_process(name: str, full: bool) -> dict:
    command = [sys.executable, __file__, "--audit", name, "--full" if full else "--incremental"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the audit subprocess failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_through_the_ledger(name: str, count: int) -> float:
    """`count` entries more through soma.ledger: credits and gifts between bench students."""
    from sqlalchemy import select

    from soma import ledger
    from soma.extensions import db
    from soma.models import User

    app = make_app(name)
    started = time.perf_counter()
    with app.app_context():
        people = db.session.scalars(
            select(User.id).where(User.email.like("bench-audit-student%")).order_by(User.id)
        ).all()
        stamp = time.time_ns()
        for first in range(0, count, PER_TRANSACTION):
            with ledger.atomic():
                for n in range(first, min(first + PER_TRANSACTION, count)):
                    user = people[n % len(people)]
                    if n % 2 == 0:
                        ledger.credit(user, 10, key=f"bench-new-{stamp}-{n}")
                    else:
                        friend = people[(n * 7 + 1) % len(people)]
                        ledger.transfer(user, friend, 1, key=f"bench-new-{stamp}-{n}")
        db.engine.dispose()
    return time.perf_counter() - started


def verdict(ok: bool, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}: {text}"


def main() -> int:
    began = time.perf_counter()
    print(f"Soma audit benchmark{' (BENCH_QUICK)' if QUICK else ''}")
    try:
        psycopg.connect(SERVER_URL, connect_timeout=5).close()
    except psycopg.Error as error:
        print(f"cannot connect to PostgreSQL (SOMA_BENCH_POSTGRES_URL): {error}", file=sys.stderr)
        return 1
    head = migration_head()
    drop_stale(head)
    results = []
    with Databases() as dbs:
        previous = None
        for size in SIZES:
            cache = cache_name(size, head)
            if not cached(cache):
                if previous:
                    admin_sql(f'CREATE DATABASE "{cache}"' + copy_of(previous))
                else:
                    admin_sql(f'CREATE DATABASE "{cache}"')
                    migrate(cache)
                seconds = extend(cache, size)
                admin_sql(f'ALTER DATABASE "{cache}" IS_TEMPLATE true')
                print(f"built {size:,} entries in {seconds:.0f} s (cached as {cache})")
            previous = cache
            work = dbs.create(f"{size // 1000}k", template=cache)
            full = run_audit_process(work, full=True)
            row = {"size": size, "full": full}
            if size == SIZES[-1]:
                row["added_s"] = add_through_the_ledger(work, NEW_ENTRIES)
                row["incremental"] = run_audit_process(work, full=False)
            results.append(row)
    total = time.perf_counter() - began

    print()
    print(
        f"{'entries':>10} {'full audit':>11} {'peak RSS':>9} {'RSS before':>11} {'growth':>7} "
        f"{'incremental':>12} {'incr. RSS':>10} {'ratio':>7}"
    )
    for row in results:
        full, incremental = row["full"], row.get("incremental")
        ratio = incremental["seconds"] / full["seconds"] if incremental else None
        print(
            f"{row['size']:>10,} {full['seconds']:>10.2f}s {full['peak_mb']:>7.0f}MB "
            f"{full['before_mb']:>9.0f}MB {full['peak_mb'] - full['before_mb']:>5.0f}MB "
            + (
                f"{incremental['seconds']:>11.3f}s {incremental['peak_mb']:>8.0f}MB {ratio:>6.2%}"
                if incremental
                else f"{'—':>12} {'—':>10} {'—':>7}"
            )
        )
    print("\nWhere the time goes (seconds; the slowest checks, then the rest together):")
    runs = [(f"full, {row['size']:,}", row["full"]) for row in results]
    runs += [(f"incremental, {row['size']:,}", row["incremental"]) for row in results[-1:]]
    for label, run in runs:
        checks = run.get("checks", [])
        rest = sum(seconds for _, seconds in checks[SLOWEST:])
        outside = run["seconds"] - sum(seconds for _, seconds in checks)
        parts = [f"{name} {seconds:.2f}" for name, seconds in checks[:SLOWEST]]
        parts += [f"{len(checks) - SLOWEST} others {rest:.2f}", f"checkpoint {outside:.2f}"]
        print(f"  {label}: " + ", ".join(parts))
    last = results[-1]
    print(
        f"\n{NEW_ENTRIES:,} entries added through the ledger in {last['added_s']:.1f} s before "
        f"the incremental run; whole bench {total:.0f} s. Times on a shared machine are noisy."
    )
    clean = all(row["full"]["count"] == 0 for row in results) and last["incremental"]["count"] == 0
    problems = [v for row in results for v in row["full"]["violations"]]
    print(verdict(clean, "every audit clean" + (f" (found {problems})" if problems else "")))
    print(
        verdict(
            not last["incremental"]["full"],
            "the second run was incremental (started from the full run's checkpoint)",
        )
    )
    ratio = last["incremental"]["seconds"] / last["full"]["seconds"]
    print(verdict(ratio < RATIO_TARGET, f"incremental / full = {ratio:.2%} (target < 2 %)"))
    if len(results) > 1:
        low, high = results[0]["full"]["peak_mb"], results[-1]["full"]["peak_mb"]
        grew = [row["full"]["peak_mb"] - row["full"]["before_mb"] for row in results]
        print(
            verdict(
                high <= low * 1.25,
                f"peak memory {low:.0f} MB at {results[0]['size']:,} and {high:.0f} MB at "
                f"{results[-1]['size']:,} entries, the audit's own {grew[0]:.0f} and "
                f"{grew[-1]:.0f} MB (constant: within 25 %)",
            )
        )
    else:
        print("(one size under BENCH_QUICK: the memory comparison needs two)")
    print(verdict(total < TOTAL_TARGET, f"the bench took {total:.0f} s (target < 180 s)"))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--audit":
        audit_here(sys.argv[2], sys.argv[3] == "--full")
        sys.exit(0)
    sys.exit(main())
