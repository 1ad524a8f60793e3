"""Benchmark the class timer endpoint under load: gunicorn, 2 workers, PostgreSQL, Redis.

Run by `make bench` (or `.venv/bin/python bench/timer.py`). It prints figures, it
asserts nothing.

CLASSES classes are in progress, each with its own student and teacher. The
app runs under gunicorn (2 gthread workers of THREADS threads, as deployed, in
production mode: Redis is the rate-limit store) on its own PostgreSQL database.
CLIENTS load processes each keep one HTTP/1.1 connection open and send requests
back to back for SECONDS, each as a student logged in with their own session
cookie, going round the classes:

- the timer: GET /classes/<id>/timer?seen=in_progress, as every open tracker
  page does every second (answered beneath Flask by soma.classes.fast_poll: the
  session cookie checked, its poll limit counted, the user's row and the
  class's row from the worker's cache, read again when PostgreSQL notifies a
  change or after 10 s, a fragment). The classes do not change while it runs,
  so nearly every poll here is served from the cache, as the polls of a class
  between two of its moves are; a read costs one query more (about 60 us of
  worker CPU and a round trip);
- the constant: GET /livez, a fixed answer of the same app (no database).

A warm-up round of each is thrown away; then they take turns over ROUNDS rounds
(the first of a round alternating), so that other work on the machine weighs on
both alike. The figures are medians; the ratio timer/constant is the target
(0.8 or more). Then the timer's request path is profiled in this process (the
app as gunicorn runs it, called as WSGI): the functions that take the most CPU.

Settings (environment):
    BENCH_QUICK=1             one short round (a smoke test of the benchmark)
    SOMA_BENCH_POSTGRES_URL   server, default postgresql://postgres@127.0.0.1:5432/postgres
    SOMA_BENCH_SECONDS        measured seconds per run (3; 2 quick)
    SOMA_BENCH_ROUNDS         turns of each endpoint after the warm-up (3; 1 quick)
    SOMA_BENCH_CLASSES        classes in progress (200; 40 quick)
    SOMA_BENCH_REDIS_URL      the rate-limit store, default redis://127.0.0.1:6379/13
"""

import cProfile
import http.client
import multiprocessing
import os
import pstats
import re
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

from _common import ROOT, SERVER_URL, Databases, database_url, make_app, migrate
from sqlalchemy.engine import make_url

