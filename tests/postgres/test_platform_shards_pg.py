"""Platform shards under real concurrency on PostgreSQL (soma.ledger.shards): threads that
credit from issuance at once, and credits racing unretires that take from redemption and
fees, move exactly what they say; no token is lost or made, and the audit stays clean.

Each worker is a thread with its own app context and connection (see test_ledger_pg.py),
and runs a series of operations, each its own transaction, so that many entries are in
flight on different shards at once.
"""

import threading

import pytest
from sqlalchemy import func, select

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.models import EntryKind, Posting, Wallet
from tests.builders import fund, make_user
from tests.helpers import THREAD_TIMEOUT

WORKERS = 8


@pytest.fixture(params=["session", "own"])
def how(request) -> dict:
    return {"own_transaction": True} if request.param == "own" else {}


def run_workers(app, work) -> list:
    """Run each callable in its own thread and app context, started together; the errors."""
    barrier = threading.Barrier(len(work))
    failures: list = []

    def run(fn) -> None:
        with app.app_context():
            barrier.wait(timeout=THREAD_TIMEOUT)
            try:
                fn()
            except Exception as error:  # collected, asserted empty by the test
                failures.append(error)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=run, args=(fn,), daemon=True) for fn in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT * 2)
    assert not any(thread.is_alive() for thread in threads), "a worker hung (deadlock?)"
    return failures


def account_total(code: str) -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.sum(Wallet.available)).where(Wallet.code == code))


def available(user_id: int) -> int:
    db.session.expire_all()
    return db.session.scalar(select(Wallet.available).where(Wallet.user_id == user_id))


def test_eight_threads_crediting_from_issuance_at_once_move_exactly_what_they_say(
    app, wide_app, how
):
    per_worker = 30
    with app.app_context():
        users = [make_user("student").id for _ in range(WORKERS)]
        db.session.commit()

    def buyer(worker: int):
        def buy() -> None:
            for n in range(per_worker):
                with ledger.atomic():
                    ledger.credit(
                        users[worker],
                        n + 1,
                        key=f"race:{worker}:{n}",
                        reference=("purchase", worker * 1000 + n),
                        **how,
                    )

        return buy

    assert run_workers(wide_app, [buyer(w) for w in range(WORKERS)]) == []
    with app.app_context():
        each = sum(range(1, per_worker + 1))
        assert [available(user) for user in users] == [each] * WORKERS
        assert account_total("issuance") == -each * WORKERS
        used = db.session.scalar(
            select(func.count(func.distinct(Wallet.shard)))
            .join(Posting, Posting.wallet_id == Wallet.id)
            .where(Wallet.code == "issuance")
        )
        assert used >= 10  # 240 references spread over many of the 128 shards
        entries = db.session.scalar(
            select(func.count()).select_from(Posting).where(Posting.amount > 0)
        )
        assert entries == WORKERS * per_worker
        assert run_audit() == []


def test_credits_racing_unretires_lose_and_make_no_token_and_none_is_refused(app, wide_app, how):
    """Half the workers buy; the other half undo payouts retired before the race (each
    unretire takes from the redemption and fees shards its retire credited), while the
    buyers' credits to other users keep issuance busy."""
    payouts = 24
    with app.app_context():
        teacher = make_user("teacher").id
        buyers = [make_user("student").id for _ in range(WORKERS // 2)]
        db.session.commit()
        fund(teacher, 100_000, key="teacher-funds")
        retired = []
        for n in range(payouts):
            with ledger.atomic():
                held = ledger.hold(
                    teacher, 200 + n, key=f"hold:{n}", kind=EntryKind.WITHDRAWAL_HOLD
                )
                retired.append(
                    ledger.retire(
                        held.id, n % 9, key=f"retire:{n}", reference=("payout-test", n)
                    ).id
                )
        before_teacher = available(teacher)
        redemption, fees = account_total("redemption"), account_total("fees")

    def undoer(part: int):
        def undo() -> None:
            for n in range(part, payouts, WORKERS // 2):
                with ledger.atomic():
                    ledger.unretire(
                        teacher,
                        200 + n,
                        n % 9,
                        key=f"unretire:{n}",
                        reference=("payout-test", n),
                        retired_entry_id=retired[n] if n % 2 else None,
                        **how,
                    )

        return undo

    def buyer(worker: int):
        def buy() -> None:
            for n in range(20):
                with ledger.atomic():
                    ledger.credit(buyers[worker], 5, key=f"mix:{worker}:{n}", **how)

        return buy

    work = [undoer(p) for p in range(WORKERS // 2)] + [buyer(w) for w in range(WORKERS // 2)]
    assert run_workers(wide_app, work) == []
    with app.app_context():
        returned = sum(200 + n for n in range(payouts))
        assert available(teacher) == before_teacher + returned
        assert account_total("redemption") == redemption - (returned - fees) == 0
        assert account_total("fees") == 0
        assert [available(user) for user in buyers] == [100] * (WORKERS // 2)
        assert account_total("issuance") == -100_000 - 100 * (WORKERS // 2)
        negative = db.session.scalar(
            select(func.count()).where(Wallet.available < 0, ~Wallet.is_source)
        )
        assert negative == 0
        assert run_audit() == []
