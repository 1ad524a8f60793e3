"""The ledger on PostgreSQL, under real concurrency (SPEC §2, money rules).

Each racing worker is a thread with its own app context, so its own session and
its own database connection; a barrier makes them start together. The app here
has a pool wide enough for every worker to hold a connection at once.

The races run each operation both ways (the `how` fixture): in the session's
transaction, committed by `atomic()`, and as a transaction of its own
(`own_transaction=True`: one statement in autocommit).
"""

import threading
from collections import Counter

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DBAPIError

from soma.audit import run_audit
from soma.extensions import db
from soma.ledger import (
    AlreadySettled,
    IdempotencyConflict,
    InsufficientTokens,
    atomic,
    credit,
    hold,
    release,
    settle,
    transfer,
)
from soma.models import EntryKind, JournalEntry, PlatformAccount, Posting, Wallet
from tests.builders import fund, make_user
from tests.helpers import THREAD_TIMEOUT, errors, ok, race

WORKERS_MAX = 20


@pytest.fixture(params=["session", "own"])
def how(request) -> dict:
    """How each racing operation runs: in the session's transaction, or in one of its own."""
    return {"own_transaction": True} if request.param == "own" else {}


def new_user(role: str = "student") -> int:
    user_id = make_user(role).id
    db.session.commit()
    return user_id


def wallet_of(user_id: int) -> tuple[int, int]:
    db.session.expire_all()
    row = db.session.execute(
        select(Wallet.available, Wallet.locked).where(Wallet.user_id == user_id)
    ).one()
    return row.available, row.locked


def platform_balance(code: PlatformAccount) -> int:
    return db.session.scalar(select(func.sum(Wallet.available)).where(Wallet.code == code.value))


def entries_by_key(prefix: str) -> list[JournalEntry]:
    db.session.expire_all()
    return db.session.scalars(
        select(JournalEntry)
        .where(JournalEntry.idempotency_key.startswith(prefix))
        .order_by(JournalEntry.id)
    ).all()


def nothing_negative() -> bool:
    return not db.session.scalar(
        select(func.count())
        .select_from(Wallet)
        .where((Wallet.locked < 0) | ((Wallet.available < 0) & ~Wallet.is_source))
    )


def funded_student(tokens: int, key: str) -> int:
    user_id = new_user("student")
    fund(user_id, tokens, key=key)
    return user_id


# 1. Append-only ---------------------------------------------------------------------------

REFUSED_CHANGES = [
    "UPDATE journal_entries SET memo = 'x'",
    "UPDATE journal_entries SET tokens = tokens + 1",
    "DELETE FROM journal_entries WHERE kind = 'class_hold'",
    "TRUNCATE journal_entries CASCADE",
    "DELETE FROM postings",
    "UPDATE postings SET amount = amount * 2",
    "UPDATE postings SET available_after = 0",
    "TRUNCATE postings",
    "UPDATE token_pricing SET usd_cents = 1",
    "DELETE FROM token_pricing",
    "TRUNCATE token_pricing CASCADE",
]


def ledger_rows() -> tuple:
    return tuple(
        db.session.execute(text(f"SELECT * FROM {table} ORDER BY id")).all()  # noqa: S608
        for table in ("journal_entries", "postings", "token_pricing")
    )


@pytest.mark.parametrize("statement", REFUSED_CHANGES)
def test_postgresql_refuses_to_change_entries_postings_and_pricing(app, statement):
    with app.app_context():
        student = funded_student(100, "append-only:credit")
        teacher = new_user("teacher")
        with atomic():
            held = hold(student, 30, key="append-only:hold")
            settle(held.id, 20, to_user_id=teacher, key="append-only:settle")
        before = ledger_rows()
        assert all(before), "every ledger table has rows to protect"

        with pytest.raises(DBAPIError, match="is append-only"):
            db.session.execute(text(statement))
        db.session.rollback()

        assert ledger_rows() == before
        assert run_audit() == []


