"""Entries of their own on PostgreSQL: one statement in autocommit, apart from the session.

tests/unit/test_own_transaction.py runs on PostgreSQL too, where a refusal must fail the
statement as a whole (soma_refuse_entry, migration 0004) since there is no transaction to
roll back. Here is what only PostgreSQL can show.
"""

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from soma import ledger
from soma.audit import run_audit
from soma.extensions import db
from soma.ledger import InsufficientTokens, InvalidPosting
from soma.models import JournalEntry, Notification, Posting
from tests.builders import make_user
from tests.helpers import balances, postgres_server_url

OWN = {"own_transaction": True}


def counts() -> tuple[int, int]:
    return (
        db.session.scalar(select(func.count()).select_from(JournalEntry)),
        db.session.scalar(select(func.count()).select_from(Posting)),
    )


def notifications_of(user_id: int) -> int:
    return db.session.scalar(
        select(func.count()).select_from(Notification).where(Notification.user_id == user_id)
    )


def test_an_entry_of_its_own_stays_when_the_session_that_read_rolls_back(app):
    with app.app_context():
        student = make_user("student").id
        assert balances(student) == (0, 0)  # the session's transaction is open, and read only
        posted = ledger.credit(student, 25, key="own:apart", **OWN)
        db.session.rollback()
        assert balances(student) == (25, 0)
        assert db.session.get(JournalEntry, posted.id) is not None


def test_an_entry_of_its_own_is_refused_while_the_session_holds_writes(app):
    """Else it would wait for the session's row locks, and the session for it: forever."""
    with app.app_context():
        student, other = make_user("student").id, make_user("student").id
        ledger.credit(student, 10, key="own:in-session")  # locks issuance; not committed
        with pytest.raises(InvalidPosting, match="holds writes"):
            ledger.credit(other, 5, key="own:blocked", **OWN)
        db.session.add(Notification(user_id=student, kind="test", message="pending"))
        db.session.commit()
        assert balances(student) == (10, 0)
        assert balances(other) == (0, 0)
        db.session.add(Notification(user_id=other, kind="test", message="pending"))
        db.session.flush()  # any write counts, not only the ledger's
        with pytest.raises(InvalidPosting, match="holds writes"):
            ledger.credit(other, 5, key="own:blocked", **OWN)
        db.session.rollback()
        assert ledger.credit(other, 5, key="own:blocked", **OWN).replayed is False
        assert notifications_of(other) == 0
        assert balances(other) == (5, 0)


@pytest.mark.parametrize("first", ["written", "refused"])
def test_the_connection_goes_back_to_the_pool_out_of_autocommit(app, first):
    """A leaked autocommit would let the session commit half a refused entry."""
    with app.app_context():
        recipient, sender = make_user("student").id, make_user("student").id
        db.session.close()  # one pooled connection in play: the entry takes it...
        ledger.credit(sender, 3, key="own:three", **OWN)
        if first == "refused":
            with pytest.raises(InsufficientTokens):
                ledger.transfer(sender, recipient, 10, key="own:refused", **OWN)
        raw = db.engine.raw_connection()
        assert raw.driver_connection.autocommit is False
        raw.close()
        before = counts()
        # ...then the session: its refused two-wallet entry must leave nothing.
        with pytest.raises(InsufficientTokens), ledger.atomic():
            ledger.transfer(sender, recipient, 10, key="own:in-session")
        assert counts() == before
        assert balances(recipient) == (0, 0)


