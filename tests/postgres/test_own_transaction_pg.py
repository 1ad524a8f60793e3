"""Entries of their own on PostgreSQL: one statement in autocommit, apart from the session.

The SQLite tests run here again, where a refusal must fail the statement as a
whole (soma_refuse_entry, migration 0004) since there is no transaction to roll
back; then what only PostgreSQL can show.
"""

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from soma import ledger
from soma.extensions import db
from soma.models import JournalEntry, Notification
from tests.helpers import balances, make_user
from tests.unit.test_own_transaction import (  # noqa: F401 (collected here with the PostgreSQL app)
    OWN,
    counts,
    test_a_class_paid_for_entry_by_entry_moves_every_token_once,
    test_a_hold_closes_once_whichever_way_it_is_closed,
    test_a_refused_entry_of_its_own_writes_nothing_and_says_why,
    test_a_repeated_key_replays_and_other_content_is_refused,
    test_a_settle_told_the_wrong_hold_writes_nothing,
    test_an_entry_of_its_own_is_committed_when_the_call_returns,
)


def notifications_of(user_id: int) -> int:
    return db.session.scalar(
        select(func.count()).select_from(Notification).where(Notification.user_id == user_id)
    )


def test_an_entry_of_its_own_stays_when_the_session_rolls_back_and_the_other_way_round(app):
    with app.app_context():
        student = make_user("student").id
        db.session.add(Notification(user_id=student, kind="test", message="pending"))
        db.session.flush()  # written in the session's open transaction, not committed

        posted = ledger.credit(student, 25, key="own:apart", **OWN)
        db.session.rollback()

        assert balances(student) == (25, 0)
        assert db.session.get(JournalEntry, posted.id) is not None
        assert notifications_of(student) == 0


def test_the_refusal_is_the_statement_failing_as_a_whole(app):
    """The function the strict statement calls, on its own: NULL passes, a step raises SM001."""
    with app.app_context():
        assert db.session.execute(text("SELECT soma_refuse_entry(NULL)")).scalar() is None
        with pytest.raises(DBAPIError) as raised:
            db.session.execute(text("SELECT soma_refuse_entry(1)"))
        assert raised.value.orig.sqlstate == "SM001"
        assert raised.value.orig.diag.message_detail == "1"
        db.session.rollback()


def test_a_lost_connection_fails_the_entry_cleanly_and_the_next_one_reconnects(app):
    with app.app_context():
        student = make_user("student").id
        ledger.credit(student, 10, key="own:before", **OWN)  # the pool now holds a connection
        db.session.commit()
        db.session.close()  # and so does nothing else
        # The server drops every connection of this database (as on a restart).
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
            admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        with pytest.raises(DBAPIError) as lost:
            ledger.credit(student, 10, key="own:during", **OWN)
        assert lost.value.connection_invalidated

        again = ledger.credit(student, 10, key="own:during", **OWN)
        assert not again.replayed  # the failed attempt wrote nothing
        assert balances(student) == (20, 0)
        assert ledger.run_audit() == []