def test_append_only_triggers_fire_for_each_table_and_operation(app):
    with app.app_context():
        rows = db.session.execute(
            text(
                "SELECT event_object_table, event_manipulation FROM information_schema.triggers "
                "WHERE action_statement LIKE '%soma_refuse_change%'"
            )
        ).all()
        truncate = db.session.execute(
            text(
                "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_proc p ON p.oid = t.tgfoid "
                "WHERE p.proname = 'soma_refuse_change' "
                "AND t.tgtype & 32 = 32 AND t.tgenabled = 'O'"  # TRUNCATE, enabled
            )
        ).scalars()
    tables = {"journal_entries", "postings", "token_pricing", "admin_actions"}
    assert set(rows) == {(t, op) for t in tables for op in ("UPDATE", "DELETE")}
    assert set(truncate) == tables


# 2. Racing holds --------------------------------------------------------------------------


def test_twenty_racing_holds_succeed_exactly_as_far_as_the_balance_covers(app, wide_app, how):
    balance, amount, workers = 100, 15, 20
    with app.app_context():
        student = funded_student(balance, "holds:credit")

    outcomes = race(
        wide_app,
        [lambda n=n: hold(student, amount, key=f"holds:{n}", **how) for n in range(workers)],
        how,
    )

    winners = balance // amount
    assert len(ok(outcomes)) == winners
    assert all(type(error) is InsufficientTokens for error in errors(outcomes)), errors(outcomes)
    assert len(errors(outcomes)) == workers - winners
    assert not any(entry.replayed for entry in ok(outcomes))

    with app.app_context():
        assert wallet_of(student) == (balance - winners * amount, winners * amount)
        holds = entries_by_key("holds:")
        assert [e.kind for e in holds] == ["purchase"] + [EntryKind.CLASS_HOLD] * winners
        assert {e.id for e in holds[1:]} == {entry.id for entry in ok(outcomes)}
        # The UPDATEs ran one after another: each saw the balance the last one left.
        locked_after = db.session.scalars(
            select(Posting.locked_after)
            .join(JournalEntry, JournalEntry.id == Posting.entry_id)
            .where(JournalEntry.kind == EntryKind.CLASS_HOLD, Posting.bucket == "locked")
        ).all()
        assert sorted(locked_after) == [amount * k for k in range(1, winners + 1)]
        assert nothing_negative()
        assert run_audit() == []