QUICK = os.environ.get("BENCH_QUICK") == "1"
SECONDS = float(os.environ.get("SOMA_BENCH_SECONDS", "2" if QUICK else "3"))
ROUNDS = int(os.environ.get("SOMA_BENCH_ROUNDS", "1" if QUICK else "3"))
CLASSES = int(os.environ.get("SOMA_BENCH_CLASSES", "40" if QUICK else "200"))
TARGET = 0.8
PROFILED = 300 if QUICK else 1500  # timer requests profiled
TOP = 15
WORKERS = 2
THREADS = 4
CLIENTS = 4
WARMUP = 1.0
PASSWORD = "bench-password-1"  # noqa: S105 - the bench's own throwaway accounts
SECRET_KEY = "bench-secret-key-for-the-timer-benchmark"  # noqa: S105
# The rate-limit store production requires (a database of its own on the local Redis).
REDIS_URL = os.environ.get("SOMA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
# What production refuses to start without (a shared limit store, the payout key,
# mail, the support address); none of it is on the timer's path but the store.
PRODUCTION = {
    "SOMA_ENV": "production",
    "SECRET_KEY": SECRET_KEY,
    "LOGIN_RATE_LIMIT": "100000 per minute",
    # Each student here polls far faster than a page does (the load goes round
    # the classes back to back): the poll limit is counted, never reached.
    "TIMER_RATE_LIMIT": "10000000 per minute",
    "RATELIMIT_STORAGE_URI": REDIS_URL,
    "PAYOUT_ENCRYPTION_KEY": "pA6f6sQ0lqgJcHk2mW2v0c3Yb8bC9s7T1x4zQeR5uLk=",
    "SUPPORT_EMAIL": "support@bench.example",
    "MAIL_BACKEND": "smtp",
    "MAIL_FROM": "bench@bench.example",
    "APP_BASE_URL": "http://127.0.0.1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed(name: str) -> list[tuple[str, int]]:
    """CLASSES classes in progress; return (student email, class id) for each."""
    from werkzeug.security import generate_password_hash

    from soma import ledger
    from soma.classes import service
    from soma.classes.machine import Action
    from soma.extensions import db
    from soma.models import User, utcnow

    app = make_app(name)
    # One cheap hash for every account: a real one takes a third of a second to check,
    # and every student logs in. (Checking works the same way.)
    hashed = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
    classes = []
    with app.app_context():
        for i in range(CLASSES):
            student = User(email=f"s{i}@bench.example", display_name=f"Student {i}",
                           password_hash=hashed, role="student")  # fmt: skip
            teacher = User(email=f"t{i}@bench.example", display_name=f"Teacher {i}",
                           password_hash=hashed, role="teacher")  # fmt: skip
            db.session.add_all([student, teacher])
            db.session.flush()
            ledger.open_wallet(student.id)
            ledger.open_wallet(teacher.id)
            db.session.commit()
            ledger.credit(student.id, 100, key=f"bench-fund-{i}", own_transaction=True)
            booked = service.book(
                student, teacher.id, f"Class {i}", utcnow() + timedelta(minutes=5), 120, f"b{i}"
            )
            service.act(booked, Action.START, teacher)
            classes.append((student.email, booked.id))
        db.session.remove()
        db.engine.dispose()
    return classes


class Server:
    """gunicorn serving the app on `name`, stopped on exit."""

    def __init__(self, name: str):
        self.port = free_port()
        env = {
            **os.environ,
            **PRODUCTION,
            "DATABASE_URL": make_url(database_url(name)).render_as_string(hide_password=False),
        }
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        command = [gunicorn, "--workers", str(WORKERS), "--worker-class", "gthread",
                   "--threads", str(THREADS), "--bind", f"127.0.0.1:{self.port}",
                   "--log-level", "warning", "app:app"]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=ROOT, env=env)

    def __enter__(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/livez")
                if connection.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("gunicorn did not answer within 30 s")

    def __exit__(self, *_):
        self.process.terminate()
        self.process.wait(timeout=30)


def log_in(port: int, email: str) -> str:
    """Log in through the form; return the session cookie."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/login")
    response = connection.getresponse()
    page = response.read().decode()
    cookie = session_cookie(response)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    token = token or re.search(r'"X-CSRFToken": "([^"]+)"', page)
    body = urlencode({"email": email, "password": PASSWORD, "csrf_token": token.group(1)})
    connection.request("POST", "/login", body, {
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie,
    })  # fmt: skip
    response = connection.getresponse()
    response.read()
    if response.status != 302:
        raise RuntimeError(f"log-in as {email} answered {response.status}")
    return session_cookie(response)


def session_cookie(response) -> str:
    """The `session=...` pair of the response's Set-Cookie headers."""
    for header in response.headers.get_all("Set-Cookie") or []:
        pair = header.split(";", 1)[0]
        if pair.startswith("session="):
            return pair
    raise RuntimeError("the response set no session cookie")


def client(port, targets, go, results) -> None:
    """Send requests back to back on one connection; report the count and latencies."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    go.wait()
    begin = time.perf_counter() + WARMUP
    end = begin + SECONDS
    count, latencies, n = 0, [], 0
    while True:
        path, cookie = targets[n % len(targets)]
        n += 1
        started = time.perf_counter()
        if started >= end:
            break
        connection.request("GET", path, headers={"Cookie": cookie, "HX-Request": "true"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            results.put(("error", f"{path} answered {response.status}"))
            return
        finished = time.perf_counter()
        if begin <= started:
            count += 1
            latencies.append(finished - started)
    results.put(("ok", count, latencies))


def run(port: int, targets: list[tuple[str, str]]) -> dict:
    # Forked: a client imports nothing more, and starts in a moment (a spawned one imports
    # the bench again, about a second per run on a busy machine). It inherits no connection
    # it uses, and leaves without running finalizers (multiprocessing ends it with _exit).
    context = multiprocessing.get_context("fork")
    go, results = context.Event(), context.Queue()
    shares = [targets[i::CLIENTS] for i in range(CLIENTS)]
    processes = [
        context.Process(target=client, args=(port, share, go, results)) for share in shares
    ]
    for process in processes:
        process.start()
    time.sleep(0.5)
    go.set()
    outcomes = [results.get(timeout=WARMUP + SECONDS + 60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    failed = [outcome[1] for outcome in outcomes if outcome[0] == "error"]
    if failed:
        raise RuntimeError(failed[0])
    latencies = sorted(x for _, _, lat in outcomes for x in lat)
    return {
        "rps": sum(count for _, count, _ in outcomes) / SECONDS,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
    }


def profile(name: str, email: str, class_id: int) -> pstats.Stats:
    """CPU profile of PROFILED timer polls through the app as gunicorn runs it (production
    settings, Redis), called as WSGI in this process, one student's session."""
    from werkzeug.test import EnvironBuilder

    from soma import create_app
    from soma.extensions import db

    app = create_app({**PRODUCTION, "DATABASE_URL": database_url(name)})
    client = app.test_client()
    site = "https://bench.example"
    headers = {"User-Agent": "bench", "Referer": f"{site}/login"}
    page = client.get("/login", base_url=site, headers=headers).get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    form = {"email": email, "password": PASSWORD, "csrf_token": token.group(1)}
    if client.post("/login", data=form, base_url=site, headers=headers).status_code != 302:
        raise RuntimeError(f"log-in as {email} failed in the profiled app")
    cookie = client.get_cookie("session", domain="bench.example").value
    environ = EnvironBuilder(
        path=f"/classes/{class_id}/timer",
        query_string="seen=in_progress",
        base_url=site,
        headers={"Cookie": f"session={cookie}", "HX-Request": "true", "User-Agent": "bench"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    ).get_environ()
    statuses = []

    def start_response(status, _headers, _exc_info=None):
        statuses.append(status)

    def poll():
        b"".join(app(dict(environ), start_response))

    for _ in range(50):  # warm: the pool's connections, the compiled template, prepared SQL
        poll()
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(PROFILED):
        poll()
    profiler.disable()
    if set(statuses) != {"200 OK"}:
        raise RuntimeError(f"the profiled timer answered {sorted(set(statuses))}")
    with app.app_context():
        db.engine.dispose()
    return pstats.Stats(profiler)


def print_profile(stats: pstats.Stats) -> None:
    """The TOP functions by CPU of their own, then by CPU with what they call, per poll."""
    rows = stats.stats  # {(file, line, function): (calls, primitive, own, cumulative, callers)}

    def where(key):
        path, line, function = key
        for marker in ("site-packages/", str(ROOT) + "/"):
            if marker in path:
                path = path.split(marker, 1)[1]
        return f"{path}:{line}({function})" if line else function

    for title, column in (("own CPU", 2), ("cumulative CPU", 3)):
        print(f"  top {TOP} by {title}, microseconds per poll (under the profiler):")
        ranked = sorted(rows.items(), key=lambda item: item[1][column], reverse=True)[:TOP]
        for key, row in ranked:
            per_poll = 1e6 * row[column] / PROFILED
            print(f"    {per_poll:8.1f}  {row[0] / PROFILED:6.1f} calls  {where(key)}")


def main() -> int:
    started = time.perf_counter()
    print(f"Soma timer benchmark on {make_url(SERVER_URL).render_as_string()}")
    print(
        f"gunicorn {WORKERS} gthread workers x {THREADS} threads; {CLIENTS} client processes, "
        f"one keep-alive connection each; {CLASSES} classes in progress; {SECONDS:g} s per run "
        f"after {WARMUP:g} s; a warm-up round, then {ROUNDS} alternating rounds; "
        f"{os.cpu_count()} CPUs" + (" (BENCH_QUICK)" if QUICK else "")
    )
    with Databases() as dbs:
        name = dbs.create("timer")
        migrate(name)
        classes = seed(name)
        with Server(name) as server:
            cookies = {email: log_in(server.port, email) for email, _ in classes}
            timers = [(f"/classes/{class_id}/timer?seen=in_progress", cookies[email])
                      for email, class_id in classes]  # fmt: skip
            constant = [("/livez", cookie) for _, cookie in timers]
            run(server.port, constant)  # warm-up, thrown away
            run(server.port, timers)
            constants, timed = [], []
            for turn in range(ROUNDS):
                if turn % 2:
                    timed.append(run(server.port, timers))
                    constants.append(run(server.port, constant))
                else:
                    constants.append(run(server.port, constant))
                    timed.append(run(server.port, timers))
        stats = profile(name, *classes[0])

    ratios = [t["rps"] / b["rps"] for t, b in zip(timed, constants, strict=True)]
    base = median(constants, "rps")
    timer = median(timed, "rps")
    ratio = statistics.median(ratios)

    def describe(r):
        return f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"

    print()
    print("Timer endpoint against a constant endpoint of the same app, same load (medians)")
    rows = [
        ("GET /livez (constant)", f"{base['rps']:9.0f} req/s", describe(base)),
        ("GET /classes/<id>/timer", f"{timer['rps']:9.0f} req/s", describe(timer)),
        ("ratio timer/constant", f"{ratio:9.2f}",
         f"target >= {TARGET}; per round " + ", ".join(
             f"{r:.2f} ({t['rps']:.0f}/{b['rps']:.0f})"
             for r, t, b in zip(ratios, timed, constants, strict=True))),
    ]  # fmt: skip
    for label, figure, note in rows:
        print(f"  {label:<26}{figure:>14}   {note}")
    print()
    print(f"Profile of the timer's request path: {PROFILED} polls, one student, in this process")
    print_profile(stats)
    print()
    verdict = "meets" if ratio >= TARGET else "misses"
    print(f"verdict: timer/constant {ratio:.2f} {verdict} the target of {TARGET} "
          f"({timer['rps']:.0f} vs {base['rps']:.0f} req/s)")  # fmt: skip
    print(f"bench/timer.py finished in {time.perf_counter() - started:.0f} s")
    return 0


def median(results: list[dict], key: str) -> dict:
    """The run whose `key` is the median (the lower middle one of an even count)."""
    return sorted(results, key=lambda r: r[key])[(len(results) - 1) // 2]


if __name__ == "__main__":
    sys.exit(main())
