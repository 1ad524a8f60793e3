"""A refused entry leaves nothing behind, even for a caller that forgets to roll back."""

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.ledger import InsufficientTokens, InvalidPosting
from soma.models import JournalEntry, Posting
from tests.builders import fund, make_user
from tests.helpers import balances


def counts() -> tuple[int, int]:
    return (
        db.session.scalar(select(func.count()).select_from(JournalEntry)),
        db.session.scalar(select(func.count()).select_from(Posting)),
    )


def test_a_refused_transfer_cannot_be_committed_half_done(app):
    with app.app_context():
        # The recipient's wallet comes first in the lock order, so it is credited
        # before the sender's is refused.
        recipient = make_user("student").id
        sender = make_user("student").id
        fund(sender, 3)
        before = counts()

        with pytest.raises(InsufficientTokens):
            ledger.transfer(sender, recipient, 10, key="half:transfer")
        with pytest.raises(SQLAlchemyError):
            db.session.commit()
        db.session.rollback()

        assert balances(sender) == (3, 0)
        assert balances(recipient) == (0, 0)
        assert counts() == before
        assert run_audit() == []


def test_a_settle_told_the_wrong_holder_cannot_be_committed_half_done(app):
    with app.app_context():
        ann = make_user("student").id
        bea = make_user("student").id
        teacher = make_user("teacher").id
        fund(ann, 20)
        fund(bea, 20)
        with ledger.atomic():
            hold = ledger.hold(ann, 10, key="half:ann")
            ledger.hold(bea, 10, key="half:bea")
        before = counts()

        with pytest.raises(InvalidPosting):
            ledger.settle(hold.id, 10, to_user_id=teacher, key="half:s", holder_id=bea, held=10)
        with pytest.raises(SQLAlchemyError):
            db.session.commit()
        db.session.rollback()

        assert balances(ann) == (10, 10)
        assert balances(bea) == (10, 10)
        assert balances(teacher) == (0, 0)
        assert counts() == before