def test_racing_transfers_out_of_one_wallet_never_overdraw_it(app, wide_app):
    with app.app_context():
        sender = funded_student(50, "drain:credit")
        receivers = [new_user() for _ in range(4)]

    outcomes = race(
        wide_app,
        [
            lambda n=n: transfer(sender, receivers[n % 4], 7, key=f"drain:{n}")
            for n in range(WORKERS_MAX)
        ],
    )

    assert len(ok(outcomes)) == 50 // 7
    assert all(type(error) is InsufficientTokens for error in errors(outcomes))
    with app.app_context():
        assert wallet_of(sender) == (50 - 7 * (50 // 7), 0)
        assert sum(wallet_of(r)[0] for r in receivers) == 7 * (50 // 7)
        assert nothing_negative()
        assert run_audit() == []


# 3. One idempotency key, many requests ----------------------------------------------------


@pytest.mark.parametrize("operation", ["credit", "hold"])
def test_ten_requests_with_one_key_move_tokens_once_and_share_one_entry(
    app, wide_app, operation, how
):
    with app.app_context():
        student = funded_student(100, "same:credit")
        issuance_before = platform_balance(PlatformAccount.ISSUANCE)

    def request():
        if operation == "credit":
            return credit(student, 40, key="same:key", **how)
        return hold(student, 40, key="same:key", **how)

    outcomes = race(wide_app, [request] * 10, how)

    assert errors(outcomes) == []
    results = ok(outcomes)
    assert len({entry.id for entry in results}) == 1
    assert Counter(entry.replayed for entry in results) == {False: 1, True: 9}
    assert {(entry.kind, entry.tokens, entry.idempotency_key) for entry in results} == {
        (EntryKind.PURCHASE if operation == "credit" else EntryKind.CLASS_HOLD, 40, "same:key")
    }
    with app.app_context():
        entries = entries_by_key("same:key")
        assert [e.id for e in entries] == [results[0].id]
        assert len(entries[0].postings) == 2
        if operation == "credit":
            assert wallet_of(student) == (140, 0)
            assert platform_balance(PlatformAccount.ISSUANCE) == issuance_before - 40
        else:
            assert wallet_of(student) == (60, 40)
            assert platform_balance(PlatformAccount.ISSUANCE) == issuance_before
        assert run_audit() == []


def test_ten_requests_with_one_key_and_different_content_let_exactly_one_through(
    app, wide_app, how
):
    with app.app_context():
        student = funded_student(100, "clash:credit")

    outcomes = race(
        wide_app,
        [lambda n=n: credit(student, n + 1, key="clash:key", **how) for n in range(10)],
        how,
    )

    (winner,) = ok(outcomes)
    assert not winner.replayed
    assert len(errors(outcomes)) == 9
    assert all(type(error) is IdempotencyConflict for error in errors(outcomes)), errors(outcomes)
    with app.app_context():
        (entry,) = entries_by_key("clash:key")
        assert (entry.id, entry.tokens) == (winner.id, winner.tokens)
        assert wallet_of(student) == (100 + winner.tokens, 0)
        assert run_audit() == []


# 4. Settle against release ----------------------------------------------------------------


@pytest.mark.parametrize("round_", range(3))
def test_racing_settles_and_releases_close_a_hold_exactly_once(app, wide_app, round_, how):
    with app.app_context():
        student = funded_student(100, "close:credit")
        teacher = new_user("teacher")
        with atomic():
            held = hold(student, 30, key="close:hold")
        fees_before = platform_balance(PlatformAccount.FEES)

    work = []
    for n, charge in enumerate([30, 30, 20, 10]):
        work.append(
            lambda n=n, c=charge: settle(held.id, c, to_user_id=teacher, key=f"s{n}", **how)
        )
    work.append(lambda: settle(held.id, 5, to_platform=PlatformAccount.FEES, key="fee", **how))
    for n in range(4):
        # Some tell the hold's facts (one statement), some let the ledger read them.
        told = {"holder_id": student, "held": 30} if n % 2 else {}
        work.append(lambda n=n, told=told: release(held.id, key=f"r{n}", **told, **how))
    work = work[round_:] + work[:round_]  # vary who starts where

    outcomes = race(wide_app, work, how)

    (winner,) = ok(outcomes)
    assert len(errors(outcomes)) == len(work) - 1
    assert all(type(error) is AlreadySettled for error in errors(outcomes)), errors(outcomes)
    with app.app_context():
        db.session.expire_all()
        closing = db.session.scalars(
            select(JournalEntry).where(JournalEntry.closes_entry_id == held.id)
        ).all()
        assert [entry.id for entry in closing] == [winner.id]
        if winner.kind == EntryKind.CLASS_RELEASE:
            assert wallet_of(student) == (100, 0)
            assert wallet_of(teacher) == (0, 0)
            assert platform_balance(PlatformAccount.FEES) == fees_before
        elif winner.idempotency_key == "fee":
            assert wallet_of(student) == (95, 0)
            assert platform_balance(PlatformAccount.FEES) == fees_before + 5
        else:
            assert wallet_of(student) == (100 - winner.tokens, 0)
            assert wallet_of(teacher) == (winner.tokens, 0)
        assert run_audit() == []


# 5. Transfers both ways -------------------------------------------------------------------


def test_transfers_both_ways_at_once_do_not_deadlock_and_conserve_tokens(app, wide_app):
    start, per_thread, workers = 1000, 25, 8
    with app.app_context():
        alice = funded_student(start, "both:alice")
        bob = funded_student(start, "both:bob")

    def amount(thread: int, i: int) -> int:
        return 1 + (thread * 7 + i * 3) % 10  # at most 10, so nobody can run dry

    def shuttle(thread: int):
        sender, receiver = (alice, bob) if thread % 2 == 0 else (bob, alice)
        for i in range(per_thread):
            # Each transfer is its own transaction, as a request would be.
            with atomic():
                transfer(sender, receiver, amount(thread, i), key=f"both:{thread}:{i}")
            if i % 5 == 4:
                with atomic():  # a credit locks issuance first, then the user
                    credit(receiver, 1, key=f"both:credit:{thread}:{i}")

    outcomes = race(wide_app, [lambda t=t: shuttle(t) for t in range(workers)])

    assert errors(outcomes) == []
    sent = Counter()
    for thread in range(workers):
        sent[thread % 2] += sum(amount(thread, i) for i in range(per_thread))
    credits_each = (workers // 2) * (per_thread // 5)
    with app.app_context():
        assert wallet_of(alice) == (start - sent[0] + sent[1] + credits_each, 0)
        assert wallet_of(bob) == (start - sent[1] + sent[0] + credits_each, 0)
        assert sum(wallet_of(alice)) + sum(wallet_of(bob)) == 2 * start + 2 * credits_each
        gifts = db.session.scalar(
            select(func.count()).select_from(JournalEntry).where(JournalEntry.kind == "gift")
        )
        assert gifts == workers * per_thread
        assert run_audit() == []


def test_holds_settled_both_ways_at_once_do_not_deadlock(app, wide_app, how):
    """A settle writes to payer and payee; in opposite directions it must still not deadlock."""
    with app.app_context():
        alice = funded_student(500, "cross:alice")
        bob = funded_student(500, "cross:bob")

    def cross(thread: int):
        payer, payee = (alice, bob) if thread % 2 == 0 else (bob, alice)
        for i in range(10):
            # Booking and settling are separate requests: one entry per transaction.
            # (The lock order is fixed per entry, not across several in one transaction.)
            with atomic():
                held = hold(payer, 10, key=f"cross:hold:{thread}:{i}", **how)
            with atomic():
                told = {"holder_id": payer, "held": 10} if i % 2 else {}
                key = f"cross:settle:{thread}:{i}"
                settle(held.id, 6, to_user_id=payee, key=key, **told, **how)

    outcomes = race(wide_app, [lambda t=t: cross(t) for t in range(6)], how)

    assert errors(outcomes) == []
    with app.app_context():
        # Three threads each way, each settling 10 times 6: they cancel out.
        assert wallet_of(alice) == (500, 0)
        assert wallet_of(bob) == (500, 0)
        assert run_audit() == []


# A refusal explained while the balance moves ---------------------------------------------


def test_a_refused_hold_says_what_it_needed_even_when_a_credit_lands_meanwhile(app, wide_app):
    with app.app_context():
        student = funded_student(10, "explain:credit")

    def credit_from_another_request():
        with wide_app.app_context(), atomic():
            credit(student, 100, key="explain:late-credit")

    fired = []

    def between_refusal_and_explanation(conn, cursor, statement, *args):
        # The hold's UPDATE ... WHERE available - 15 >= 0 has matched no row. The first
        # plain SELECT after it is the ledger reading the wallet to explain why: just
        # before it runs, another request's credit commits.
        if not fired and statement.lstrip().upper().startswith("SELECT"):
            fired.append(statement)
            other = threading.Thread(target=credit_from_another_request)
            other.start()
            other.join(THREAD_TIMEOUT)

    with app.app_context():
        engine = db.engine
        event.listen(engine, "before_cursor_execute", between_refusal_and_explanation)
        try:
            with pytest.raises(InsufficientTokens) as refused, atomic():
                hold(student, 15, key="explain:hold")
        finally:
            event.remove(engine, "before_cursor_execute", between_refusal_and_explanation)
        # (Once the ledger no longer re-reads the wallet, nothing fires and this passes.)
        assert wallet_of(student) == ((110, 0) if fired else (10, 0))
        assert run_audit() == []
        # It needed 15 of the available bucket; what it reports as available may be the
        # 10 that refused it or the 110 of now, but never a negative need from `locked`.
        assert refused.value.needed == 15, str(refused.value)
        assert refused.value.available in (10, 110), str(refused.value)
