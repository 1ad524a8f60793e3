"""ledger.retire: a withdrawal hold retired whole, its fee to the fees account, once."""

import pytest
from sqlalchemy import func, select

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.ledger import AlreadySettled, IdempotencyConflict, InvalidPosting
from soma.models import EntryKind, JournalEntry, PlatformAccount, Posting, Wallet
from tests.builders import make_teacher
from tests.helpers import balances


def platform(code: PlatformAccount) -> int:
    return db.session.scalar(select(func.sum(Wallet.available)).where(Wallet.code == code.value))


def hold_of(teacher_id: int, tokens: int, key: str) -> int:
    with ledger.atomic():
        return ledger.hold(teacher_id, tokens, key=key, kind=EntryKind.WITHDRAWAL_HOLD).id


def test_retire_sends_the_fee_to_fees_and_the_rest_to_redemption_once(ctx):
    teacher = make_teacher(300)
    held = hold_of(teacher.id, 250, "retire:hold")
    fees, redemption = platform(PlatformAccount.FEES), platform(PlatformAccount.REDEMPTION)
    with ledger.atomic():
        entry = ledger.retire(held, 12, key="retire:paid", holder_id=teacher.id, held=250)
    assert (entry.kind, entry.tokens, entry.replayed) == (EntryKind.WITHDRAWAL_PAID, 250, False)
    assert balances(teacher.id) == (50, 0)
    assert platform(PlatformAccount.FEES) - fees == 12
    assert platform(PlatformAccount.REDEMPTION) - redemption == 238
    amounts = sorted(db.session.scalars(select(Posting.amount).where(Posting.entry_id == entry.id)))
    assert amounts == [-250, 12, 238]
    assert db.session.get(JournalEntry, entry.id).closes_entry_id == held

    with ledger.atomic():  # the same key again: the first entry, nothing moved
        again = ledger.retire(held, 12, key="retire:paid", holder_id=teacher.id, held=250)
    assert (again.id, again.replayed) == (entry.id, True)
    with pytest.raises(IdempotencyConflict), ledger.atomic():
        ledger.retire(held, 13, key="retire:paid", holder_id=teacher.id, held=250)
    with pytest.raises(AlreadySettled), ledger.atomic():  # another key: the hold is closed
        ledger.release(held, key="retire:release", kind=EntryKind.WITHDRAWAL_RELEASE)
    assert balances(teacher.id) == (50, 0)
    assert platform(PlatformAccount.FEES) - fees == 12
    assert run_audit() == []


def test_retire_without_a_fee_sends_all_to_redemption(ctx):
    teacher = make_teacher(100)
    held = hold_of(teacher.id, 100, "retire:nofee")
    with ledger.atomic():
        entry = ledger.retire(held, 0, key="retire:nofee:paid")
    amounts = sorted(db.session.scalars(select(Posting.amount).where(Posting.entry_id == entry.id)))
    assert amounts == [-100, 100]
    assert balances(teacher.id) == (0, 0)


def test_retire_refuses_a_fee_of_the_whole_hold_or_a_class_hold(ctx):
    teacher = make_teacher(100)
    held = hold_of(teacher.id, 40, "retire:bad")
    for fee in (40, 41, -1):
        with pytest.raises(InvalidPosting), ledger.atomic():
            ledger.retire(held, fee, key=f"retire:bad:{fee}")
    with ledger.atomic():
        class_hold = ledger.hold(teacher.id, 10, key="retire:class").id
    with pytest.raises(InvalidPosting), ledger.atomic():
        ledger.retire(class_hold, 1, key="retire:class:paid")
    assert balances(teacher.id) == (50, 50)
