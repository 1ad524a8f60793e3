"""What the benchmarks share: the server's URL, databases made and dropped, the app on them.

Not a benchmark itself (`make bench` skips files whose names start with _).
"""

import contextlib
import io
import os
import re
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVER_URL = os.environ.get("SOMA_BENCH_POSTGRES_URL", DEFAULT_URL)


# -- databases -------------------------------------------------------------------------


def database_url(name: str) -> str:
    return make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)


def libpq_url(name: str) -> str:
    """The URL of database `name` as libpq (pgbench, psycopg) reads it."""
    url = make_url(SERVER_URL).set(drivername="postgresql", database=name)
    return url.render_as_string(hide_password=False)


def admin_sql(statement: str) -> None:
    with psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(statement)


# A template this big or more is copied file by file (STRATEGY FILE_COPY: a checkpoint,
# then its files), not page by page through the WAL (PostgreSQL 15's default, WAL_LOG,
# which writes the whole database to the WAL once more): the audit bench's journal of
# 3,000,000 entries (3 GB) took 20.4 s to copy so and 8.6 s file by file, with no WAL
# left for the next checkpoint to write under a measured run. A small one (a migrated
# template) is quicker through the WAL, which spares the checkpoints.
FILE_COPY_FROM_BYTES = 256 * 1024**2


def copy_of(template: str | None) -> str:
    """The TEMPLATE (and STRATEGY) clause of a CREATE DATABASE copying `template`."""
    if not template:
        return ""
    with psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5) as conn:
        size, version = conn.execute(
            "SELECT pg_database_size(%s), current_setting('server_version_num')::int",
            (template,),
        ).fetchone()
    # (Before PostgreSQL 15 every copy is file by file, and STRATEGY is not known.)
    big = size >= FILE_COPY_FROM_BYTES and version >= 150000
    strategy = " STRATEGY FILE_COPY" if big else ""
    return f' TEMPLATE "{template}"{strategy}'


class Databases:
    """Databases made under one unique prefix; all dropped on exit."""

    def __init__(self):
        self.prefix = f"soma_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.names: list[str] = []

    def create(self, suffix: str, template: str | None = None) -> str:
        name = f"{self.prefix}_{suffix}"
        self.names.append(name)
        admin_sql(f'CREATE DATABASE "{name}"' + copy_of(template))
        return name

    def drop(self, name: str) -> None:
        """Drop one of them now (its pages leave the server's shared_buffers with it)."""
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.names.remove(name)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for name in reversed(self.names):
            try:
                admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg.Error as error:
                print(f"could not drop database {name}: {error}", file=sys.stderr)


# -- the app -----------------------------------------------------------------------------


def make_app(name: str, **overrides):
    """The app on database `name`, with the app's own settings (engine options included)."""
    from soma import create_app

    return create_app(
        {
            "SOMA_ENV": "development",
            "SECRET_KEY": "bench-secret-key",
            "DATABASE_URL": database_url(name),
            "RATELIMIT_STORAGE_URI": "memory://",
            **overrides,
        }
    )


def migrate(name: str) -> None:
    """Migrate database `name` to head; Alembic's log is shown only if it fails."""
    import flask_migrate

    from soma.extensions import db

    app = make_app(name)
    log = io.StringIO()
    with app.app_context():
        try:
            with contextlib.redirect_stderr(log):
                flask_migrate.upgrade()
        except BaseException:
            sys.stderr.write(log.getvalue())
            raise
        finally:
            db.engine.dispose()


# -- quick mode, the migration head, cached databases ------------------------------------

# BENCH_QUICK=1 (`make bench-quick`): each bench one short round on small data, to see
# that it runs and what its table looks like; its figures are not the bench's.
QUICK = os.environ.get("BENCH_QUICK") == "1"


def quick(full, small):
    """`small` in quick mode, else `full`."""
    return small if QUICK else full


def migration_head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(ROOT / "migrations")).get_current_head()


def exists(name: str) -> bool:
    with psycopg.connect(SERVER_URL, connect_timeout=5) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return found is not None


