"""Benchmark the money paths people take through the site, request by request, on PostgreSQL.

Run by `make bench` (or `.venv/bin/python bench/paths.py`). It prints figures, it asserts
nothing (it only checks that every path did what it says: a gift given, a withdrawal
held, a class completed and paid).

Every path goes through the app's real request path in the Flask test client: routing,
the session cookie of a user logged in through the form, the CSRF token every form carries,
the forms, the services, the ledger and the templates. The rate limits are off (they cap
how often one person may do a thing; here one person does it thousands of times).

- a gift: POST /gifts/review, then POST /gifts/confirm with the nonce its page gave
  (two requests; the ledger's transfer inside);
- a withdrawal request, as a teacher asks for one: POST /withdrawals/review, then POST
  /withdrawals with the confirmation page's fields (two requests; a hold inside);
- a class's whole life: the student books it (POST /classes/new), the teacher starts it
  (POST /classes/<id>/start: the hold), the student's page polls the timer (GET
  /classes/<id>/timer), the app's clock moves past the class's end and the next poll
  completes it (the settle): four requests, two ledger operations.

The references, timed in the same rounds: a ledger transfer between two other students
(`ledger.transfer`, own transaction, in-process, no request), and a constant endpoint
(GET /livez through the same client). Each round runs every path and reference for
SECONDS in turn (the order reversed every other round); the first round is a discarded
warm-up, and the figures are medians of ROUNDS rounds. Server CPU per operation is the
database backends' (from /proc/<pid>/stat, same machine). One process, one client at a
time: these are the costs of a path, not a load test.

Settings (environment):
    SOMA_BENCH_POSTGRES_URL     server, default postgresql://postgres@127.0.0.1:5432/postgres
    SOMA_BENCH_PATH_SECONDS     seconds per path per round (1; 0.5 with BENCH_QUICK=1)
    SOMA_BENCH_PATH_ROUNDS      measured rounds (5; 1 and no warm-up with BENCH_QUICK=1)
"""

import os
import re
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg
from _common import (
    QUICK,
    SERVER_URL,
    Databases,
    ServerCPU,
    form_fields,
    libpq_url,
    log_in,
    make_app,
    median,
    migrate,
    quick,
    table,
    verdict,
)
from sqlalchemy.engine import make_url

SECONDS = float(os.environ.get("SOMA_BENCH_PATH_SECONDS", quick(1.0, 0.5)))
ROUNDS = int(os.environ.get("SOMA_BENCH_PATH_ROUNDS", quick(5, 1)))
WARMUP_ROUNDS = quick(1, 0)
PASSWORD = "bench-password-1"  # noqa: S105 - the bench's own throwaway accounts
CLASS_MINUTES = 30


class Clock:
    """The app's clock: the real time, plus however far the class path has moved it."""

    def __init__(self):
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


def seed(name: str) -> dict:
    """The people of every path, funded: two students for gifts, a teacher with a test
    payout method for withdrawals, a student and a teacher for classes, and two students
    for the reference transfers."""
    from werkzeug.security import generate_password_hash

    from soma import ledger
    from soma.extensions import db
    from soma.models import User

    app = make_app(name)
    hashed = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1")
    people = {}
    with app.app_context():
        for who, role in (
            ("giver", "student"),
            ("recipient", "student"),
            ("withdrawer", "teacher"),
            ("learner", "student"),
            ("tutor", "teacher"),
            ("payer", "student"),
            ("payee", "student"),
        ):
            user = User(
                email=f"{who}@bench.example",
                display_name=who.capitalize(),
                password_hash=hashed,
                role=role,
            )
            db.session.add(user)
            db.session.flush()
            ledger.open_wallet(user.id)
            db.session.commit()
            ledger.credit(user.id, 10**9, key=f"fund-{who}", own_transaction=True)
            people[who] = {"id": user.id, "email": user.email}
        db.session.remove()
        db.engine.dispose()
    with psycopg.connect(libpq_url(name)) as conn:
        people["withdrawer"]["method"] = conn.execute(
            "INSERT INTO payout_methods (user_id, kind, is_default, created_at, "
            "transfers_active, payouts_enabled, requirements) "
            "VALUES (%s, 'sandbox', true, now() - interval '2 days', false, false, '') "
            "RETURNING id",
            (people["withdrawer"]["id"],),
        ).fetchone()[0]
    return people


