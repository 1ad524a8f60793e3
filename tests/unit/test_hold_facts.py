"""Settling a hold with the facts the caller recorded: checked as the entry is written."""

from datetime import datetime

import pytest

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.ledger import InvalidPosting
from soma.models import EntryKind, JournalEntry, PlatformAccount
from tests.builders import fund, make_user
from tests.helpers import balances


@pytest.fixture
def held(app):
    """A student with 100 tokens, 30 of them held for a class, and a teacher."""
    with app.app_context():
        student = make_user("student").id
        teacher = make_user("teacher").id
        fund(student, 100)
        with ledger.atomic():
            hold = ledger.hold(student, 30, key="facts:hold")
    return {"student": student, "teacher": teacher, "hold": hold.id}


def entry_count() -> int:
    return db.session.query(JournalEntry).count()


def test_a_settle_told_the_holder_and_amount_pays_like_one_that_reads_them(app, held):
    with app.app_context():
        with ledger.atomic():
            entry = ledger.settle(
                held["hold"], 25, to_user_id=held["teacher"], key="facts:settle",
                holder_id=held["student"], held=30,
            )  # fmt: skip
        assert not entry.replayed and entry.tokens == 25
        assert balances(held["student"]) == (75, 0)
        assert balances(held["teacher"]) == (25, 0)
        with ledger.atomic():
            again = ledger.settle(
                held["hold"], 25, to_user_id=held["teacher"], key="facts:settle",
                holder_id=held["student"], held=30,
            )  # fmt: skip
        assert again.replayed and again.id == entry.id
        assert balances(held["teacher"]) == (25, 0)
        assert run_audit() == []


@pytest.mark.parametrize(
    ("holder", "amount"),
    [("teacher", 30), ("student", 29), ("student", 31)],
)
def test_a_settle_told_the_wrong_holder_or_amount_is_refused_and_moves_nothing(
    app, held, holder, amount
):
    with app.app_context():
        before = entry_count()
        with pytest.raises(InvalidPosting, match="is not a class_hold of"), ledger.atomic():
            ledger.settle(
                held["hold"], 10, to_platform=PlatformAccount.FEES, key="facts:wrong",
                holder_id=held[holder], held=amount,
            )  # fmt: skip
        assert entry_count() == before
        assert balances(held["student"]) == (70, 30)
        assert run_audit() == []


def test_a_release_told_about_an_entry_that_is_no_hold_is_refused(app, held):
    with app.app_context():
        purchase = fund(held["student"], 5)
        with pytest.raises(InvalidPosting), ledger.atomic():
            ledger.release(purchase.id, key="facts:not-a-hold", holder_id=held["student"], held=5)
        assert balances(held["student"]) == (75, 30)


def test_a_release_told_the_facts_returns_the_hold_and_closes_it_once(app, held):
    with app.app_context():
        with ledger.atomic():
            ledger.release(held["hold"], key="facts:release", holder_id=held["student"], held=30)
        assert balances(held["student"]) == (100, 0)
        with pytest.raises(ledger.AlreadySettled), ledger.atomic():
            ledger.settle(
                held["hold"], 30, to_user_id=held["teacher"], key="facts:late",
                holder_id=held["student"], held=30,
            )  # fmt: skip
        assert balances(held["teacher"]) == (0, 0)


def test_half_the_facts_is_a_programming_error(app, held):
    with app.app_context(), pytest.raises(InvalidPosting, match="both"):
        ledger.release(held["hold"], key="facts:half", holder_id=held["student"])


def test_an_entry_at_a_naive_time_is_refused(app, held):
    naive = datetime(2026, 3, 1, 9, 0)  # noqa: DTZ001 (the point of the test)
    with app.app_context():
        with pytest.raises(InvalidPosting, match="aware"), ledger.atomic():
            ledger.credit(held["student"], 5, key="facts:naive", now=naive)
        assert balances(held["student"]) == (70, 30)


@pytest.mark.parametrize("told", [False, True])
def test_a_class_payment_cannot_close_a_withdrawal_hold(app, told):
    with app.app_context():
        teacher = make_user("teacher").id
        fund(teacher, 50)
        with ledger.atomic():
            withdrawal = ledger.hold(teacher, 40, key="kinds:w", kind=EntryKind.WITHDRAWAL_HOLD)
        facts = {"holder_id": teacher, "held": 40} if told else {}
        with pytest.raises(InvalidPosting), ledger.atomic():
            ledger.settle(
                withdrawal.id, 40, to_platform=PlatformAccount.REDEMPTION, key="kinds:s", **facts
            )
        with pytest.raises(InvalidPosting), ledger.atomic():
            ledger.release(withdrawal.id, key="kinds:r", **facts)
        assert balances(teacher) == (10, 40)
        with ledger.atomic():
            ledger.settle(
                withdrawal.id, 40, to_platform=PlatformAccount.REDEMPTION, key="kinds:paid",
                kind=EntryKind.WITHDRAWAL_PAID, **facts,
            )  # fmt: skip
        assert balances(teacher) == (10, 0)
        assert run_audit() == []
