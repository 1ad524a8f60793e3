"""Random runs of money operations on PostgreSQL, checked against a model after every step.

Hypothesis drives credits, debits, holds, settles (full and partial, to a teacher or
to the fees account), releases, transfers, replays of earlier keys and reuses of a key
with other content across three students and a teacher. After each step the ledger is
checked by SQL (SPEC §2): every entry sums to zero, every cached balance is the sum of
its postings, nothing is negative, and every wallet holds what the model says; at the end
of each run, `flask soma audit`'s checks find nothing. Requests
alternate between the session's transaction and one of their own (`own_transaction`).

The database starts each test as migrated; each example starts with new users (and keys) of its own.
"""

import itertools
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from soma.audit import run_audit
from soma.extensions import db
from soma.ledger import (
    AlreadySettled,
    IdempotencyConflict,
    InsufficientTokens,
    PostedEntry,
    atomic,
    credit,
    debit,
    hold,
    release,
    settle,
    transfer,
)
from soma.models import PlatformAccount
from tests.builders import make_user

STUDENTS = 3
EXAMPLES = itertools.count()

SETTINGS = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

tokens = st.integers(min_value=1, max_value=40)
purchase = st.integers(min_value=1, max_value=120)
student = st.integers(min_value=0, max_value=STUDENTS - 1)
anyone = st.integers(min_value=0, max_value=STUDENTS)  # the last one is the teacher
pick = st.integers(min_value=0, max_value=10_000)


def sql(statement: str, **params):
    return db.session.execute(text(statement), params)


def balances() -> dict[str, tuple[int, int]]:
    """Every wallet's cached (available, locked), by owner; a platform account's summed
    over its shards (soma.ledger.shards)."""
    rows = sql(
        "SELECT coalesce(code, 'user:' || user_id), sum(available), sum(locked) FROM wallets "
        "GROUP BY coalesce(code, 'user:' || user_id)"
    )
    return {owner: (int(available), int(locked)) for owner, available, locked in rows}