def cached_database(
    kind: str, version: str, build, intact=None, **params
) -> tuple[str, bool, float]:
    """A database of `kind` kept between runs; return (name, built now, seconds to build).

    Its name is `soma_bench_<kind>_<digest of params>_<digest of the migration head and
    the generator's version>`: a run whose schema or generator changed builds a new one,
    and drops the stale ones of the same kind and params (those of other params, a quick
    run's small ones say, are left alone). `build(name, **params)` fills a
    database that has been created and migrated; it is built under a temporary name and
    renamed when complete, so a build cut short is never reused. `intact(name)`, if
    given, is asked of a kept one: False drops it and builds it again (a database whose
    unlogged tables a crash of the server emptied, say).
    """
    import hashlib

    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    family = f"soma_bench_{kind}_{digest(repr(sorted(params.items())))}"
    name = f"{family}_{digest(migration_head() + '|' + version)}"
    with psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5) as conn:
        others = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s AND datname <> %s",
            (family.replace("_", "\\_") + "\\_%", name),
        ).fetchall()
    for (other,) in others:  # (one in use, by a run on another branch say, is left)
        try:
            admin_sql(f'DROP DATABASE IF EXISTS "{other}"')
        except psycopg.Error as error:
            print(f"left stale database {other}: {error}".strip(), file=sys.stderr)
    if exists(name):
        if intact is None or intact(name):
            return name, False, 0.0
        print(f"{name} is not intact: building it again", file=sys.stderr)
        admin_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    import time

    started = time.perf_counter()
    building = f"{name}_building"
    admin_sql(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
    admin_sql(f'CREATE DATABASE "{building}"')
    migrate(building)
    build(building, **params)
    admin_sql(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
    return name, True, time.perf_counter() - started


# -- the database server's CPU ------------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


_watcher = None  # one connection for every look at pg_stat_activity


def backend_pids(name: str) -> list[int]:
    """The server processes now connected to database `name` (same machine)."""
    global _watcher
    query = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
    for attempt in range(2):
        try:
            if _watcher is None or _watcher.closed:
                _watcher = psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5)
            return [pid for (pid,) in _watcher.execute(query, (name,)).fetchall()]
        except psycopg.OperationalError:
            _watcher = None
            if attempt:
                raise
    return []


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of process `pid` from /proc, in seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


class ServerCPU:
    """CPU seconds the backends of database `name` spend between start() and stop().

    Read from /proc/<pid>/stat of the backends pg_stat_activity lists (the server must
    run on this machine). A sampler thread looks every `every` seconds, so a backend that
    comes and goes meanwhile (pgbench's) is counted up to its last sample; a backend new
    since start() counts from zero. If /proc cannot be read, `seconds` is None.
    """

    def __init__(self, name: str, every: float = 0.1):
        self.name, self.every = name, every
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.seconds: float | None = None
        self._stop = None
        self._thread = None

    def _sample(self, baseline: bool = False) -> None:
        for pid in backend_pids(self.name):
            used = cpu_seconds(pid)
            if used is None:
                continue
            if pid not in self.first:
                self.first[pid] = used if baseline else 0.0
            self.last[pid] = used

    def start(self, poll: bool = False) -> "ServerCPU":
        import threading

        self._sample(baseline=True)
        if poll:
            self._stop = threading.Event()

            def run():
                while not self._stop.wait(self.every):
                    self._sample()

            self._thread = threading.Thread(target=run, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> float | None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._sample()
        # No backend read: the server is elsewhere, or its processes are not ours to read.
        self.seconds = sum(self.last[p] - self.first[p] for p in self.last) if self.last else None
        return self.seconds


def per_op_ms(seconds: float | None, ops: int) -> float | None:
    return None if seconds is None or not ops else 1000 * seconds / ops


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


# -- medians, verdicts, tables -------------------------------------------------------------


def median(values):
    import statistics

    return statistics.median(values)


def verdict(what: str, value: float, target: float, higher: bool = True, unit: str = "") -> str:
    """One line: the figure against its target, and whether it meets it."""
    met = value >= target if higher else value <= target
    sign = ">=" if higher else "<="
    return f"verdict: {what} {value:.2f}{unit} (target {sign} {target:g}{unit}): " + (
        "MEETS" if met else "MISSES"
    )


def table(rows: list[tuple], header: tuple | None = None, indent: str = "  ") -> None:
    """Print `rows` as columns, the first left-aligned and the rest right-aligned."""
    rows = [tuple(str(cell) for cell in row) for row in rows]
    if header:
        rows.insert(0, tuple(header))
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(widths[i + 1]) for i, cell in enumerate(row[1:])
        ]
        print(indent + "  ".join(cells).rstrip())


# -- the Flask test client ------------------------------------------------------------------

CSRF_FIELD = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def csrf_token(page: str) -> str:
    """The CSRF token a page carries (a form's hidden field, or htmx's header)."""
    found = CSRF_FIELD.search(page) or re.search(r'"X-CSRFToken": "([^"]+)"', page)
    if found is None:
        raise RuntimeError("the page carries no CSRF token")
    return found.group(1)


def log_in(client, email: str, password: str) -> str:
    """Log in through the form, CSRF token and all; return the session's CSRF token."""
    token = csrf_token(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login", data={"email": email, "password": password, "csrf_token": token}
    )
    if response.status_code != 302:
        raise RuntimeError(f"could not log in as {email}: {response.status_code}")
    return token


def form_fields(page: str, action: str) -> dict:
    """The named inputs (hidden ones included) of the form posting to `action` on `page`."""
    from html.parser import HTMLParser

    fields: dict = {}

    class Parser(HTMLParser):
        inside = False

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "form":
                self.inside = attrs.get("action") == action
            elif self.inside and tag in ("input", "button") and attrs.get("name"):
                if attrs.get("type") in ("checkbox", "radio") and "checked" not in attrs:
                    return
                fields.setdefault(attrs["name"], attrs.get("value") or "")

        def handle_endtag(self, tag):
            if tag == "form":
                self.inside = False

    Parser().feed(page)
    if not fields:
        raise RuntimeError(f"no form posting to {action} on the page")
    return fields


# -- bulk loads -------------------------------------------------------------------------------


# The ledger's tables and every table whose foreign keys name them (a logged table may
# not reference an unlogged one), referencing tables first.
UNLOGGED_TABLES = (
    "class_events",
    "purchase_events",
    "purchase_reversals",
    "unmatched_payments",
    "withdrawal_events",
    "class_sessions",
    "purchases",
    "withdrawals",
    "postings",
    "journal_entries",
)


def set_unlogged(conn) -> None:
    """Make the ledger's tables of a bench database UNLOGGED before its bulk load (see
    UNLOGGED_TABLES), when they are still empty (nothing to rewrite).

    For a database whose ledger the benches only read while measuring (the big one,
    the history page's, the audit's journals, to whose copy the audit bench adds its
    10,000 entries before the incremental run, unmeasured): its load and index builds
    then write no WAL, about 40 % less time to load and 10 % less to build each index,
    and nothing measured changes, a read of an unlogged table going through the same
    buffers and plans. The
    tables the benches write while measuring (the audit's checkpoint, the earnings and
    metrics rollups, wallets) stay logged. A crash of the server empties unlogged
    tables: `unlogged_intact` tells, and `cached_database` then builds again."""
    for table in UNLOGGED_TABLES:
        conn.execute(f"ALTER TABLE {table} SET UNLOGGED")


def unlogged_intact(name: str) -> bool:
    """Whether database `name`'s ledger (made UNLOGGED by `set_unlogged`) still holds its
    postings: a crash of the server empties unlogged tables."""
    with psycopg.connect(libpq_url(name)) as conn:
        return conn.execute("SELECT EXISTS (SELECT FROM postings)").fetchone()[0]


def drop_secondary_indexes(conn, tables: tuple[str, ...]):
    """Drop `tables`' indexes, unique constraints and unreferenced primary keys, for a bulk
    load (one sort per index afterwards is far faster than millions of random inserts
    into each); return a function that makes them again, as they were.

    `restore()` makes them on `conn`; `restore(apply=False)` returns instead the
    statements that build each index (CREATE INDEX, CREATE UNIQUE INDEX for a unique
    constraint: each takes only a SHARE lock, so several run at once, on several
    connections) and, last, those that attach the constraints to their indexes (ALTER
    TABLE ... ADD CONSTRAINT ... UNIQUE or PRIMARY KEY USING INDEX: instant, but an
    exclusive lock), to be run after every index is built."""
    indexes = conn.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i "
        "WHERE i.tablename = ANY(%s) AND i.schemaname = current_schema() AND NOT EXISTS ("
        "  SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
        (list(tables),),
    ).fetchall()
    constraints = conn.execute(
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), "
        "pg_get_indexdef(c.conindid) "
        "FROM pg_constraint c WHERE c.contype = 'u' AND c.conrelid::regclass::text = ANY(%s)",
        (list(tables),),
    ).fetchall()
    # Primary keys too, where no foreign key refers to the table (postings' say): a
    # referenced one stays, as dropping it would drop the foreign keys.
    constraints += conn.execute(
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), "
        "pg_get_indexdef(c.conindid) "
        "FROM pg_constraint c WHERE c.contype = 'p' AND c.conrelid::regclass::text = ANY(%s) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint f "
        "WHERE f.contype = 'f' AND f.confrelid = c.conrelid)",
        (list(tables),),
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    for table_name, name, _, _ in constraints:
        conn.execute(f'ALTER TABLE "{table_name}" DROP CONSTRAINT "{name}"')

    def restore(apply: bool = True) -> tuple[list[str], list[str]] | None:
        if apply:
            for table_name, name, definition, _ in constraints:
                conn.execute(f'ALTER TABLE "{table_name}" ADD CONSTRAINT "{name}" {definition}')
            for _, definition in indexes:
                conn.execute(definition)
            return None
        builds = [index for _, _, _, index in constraints]
        builds += [definition for _, definition in indexes]
        attach = [
            f'ALTER TABLE "{table_name}" ADD CONSTRAINT "{name}" '
            f'{definition.split(" (", 1)[0]} USING INDEX "{name}"'
            for table_name, name, definition, _ in constraints
        ]
        return builds, attach

    return restore


