"""Benchmark the teacher's earnings dashboard on PostgreSQL, on the big marketplace
database: a teacher with a long history against a new one.

Run by `make bench` (or `.venv/bin/python bench/earnings.py`). It prints figures, it
asserts nothing.

The database is bench/_big.py's, shared with bench/admin.py (which builds it when it is
missing; so does this file, run alone): ten million journal entries over a year. Its
long-serving teacher has ENTRIES / 100 classes (100,000), about 22 a day: eight
thousand among the year's entries and the rest in the eleven years before them, every
one a completed class_sessions row with its hold and settle, the settle's postings
numbered by seq in the teacher's wallet and its values frozen at the
teacher rate; its new teacher has none. The app's clock is a minute after the newest
entry, which is in the last hour of a month: the worst time for the one read that
depends on the date (last month up to the same point, which is then all of it).

Printed: GET /earnings through the Flask test client (server time: routing, the
session's user, the queries, the template), and the service's queries alone
(`earnings_of`), for each teacher, median of REPEATS alternating runs after two
discarded, their ratios (target TARGET) and the database backends' CPU per view; then
each query's plan with its server time and buffers.

Settings (environment):
    SOMA_BENCH_POSTGRES_URL     server, default postgresql://postgres@127.0.0.1:5432/postgres
    SOMA_BENCH_ADMIN_ENTRIES    entries in the big database (10000000; 100000 with
                                BENCH_QUICK=1): the long-serving teacher has a hundredth

Each run first empties the earnings checkpoints (the big database is kept between runs)
and builds the long-serving teacher's as the sweeper's catch-up does, a move of at most
10,000 postings at a time (each move timed); then empties them again, so that the first
view builds them as on a fresh database with no sweeper (the worst case).
"""

import statistics
import sys
import time
from datetime import timedelta

import psycopg
from _big import ENTRIES, LONG_EMAIL, NEW_EMAIL, PASSWORD, big_database, meta
from _common import (
    QUICK,
    SERVER_URL,
    ServerCPU,
    libpq_url,
    make_app,
    quick,
    verdict,
)
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

CLASSES = ENTRIES // 100
TARGET = 1.25  # the long-serving teacher's page takes at most this times the new one's
REPEATS = quick(31, 3)

EMAILS = {"long-serving": LONG_EMAIL, "new": NEW_EMAIL}


def teachers_of(name: str) -> dict:
    """The two teachers' user ids and emails."""
    with psycopg.connect(libpq_url(name)) as conn:
        ids = {
            label: conn.execute("SELECT id FROM users WHERE email = %s", (email,)).fetchone()[0]
            for label, email in EMAILS.items()
        }
    return {"ids": ids, "emails": dict(EMAILS)}


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
        for table in ("earnings_days", "earnings_months", "earnings_checkpoints"):
            connection.exec_driver_sql(f"DELETE FROM {table} WHERE wallet_id = %s", (wallet_id,))
        upto = connection.exec_driver_sql(
            "SELECT seq FROM postings WHERE wallet_id = %s AND kind = 'class_settle' "
            "AND amount > 0 ORDER BY seq DESC OFFSET %s LIMIT 1",
            (wallet_id, payments),
        ).scalar()
        db.session.commit()
        advance_checkpoint(wallet_id, upto=upto)
        db.session.remove()


def measure(name: str, teachers: dict, now) -> dict:
    """The first views (the long-serving teacher's builds the checkpoint), then views and
    the service with no tail and with the longest tail a view leaves, for both teachers."""
    from soma.earnings.service import CHECKPOINT_AFTER
    from soma.extensions import db

    app = make_app(
        name, WTF_CSRF_ENABLED=False, LOGIN_RATE_LIMIT="1000 per minute", SOMA_CLOCK=lambda: now
    )
    clients = {label: app.test_client() for label in teachers["emails"]}
    for label, client in clients.items():
        log_in(client, teachers["emails"][label])
    app.config["PROPAGATE_EXCEPTIONS"] = True

    def empty_checkpoints() -> None:
        with psycopg.connect(libpq_url(name)) as conn:  # (kept between runs: start with none)
            conn.execute("DELETE FROM earnings_days")
            conn.execute("DELETE FROM earnings_months")
            conn.execute("DELETE FROM earnings_checkpoints")

    empty_checkpoints()
    catch_up = sweeper_catch_up(app, teachers["ids"]["long-serving"])
    empty_checkpoints()
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
    figures = {"first": first, "months": months, "cases": {}, "catch_up": catch_up}
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


def sweeper_catch_up(app, user_id: int) -> dict:
    """The long-serving teacher's checkpoint built from none as the sweeper's catch-up
    builds it: moves of at most CATCH_UP_SEQS postings, each timed, up to the head.

    The ledger numbers a wallet's postings 1, 2, 3, ...; this database's seqs have gaps
    (see bench/_big.py), so each move is bounded here at the CATCH_UP_SEQS-th posting
    after the checkpoint (found outside the timed part), as a move of the ledger's own
    numbering is."""
    from soma.earnings import service
    from soma.extensions import db

    moves = []
    seqs = service.CATCH_UP_SEQS
    nth = text(
        "SELECT coalesce((SELECT seq FROM postings WHERE wallet_id = :w AND seq > :t "
        "ORDER BY seq OFFSET :n LIMIT 1), (SELECT head_seq FROM wallets WHERE id = :w))"
    )
    with app.app_context():
        wallet_id, head = db.session.execute(
            text("SELECT id, head_seq FROM wallets WHERE user_id = :u"), {"u": user_id}
        ).one()
        through = 0
        while through < head:
            upto = db.session.scalar(nth, {"w": wallet_id, "t": through, "n": seqs - 1})
            began = time.perf_counter()
            service.advance_checkpoint(wallet_id, upto=upto, wait=False)
            moves.append(time.perf_counter() - began)
            through = upto
        db.session.remove()
    return {"moves": moves, "seqs": seqs}


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
    name, built, seconds = big_database()
    made = meta(name)
    now = made["end_at"] + timedelta(minutes=1)
    teachers = teachers_of(name)
    print(
        f"{'built' if built else 'reused'} {name} ({made['entries']:,} entries over a year, "
        f"shared with bench/admin.py): a teacher with {CLASSES:,} classes (about 22 a day, "
        f"the last {CLASSES * 2 // 25:,} in that year) and a new teacher; the clock "
        f"{now:%Y-%m-%d %H:%M} UTC"
        + (f"; built in {seconds:.0f} s" if built else " (kept between runs)")
        + (" [QUICK]" if QUICK else "")
    )
    figures = measure(name, teachers, now)
    first = figures["first"]
    print()
    print("GET /earnings through the Flask test client (server time), milliseconds")
    print(
        f"  first view, no checkpoint yet: long-serving {first['long-serving']:.1f} "
        f"(reads every payment, then sums {figures['months']} months into the checkpoint), "
        f"new {first['new']:.1f}"
    )
    caught = figures["catch_up"]
    if caught["moves"]:
        print(
            f"  the same checkpoint built by the sweeper's catch-up instead (what production "
            f"does, so that no view has to): {len(caught['moves'])} moves of at most "
            f"{caught['seqs']:,} postings, {sum(caught['moves']):.1f} s in all, the longest "
            f"{max(caught['moves']) * 1000:.0f} ms"
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