def test_an_interrupted_entry_drops_its_connection(app, monkeypatch):
    """A timeout's exception mid-statement: the connection's state is unknown, so it goes."""
    with app.app_context():
        student = make_user("student").id
        db.session.close()

        class Interrupted(BaseException):
            pass

        real_execute = psycopg.Connection.execute
        used = []

        def interrupted(self, *args, **kwargs):
            used.append(self)
            real_execute(self, *args, **kwargs)
            raise Interrupted()

        monkeypatch.setattr(psycopg.Connection, "execute", interrupted)
        with pytest.raises(Interrupted):
            ledger.credit(student, 7, key="own:interrupted", **OWN)
        monkeypatch.undo()
        (connection,) = used
        assert connection.closed  # dropped, not returned to the pool
        # Whether it was written is found out by asking again with the same key.
        again = ledger.credit(student, 7, key="own:interrupted", **OWN)
        assert again.replayed
        assert balances(student) == (7, 0)


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
        db.session.commit()
        db.session.close()
        held = [db.engine.raw_connection() for _ in range(3)]
        for connection in held:  # the pool now holds three idle connections
            connection.close()
        assert db.engine.pool.checkedin() == 3
        # The server drops every connection of this database (as on a restart).
        with psycopg.connect(postgres_server_url(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [db.engine.url.database],
            )
        with pytest.raises(DBAPIError) as lost:
            ledger.credit(student, 10, key="own:during", **OWN)
        assert lost.value.connection_invalidated

        # The pool renews the other two dead connections too: the next entry works.
        again = ledger.credit(student, 10, key="own:during", **OWN)
        assert not again.replayed  # the failed attempt wrote nothing
        assert balances(student) == (10, 0)
        assert run_audit() == []


def _postings_nodes(plan: dict) -> list[dict]:
    found = [plan] if plan.get("Relation Name") == "postings" and "Index Name" in plan else []
    for child in plan.get("Plans", []):
        found += _postings_nodes(child)
    return found


def test_a_settle_finds_its_hold_by_the_entry_whatever_the_holders_history(app, monkeypatch):
    """The hold check reads the hold's one locked posting, never the holder's history.

    A probe that also named the wallet could be planned as a walk of the wallet's
    (wallet_id, kind, seq) range, and a generic plan made while the tables were small
    did so: every settle read every hold the student had made (which plan PostgreSQL
    picks for such a probe depends on the table's size when the plan is made, so it is
    the probe's shape that is checked). The settle statement is explained here as a
    generic plan, as a pooled connection runs it once prepared.
    """
    from soma.ledger import core

    statements = []
    run = core._autocommit_row
    monkeypatch.setattr(
        core,
        "_autocommit_row",
        lambda sql, values: statements.append((sql, values)) or run(sql, values),
    )
    with app.app_context():
        student, teacher = make_user("student").id, make_user("teacher").id
        ledger.credit(student, 10_000, key="history:fund", **OWN)
        for n in range(120):
            hold = ledger.hold(student, 10, key=f"history:hold:{n}", **OWN)
            ledger.settle(
                hold.id, 7, to_user_id=teacher, key=f"history:settle:{n}",
                holder_id=student, held=10, **OWN,
            )  # fmt: skip
        hold = ledger.hold(student, 10, key="history:last", **OWN)
        db.session.commit()
        sql, values = statements[-2]  # the last settle's statement
        values = {**values, "p_key": "history:explained", "p_closes_entry_id": hold.id}
        connection = db.engine.raw_connection()
        try:
            driver = connection.driver_connection
            driver.execute("SET plan_cache_mode = force_generic_plan")
            (plan,) = driver.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, values).fetchone()[0]
            driver.rollback()
            driver.execute("RESET plan_cache_mode")
        finally:
            connection.close()
    probes = _postings_nodes(plan["Plan"])
    assert [node["Index Name"] for node in probes] == ["uq_postings_entry_wallet_bucket"]
    # By the entry alone: a probe naming the wallet too may be planned by a wallet's index.
    assert "entry_id" in probes[0]["Index Cond"]
    assert "wallet_id" not in probes[0]["Index Cond"] + probes[0].get("Filter", "")
    assert probes[0]["Actual Rows"] + probes[0].get("Rows Removed by Filter", 0) == 1
    with app.app_context():
        assert balances(student) == (10_000 - 121 * 10 + 120 * 3, 10)
        assert balances(teacher) == (120 * 7, 0)
        assert run_audit() == []