def build_indexes(
    url: str, builds: list[str], attach: list[str], jobs=2, beside=(), each=None, memory="1GB"
) -> None:
    """Run the index builds `builds` (from `drop_secondary_indexes`'s `restore(apply=False)`)
    `jobs` at a time, each on a connection of its own with maintenance_work_mem `memory`,
    beside the callables `beside`; then attach the constraints (`attach`). `each(seconds)`
    is told each build's time."""
    from concurrent.futures import ThreadPoolExecutor
    from time import perf_counter

    def make_index(statement: str) -> None:
        with psycopg.connect(url, autocommit=True) as builder:
            builder.execute(f"SET maintenance_work_mem = '{memory}'")
            builder.execute("SET max_parallel_maintenance_workers = 0")
            began = perf_counter()
            builder.execute(statement)
            if each is not None:
                each(perf_counter() - began)

    with ThreadPoolExecutor(jobs) as pool:
        running = [pool.submit(job) for job in beside]
        running += [pool.submit(make_index, statement) for statement in builds]
        for job in running:
            job.result()
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in attach:
            conn.execute(statement)


def platform_wallet(conn, code: str) -> int:
    """The id of the platform account `code` (its first sub-account, if it is split)."""
    found = conn.execute(
        "SELECT id FROM wallets WHERE code = %s OR code LIKE %s ORDER BY code <> %s, id LIMIT 1",
        (code, code + "%", code),
    ).fetchone()
    if found is None:
        raise RuntimeError(f"no platform account {code}")
    return found[0]