def snapshot() -> tuple:
    """Everything a refused or replayed request must leave as it was."""
    counts = sql(
        "SELECT (SELECT count(*) FROM journal_entries), (SELECT count(*) FROM postings)"
    ).one()
    return tuple(counts), balances()


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.prefix = f"ex{next(EXAMPLES)}:"
        self.keys = itertools.count()
        self.requests = itertools.count()
        made = [make_user("student") for _ in range(STUDENTS)] + [make_user("teacher")]
        db.session.commit()
        self.users = [user.id for user in made]
        self.teacher = self.users[-1]
        self.model = {user_id: [0, 0] for user_id in self.users}  # [available, locked]
        start = balances()
        self.issuance = start[PlatformAccount.ISSUANCE.value][0]
        self.fees = start[PlatformAccount.FEES.value][0]
        self.held: dict[int, tuple[int, int]] = {}  # hold entry id -> (user id, tokens)
        self.closed: set[int] = set()
        self.done: list[tuple[Callable[..., PostedEntry], PostedEntry]] = []

    # Doing ---------------------------------------------------------------------------------

    def key(self, what: str) -> str:
        return f"{self.prefix}{what}:{next(self.keys)}"

    def how(self) -> dict:
        """Every other request runs as a transaction of its own, the rest in the session's."""
        return {"own_transaction": True} if next(self.requests) % 2 else {}

    def succeeds(self, action: Callable[..., PostedEntry]) -> PostedEntry:
        with atomic():
            entry = action(**self.how())
        assert not entry.replayed
        assert entry.id not in {earlier.id for _, earlier in self.done}
        self.done.append((action, entry))
        return entry

    def refused(self, action: Callable[..., PostedEntry], error: type[Exception]) -> None:
        before = snapshot()
        with pytest.raises(error), atomic():
            action(**self.how())
        assert snapshot() == before, "a refused request changed the ledger"

    def available(self, index: int) -> int:
        return self.model[self.users[index]][0]

    # Rules ---------------------------------------------------------------------------------

    @initialize(amounts=st.lists(purchase, min_size=STUDENTS + 1, max_size=STUDENTS + 1))
    def open_with_purchases(self, amounts):
        for who, amount in enumerate(amounts):
            self.buy(who, amount)

    @rule(who=anyone, amount=purchase)
    def buy(self, who, amount):
        user_id, key = self.users[who], self.key("credit")
        self.succeeds(lambda **how: credit(user_id, amount, key=key, **how))
        self.model[user_id][0] += amount
        self.issuance -= amount

    @rule(who=anyone, amount=tokens)
    def refund(self, who, amount):
        user_id, key = self.users[who], self.key("debit")
        action = lambda **how: debit(user_id, amount, key=key, **how)  # noqa: E731
        if amount > self.available(who):
            self.refused(action, InsufficientTokens)
            return
        self.succeeds(action)
        self.model[user_id][0] -= amount
        self.issuance += amount

    @rule(who=student, amount=tokens)
    def book(self, who, amount):
        user_id, key = self.users[who], self.key("hold")
        action = lambda **how: hold(user_id, amount, key=key, **how)  # noqa: E731
        if amount > self.available(who):
            self.refused(action, InsufficientTokens)
            return
        entry = self.succeeds(action)
        self.held[entry.id] = (user_id, amount)
        self.model[user_id][0] -= amount
        self.model[user_id][1] += amount

    def open_holds(self) -> list[int]:
        return sorted(set(self.held) - self.closed)

    def told(self, hold_id: int, tell: bool) -> dict:
        """The hold's holder and amount, for a caller that recorded them (checked in SQL)."""
        if not tell:
            return {}
        holder_id, held = self.held[hold_id]
        return {"holder_id": holder_id, "held": held}

    def settling(
        self, hold_id: int, charge: int, to_fees: bool, tell: bool = False
    ) -> Callable[..., PostedEntry]:
        key, told = self.key("settle"), self.told(hold_id, tell)
        if to_fees:
            return lambda **how: settle(
                hold_id, charge, to_platform=PlatformAccount.FEES, key=key, **told, **how
            )
        return lambda **how: settle(
            hold_id, charge, to_user_id=self.teacher, key=key, **told, **how
        )

    @precondition(lambda self: self.open_holds())
    @rule(which=pick, full=st.booleans(), charge=tokens, to_fees=st.booleans(), tell=st.booleans())
    def settle_a_hold(self, which, full, charge, to_fees, tell):
        hold_id = self.open_holds()[which % len(self.open_holds())]
        payer, held = self.held[hold_id]
        charge = held if full else 1 + (charge - 1) % held
        entry = self.succeeds(self.settling(hold_id, charge, to_fees, tell))
        assert entry.tokens == charge
        self.closed.add(hold_id)
        self.model[payer][1] -= held
        self.model[payer][0] += held - charge
        if to_fees:
            self.fees += charge
        else:
            self.model[self.teacher][0] += charge

    @precondition(lambda self: self.open_holds())
    @rule(which=pick, tell=st.booleans())
    def release_a_hold(self, which, tell):
        hold_id = self.open_holds()[which % len(self.open_holds())]
        payer, held = self.held[hold_id]
        key, told = self.key("release"), self.told(hold_id, tell)
        self.succeeds(lambda **how: release(hold_id, key=key, **told, **how))
        self.closed.add(hold_id)
        self.model[payer][1] -= held
        self.model[payer][0] += held

    @precondition(lambda self: self.closed)
    @rule(which=pick, release_it=st.booleans(), to_fees=st.booleans())
    def close_a_closed_hold_again(self, which, release_it, to_fees):
        closed = sorted(self.closed)
        hold_id = closed[which % len(closed)]
        if release_it:
            key = self.key("release")
            self.refused(lambda **how: release(hold_id, key=key, **how), AlreadySettled)
        else:
            self.refused(self.settling(hold_id, self.held[hold_id][1], to_fees), AlreadySettled)

    @rule(sender=anyone, offset=st.integers(min_value=1, max_value=STUDENTS), amount=tokens)
    def gift(self, sender, offset, amount):
        receiver = (sender + offset) % len(self.users)
        from_id, to_id, key = self.users[sender], self.users[receiver], self.key("transfer")
        action = lambda **how: transfer(from_id, to_id, amount, key=key, **how)  # noqa: E731
        if amount > self.available(sender):
            self.refused(action, InsufficientTokens)
            return
        self.succeeds(action)
        self.model[from_id][0] -= amount
        self.model[to_id][0] += amount

    @precondition(lambda self: self.done)
    @rule(which=pick)
    def repeat_an_earlier_request(self, which):
        action, first = self.done[which % len(self.done)]
        before = snapshot()
        with atomic():
            again = action(**self.how())
        assert again == PostedEntry(
            first.id, first.kind, first.tokens, first.idempotency_key, replayed=True
        )
        assert snapshot() == before, "a replay moved tokens"

    @precondition(lambda self: self.done)
    @rule(which=pick, who=anyone)
    def reuse_a_key_for_something_else(self, which, who):
        _, first = self.done[which % len(self.done)]
        user_id = self.users[who]
        # No rule credits this much, so the content always differs from the key's first use.
        self.refused(
            lambda **how: credit(user_id, 1000 + which, key=first.idempotency_key, **how),
            IdempotencyConflict,
        )

    # Invariants ----------------------------------------------------------------------------

    @invariant()
    def the_ledger_balances(self):
        assert sql("SELECT coalesce(sum(amount), 0) FROM postings").scalar() == 0
        unbalanced = sql(
            "SELECT entry_id, sum(amount) FROM postings GROUP BY entry_id HAVING sum(amount) <> 0"
        ).all()
        assert unbalanced == []
        thin = sql(
            "SELECT e.id FROM journal_entries e LEFT JOIN postings p ON p.entry_id = e.id "
            "GROUP BY e.id HAVING count(p.id) < 2"
        ).all()
        assert thin == []

    @invariant()
    def cached_balances_are_the_sums_of_their_postings(self):
        mismatched = sql(
            """
            SELECT w.id, w.available, w.locked, s.available, s.locked
            FROM wallets w LEFT JOIN (
                SELECT wallet_id,
                       sum(amount) FILTER (WHERE bucket = 'available') AS available,
                       sum(amount) FILTER (WHERE bucket = 'locked') AS locked
                FROM postings GROUP BY wallet_id
            ) s ON s.wallet_id = w.id
            WHERE w.available <> coalesce(s.available, 0) OR w.locked <> coalesce(s.locked, 0)
            """
        ).all()
        assert mismatched == []
        # Run one at a time, each entry's postings record the balances it left behind.
        stale = sql(
            """
            SELECT w.id FROM wallets w JOIN (
                SELECT DISTINCT ON (wallet_id) wallet_id, available_after, locked_after
                FROM postings ORDER BY wallet_id, entry_id DESC
            ) last ON last.wallet_id = w.id
            WHERE (last.available_after, last.locked_after) <> (w.available, w.locked)
            """
        ).all()
        assert stale == []

    @invariant()
    def nothing_is_negative(self):
        negative = sql(
            "SELECT id FROM wallets WHERE locked < 0 OR (available < 0 AND NOT is_source)"
        ).all()
        assert negative == []

    @invariant()
    def every_wallet_holds_what_the_model_says(self):
        now = balances()
        for user_id, (available, locked) in self.model.items():
            assert now[f"user:{user_id}"] == (available, locked), f"user {user_id}"
        assert now[PlatformAccount.ISSUANCE.value][0] == self.issuance
        assert now[PlatformAccount.FEES.value][0] == self.fees
        ours = sql(
            "SELECT count(*) FROM journal_entries WHERE idempotency_key LIKE :prefix",
            prefix=f"{self.prefix}%",
        ).scalar()
        assert ours == len(self.done), "an entry too many or too few for this run"
        closing = sql(
            "SELECT count(*) FROM journal_entries "
            "WHERE closes_entry_id = ANY(CAST(:ids AS bigint[]))",
            ids=list(self.held),
        ).scalar()
        assert closing == len(self.closed), "a hold closed more than once, or not at all"

    def teardown(self):
        """The whole audit once the run is over (the invariants above hold after every
        step; the audit reads every row, so after every step it made the test quadratic)."""
        assert run_audit() == []


def test_random_money_operations_keep_the_ledger_balanced_and_match_a_model(app):
    with app.app_context():
        run_state_machine_as_test(LedgerMachine, settings=SETTINGS)