class Paths:
    """Each path and reference as one operation, on one app and its logged-in clients."""

    def __init__(self, name: str, people: dict):
        self.name, self.people = name, people
        self.clock = Clock()
        self.app = make_app(
            name,
            SOMA_CLOCK=self.clock.now,
            RATELIMIT_ENABLED=False,
            PROPAGATE_EXCEPTIONS=True,
        )
        self.clients, self.tokens = {}, {}
        for who in ("giver", "withdrawer", "learner", "tutor"):
            client = self.app.test_client()
            self.tokens[who] = log_in(client, people[who]["email"], PASSWORD)
            self.clients[who] = client
        self.n = 0
        self.classes: list[int] = []

    def _post(self, who: str, url: str, data: dict, expect=(302, 303)) -> str:
        response = self.clients[who].post(url, data=data)
        if response.status_code not in expect:
            raise RuntimeError(f"POST {url} answered {response.status_code}")
        return response

    def gift(self) -> None:
        page = self._post(
            "giver",
            "/gifts/review",
            {
                "email": self.people["recipient"]["email"],
                "tokens": "1",
                "note": "",
                "csrf_token": self.tokens["giver"],
            },
            expect=(200,),
        ).get_data(as_text=True)
        self._post("giver", "/gifts/confirm", form_fields(page, "/gifts/confirm"))

    def withdrawal(self) -> None:
        page = self._post(
            "withdrawer",
            "/withdrawals/review",
            {
                "amount": "20.00",
                "method": str(self.people["withdrawer"]["method"]),
                "csrf_token": self.tokens["withdrawer"],
            },
            expect=(200,),
        ).get_data(as_text=True)
        self._post("withdrawer", "/withdrawals", form_fields(page, "/withdrawals"))

    def class_life(self) -> None:
        self.n += 1
        start = (self.clock.now() + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
        booked = self._post(
            "learner",
            "/classes/new",
            {
                "teacher": str(self.people["tutor"]["id"]),
                "title": f"Class {self.n}",
                "start": start,
                "duration": str(CLASS_MINUTES),
                "key": secrets.token_urlsafe(16),
                "csrf_token": self.tokens["learner"],
            },
        )
        class_id = int(re.search(r"/classes/(\d+)", booked.headers["Location"]).group(1))
        self._post("tutor", f"/classes/{class_id}/start", {"csrf_token": self.tokens["tutor"]})
        timer = f"/classes/{class_id}/timer?seen=in_progress"
        for _ in range(2):  # a poll in class; then, the class's time run, the one that ends it
            response = self.clients["learner"].get(timer, headers={"HX-Request": "true"})
            if response.status_code != 200:
                raise RuntimeError(f"GET {timer} answered {response.status_code}")
            self.clock.offset += timedelta(minutes=CLASS_MINUTES + 6)
        self.classes.append(class_id)

    def constant(self) -> None:
        response = self.clients["giver"].get("/livez")
        if response.status_code != 200:
            raise RuntimeError(f"GET /livez answered {response.status_code}")

    def transfer(self) -> None:
        from soma import ledger

        self.n += 1
        payer, payee = self.people["payer"]["id"], self.people["payee"]["id"]
        with self.app.app_context():
            ledger.transfer(payer, payee, 1, key=f"ref-{self.n}-{secrets.token_hex(4)}",
                            own_transaction=True)  # fmt: skip

    def timed(self, op, seconds: float) -> dict:
        """Run `op` back to back for `seconds`: ms per operation, server CPU per op."""
        server = ServerCPU(self.name).start()
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            op()
            count += 1
        server.stop()
        return {
            "ms": 1000 * elapsed / count,
            "server_ms": None if server.seconds is None else 1000 * server.seconds / count,
            "count": count,
        }

    def check(self, done: dict) -> str:
        """That every path did what it says, read from the database."""
        with psycopg.connect(libpq_url(self.name)) as conn:
            gifts = conn.execute(
                "SELECT count(*) FROM gifts WHERE sender_id = %s", (self.people["giver"]["id"],)
            ).fetchone()[0]
            withdrawals = conn.execute(
                "SELECT count(*) FROM withdrawals WHERE user_id = %s AND hold_entry_id IS NOT NULL",
                (self.people["withdrawer"]["id"],),
            ).fetchone()[0]
            completed = conn.execute(
                "SELECT count(*) FROM class_sessions WHERE id = ANY(%s) AND status = 'completed' "
                "AND closing_entry_id IS NOT NULL AND charged_tokens = cost_tokens",
                (self.classes,),
            ).fetchone()[0]
        found = {"gift": gifts, "withdrawal": withdrawals, "class": completed}
        for key, count in found.items():
            if count != done[key]:
                raise RuntimeError(f"{done[key]} {key} operations ran, the database has {count}")
        return f"gifts {gifts:,}, withdrawals {withdrawals:,}, classes completed {completed:,}"


# (key, label, requests per operation, ledger operations per operation)
RUNS = (
    ("transfer", "ledger transfer (reference)", 0, 1),
    ("constant", "GET /livez (reference)", 1, 0),
    ("gift", "gift: review + confirm", 2, 1),
    ("withdrawal", "withdrawal request: review + confirm", 2, 1),
    ("class", "class life: book, start, poll, poll that completes", 4, 2),
)
METHODS = {"class": "class_life"}
# Targets set by this bench (the issue names none): a gift or a withdrawal request, two
# pages with a ledger operation inside, at a tenth of a bare transfer's rate at least; a
# class's requests at a quarter of the constant endpoint's rate at least.
TARGETS = (
    ("gift", "transfer", "ops/s", 0.1),
    ("withdrawal", "transfer", "ops/s", 0.1),
    ("class", "constant", "requests/s", 0.25),
)


def main() -> int:
    started = time.perf_counter()
    print(f"Soma money paths through HTTP on {make_url(SERVER_URL).render_as_string()}")
    print(
        f"Flask test client, one request at a time; {SECONDS:g} s per path per round, "
        f"{WARMUP_ROUNDS} warm-up round discarded, then {ROUNDS} rounds; {os.cpu_count()} CPUs"
        + (" [QUICK]" if QUICK else "")
    )
    try:
        psycopg.connect(SERVER_URL, connect_timeout=5).close()
    except psycopg.Error as error:
        print(f"cannot connect to PostgreSQL (SOMA_BENCH_POSTGRES_URL): {error}", file=sys.stderr)
        return 1
    found = {key: [] for key, *_ in RUNS}
    with Databases() as dbs:
        name = dbs.create("paths")
        migrate(name)
        paths = Paths(name, seed(name))
        for op in (paths.gift, paths.withdrawal, paths.class_life, paths.transfer):
            op()  # compile, connect: before the warm-up round
        done = {"gift": 1, "withdrawal": 1, "class": 1}
        for n in range(WARMUP_ROUNDS + ROUNDS):
            for key, *_ in RUNS if n % 2 == 0 else reversed(RUNS):
                result = paths.timed(getattr(paths, METHODS.get(key, key)), SECONDS)
                if key in done:
                    done[key] += result["count"]
                if n >= WARMUP_ROUNDS:
                    found[key].append(result)
        checked = paths.check(done)
        with paths.app.app_context():
            from soma.extensions import db

            db.engine.dispose()
    ms = {key: median([r["ms"] for r in runs]) for key, runs in found.items()}

    def server(key):
        values = [r["server_ms"] for r in found[key] if r["server_ms"] is not None]
        return f"{median(values):.2f}" if values else "n/a"

    def ratio(key, reference):
        """The path's operations per second over the reference's: median of the rounds."""
        return median(
            [b["ms"] / r["ms"] for r, b in zip(found[key], found[reference], strict=True)]
        )

    print()
    print("Money paths, one operation at a time (medians of the rounds)")
    rows = []
    for key, label, requests, ops in RUNS:
        per_request = f"{ms[key] / requests:.2f}" if requests else ""
        versus = []
        for reference in ("transfer", "constant"):
            if key not in ("transfer", "constant"):
                versus.append(f"{ratio(key, reference):.3f}")
            else:
                versus.append("")
        rows.append((label, f"{requests}", f"{ops}", f"{ms[key]:.2f}", per_request,
                     server(key), *versus))  # fmt: skip
    table(
        rows,
        ("path (one operation)", "requests", "ledger ops", "ms/op", "ms/request",
         "server CPU ms/op", "ops/s vs transfer", "ops/s vs /livez"),
    )  # fmt: skip
    per_request = {
        key: ratio(key, "constant") * requests for key, _, requests, _ in RUNS if requests > 1
    }
    print(
        "  requests/s against /livez's: "
        + ", ".join(f"{key} {value:.2f}" for key, value in per_request.items())
    )
    print(f"  checked in the database: {checked}")
    for key, reference, unit, target in TARGETS:
        label = next(label for k, label, *_ in RUNS if k == key)
        value = per_request[key] if unit == "requests/s" else ratio(key, reference)
        print("  " + verdict(f"{label} / {reference}, {unit}", value, target))
    print()
    print(f"bench/paths.py finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
