"""Entries posted with `own_transaction=True`: written and committed on their own.

On PostgreSQL such an entry is one statement in autocommit (what only PostgreSQL can
show is in tests/postgres/test_own_transaction_pg.py); on SQLite it is the usual
statements in a transaction of their own. These tests run on both.
"""

import pytest
from sqlalchemy import func, select

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.ledger import AlreadySettled, IdempotencyConflict, InsufficientTokens, InvalidPosting
from soma.models import EntryKind, JournalEntry, PlatformAccount, Posting, Wallet
from tests.builders import make_user
from tests.helpers import balances

OWN = {"own_transaction": True}


def counts() -> tuple[int, int]:
    return (
        db.session.scalar(select(func.count()).select_from(JournalEntry)),
        db.session.scalar(select(func.count()).select_from(Posting)),
    )


def platform(code: PlatformAccount) -> int:
    return db.session.scalar(select(func.sum(Wallet.available)).where(Wallet.code == code.value))


def entry(entry_id: int) -> JournalEntry:
    db.session.expire_all()
    return db.session.get(JournalEntry, entry_id)


def test_a_class_paid_for_entry_by_entry_moves_every_token_once(app):
    with app.app_context():
        student, teacher = make_user("student").id, make_user("teacher").id
        issuance = platform(PlatformAccount.ISSUANCE)

        bought = ledger.credit(student, 50, key="own:buy", **OWN)
        held = ledger.hold(student, 20, key="own:hold", **OWN)
        paid = ledger.settle(
            held.id, 15, to_user_id=teacher, key="own:settle", holder_id=student, held=20, **OWN
        )
        second = ledger.hold(student, 10, key="own:hold2", **OWN)
        ledger.release(second.id, key="own:release", **OWN)  # the ledger reads the hold
        ledger.transfer(student, teacher, 5, key="own:gift", **OWN)

        db.session.rollback()  # the session had no part in any of it
        assert balances(student) == (50 - 15 - 5, 0)
        assert balances(teacher) == (15 + 5, 0)
        assert platform(PlatformAccount.ISSUANCE) == issuance - 50
        assert (bought.kind, held.kind, paid.kind) == ("purchase", "class_hold", "class_settle")
        written = entry(paid.id)
        assert (written.tokens, written.closes_entry_id) == (15, held.id)
        assert (written.usd_cents, written.teacher_usd_cents) == (150, 60)
        assert sorted((p.bucket, p.amount) for p in written.postings) == [
            ("available", 5),
            ("available", 15),
            ("locked", -20),
        ]
        assert run_audit() == []


def test_an_entry_of_its_own_is_committed_when_the_call_returns(app):
    with app.app_context():
        student = make_user("student").id
        posted = ledger.credit(student, 30, key="own:durable", **OWN)
        db.session.rollback()
        db.session.remove()  # a new session, as the next request would have
        assert balances(student) == (30, 0)
        assert entry(posted.id).idempotency_key == "own:durable"


def test_a_repeated_key_replays_and_other_content_is_refused(app):
    with app.app_context():
        student = make_user("student").id
        first = ledger.credit(student, 40, key="own:once", **OWN)
        again = ledger.credit(student, 40, key="own:once", **OWN)
        in_session = ledger.credit(student, 40, key="own:once")  # the other way, same key
        db.session.commit()

        assert again == ledger.PostedEntry(first.id, "purchase", 40, "own:once", replayed=True)
        assert in_session == again
        before = counts()
        with pytest.raises(IdempotencyConflict):
            ledger.credit(student, 41, key="own:once", **OWN)
        assert counts() == before
        assert balances(student) == (40, 0)


def test_a_hold_closes_once_whichever_way_it_is_closed(app):
    with app.app_context():
        student, teacher = make_user("student").id, make_user("teacher").id
        ledger.credit(student, 30, key="own:fund", **OWN)
        held = ledger.hold(student, 30, key="own:h", **OWN)
        ledger.release(held.id, key="own:r", holder_id=student, held=30, **OWN)
        before = counts()

        with pytest.raises(AlreadySettled):
            ledger.settle(held.id, 30, to_user_id=teacher, key="own:s", **OWN)
        with pytest.raises(AlreadySettled):
            ledger.settle(
                held.id, 30, to_user_id=teacher, key="own:s2", holder_id=student, held=30, **OWN
            )
        with pytest.raises(AlreadySettled), ledger.atomic():
            ledger.release(held.id, key="own:r2")
        assert counts() == before
        assert balances(student) == (30, 0)
        assert balances(teacher) == (0, 0)


def test_a_refused_entry_of_its_own_writes_nothing_and_says_why(app):
    with app.app_context():
        # The recipient's wallet comes first in the lock order: it would be
        # credited before the sender's is refused, were the entry not one whole.
        recipient = make_user("student").id
        sender = make_user("student").id
        ledger.credit(sender, 3, key="own:three", **OWN)
        before = counts()

        with pytest.raises(InsufficientTokens) as refused:
            ledger.transfer(sender, recipient, 10, key="own:too-much", **OWN)
        assert (refused.value.needed, refused.value.available) == (10, 3)
        assert str(refused.value) == "Not enough tokens: this needs 10 and 3 are available."
        with pytest.raises(InsufficientTokens):
            ledger.hold(sender, 4, key="own:hold-too-much", **OWN)

        # Nothing to roll back: the session carries on, and so does the ledger.
        assert counts() == before
        assert balances(sender) == (3, 0)
        assert balances(recipient) == (0, 0)
        ledger.transfer(sender, recipient, 3, key="own:all", **OWN)
        assert balances(sender) == (0, 0)
        assert balances(recipient) == (3, 0)
        assert run_audit() == []


def test_a_settle_told_the_wrong_hold_writes_nothing(app):
    with app.app_context():
        ann, bea = make_user("student").id, make_user("student").id
        teacher = make_user("teacher").id
        ledger.credit(ann, 20, key="own:ann", **OWN)
        ledger.credit(bea, 20, key="own:bea", **OWN)
        hold = ledger.hold(ann, 10, key="own:hold-ann", **OWN)
        ledger.hold(bea, 10, key="own:hold-bea", **OWN)
        before = counts()

        # Bea has 10 locked, so her wallet's UPDATE alone would pass: only the
        # check of the hold itself refuses it.
        with pytest.raises(InvalidPosting, match="is not a class_hold of 10 tokens by user"):
            ledger.settle(
                hold.id, 10, to_user_id=teacher, key="own:wrong", holder_id=bea, held=10, **OWN
            )
        # Told more than is held, the wallet would refuse too; the hold is what is wrong.
        with pytest.raises(InvalidPosting, match="is not a class_hold of 11 tokens"):
            ledger.settle(
                hold.id, 10, to_user_id=teacher, key="own:more", holder_id=ann, held=11, **OWN
            )
        with pytest.raises(InvalidPosting):
            ledger.settle(
                hold.id,
                10,
                key="own:wrong-kind",
                to_user_id=teacher,
                kind=EntryKind.WITHDRAWAL_PAID,
                holder_id=ann,
                held=10,
                **OWN,
            )
        assert counts() == before
        assert (balances(ann), balances(bea), balances(teacher)) == ((10, 10), (10, 10), (0, 0))
        assert run_audit() == []


def test_an_entry_of_its_own_is_refused_while_the_session_holds_ledger_writes(app):
    """It would wait for the session's locks (on SQLite, the database's write lock)."""
    with app.app_context():
        student, other = make_user("student").id, make_user("student").id
        ledger.credit(student, 10, key="own:in-session")  # in the session, not committed
        with pytest.raises(InvalidPosting, match="holds writes"):
            ledger.credit(other, 5, key="own:blocked", **OWN)
        db.session.commit()
        ledger.credit(other, 5, key="own:after", **OWN)
        assert (balances(student), balances(other)) == ((10, 0), (5, 0))
