"""Each wallet's postings are numbered and hash-chained; the audit recomputes the chains.

The edits here are made past the append-only triggers (dropped, on SQLite), the
one way a posting can change after it is written, and change nothing a balance
check sees: only the chain can tell.
"""

from datetime import UTC, datetime, timedelta

import flask_migrate
import pytest
from sqlalchemy import select, text
from werkzeug.security import generate_password_hash

from soma import ledger
from soma.audit import Violation, run_audit
from soma.extensions import db
from soma.ledger.core import chain_link
from soma.models import EntryKind, JournalEntry
from soma.wallet.history import Cursor, history_page, iter_history
from tests.builders import make_user
from tests.helpers import postings_of, wallet_row

# Every audit here runs twice: full, and incremental from a checkpoint of the new database.
pytestmark = pytest.mark.usefixtures("audit_mode")


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch):
    monkeypatch.setattr(
        "soma.models.user.generate_password_hash",
        lambda password: generate_password_hash(password, method="pbkdf2:sha256:1"),
    )


def allow_edits() -> None:
    """Edit postings past their append-only trigger, as an attacker with the database would:
    on SQLite drop it; on PostgreSQL switch triggers off until the transaction ends."""
    if db.session.connection().dialect.name == "postgresql":
        db.session.execute(text("SET LOCAL session_replication_role = replica"))
    else:
        db.session.execute(text("DROP TRIGGER postings_append_only_update"))


def entry_id(key: str) -> int:
    return db.session.scalar(select(JournalEntry.id).where(JournalEntry.idempotency_key == key))


def student_with_history() -> tuple[int, int]:
    """A student after a purchase, two holds (one settled in part, one released), a gift."""
    student, teacher, friend = (make_user(role).id for role in ("student", "teacher", "student"))
    db.session.commit()
    with ledger.atomic():
        ledger.credit(student, 50, key="buy")
        first = ledger.hold(student, 10, key="hold:1")
        second = ledger.hold(student, 5, key="hold:2")
    with ledger.atomic():
        ledger.settle(first.id, 7, key="settle:1", to_user_id=teacher)
        ledger.release(second.id, key="release:2")
        ledger.transfer(student, friend, 4, key="gift")
    return student, teacher


def test_a_wallets_postings_are_numbered_without_gaps_and_chained_in_order(ctx):
    student, teacher = student_with_history()
    own = wallet_row(student)
    postings = postings_of(own.id)
    # A hold posts available then locked; so do a settle's payer and a release.
    assert [(p.seq, p.entry_id, p.bucket, p.amount) for p in postings] == [
        (1, entry_id("buy"), "available", 50),
        (2, entry_id("hold:1"), "available", -10),
        (3, entry_id("hold:1"), "locked", 10),
        (4, entry_id("hold:2"), "available", -5),
        (5, entry_id("hold:2"), "locked", 5),
        (6, entry_id("settle:1"), "available", 3),
        (7, entry_id("settle:1"), "locked", -10),
        (8, entry_id("release:2"), "available", 5),
        (9, entry_id("release:2"), "locked", -5),
        (10, entry_id("gift"), "available", -4),
    ]
    previous = ""
    for posting in postings:
        content = (posting.bucket, posting.amount, posting.available_after, posting.locked_after)
        assert posting.hash == chain_link(previous, posting.entry_id, own.id, posting.seq, *content)
        previous = posting.hash
    assert (own.head_seq, own.head_hash) == (10, postings[-1].hash)
    assert own.prior_hash == postings[-2].hash
    paid = wallet_row(teacher)
    assert (paid.head_seq, paid.head_hash) == (1, postings_of(paid.id)[0].hash)
    assert run_audit() == []


def test_the_audit_names_the_link_where_a_posting_was_edited_past_the_triggers(ctx):
    """Its balance after is not checked by any balance check: only the chain sees it."""
    student, _ = student_with_history()
    own = wallet_row(student)
    edited = postings_of(own.id)[4]  # seq 5, hold:2's locked posting
    allow_edits()
    db.session.execute(
        text("UPDATE postings SET available_after = available_after + 5 WHERE id = :id"),
        {"id": edited.id},
    )
    db.session.commit()
    assert run_audit() == [
        Violation(
            "posting-chain",
            f"wallet {own.id} breaks at seq 5 (posting {edited.id}): its content and the "
            "chain before it do not hash to its hash",
        )
    ]


def test_the_audit_names_two_postings_whose_amounts_were_swapped(ctx):
    """Swapping the 50 of the purchase and the -4 of the gift between two wallets' rows
    is caught by the sums too; swapping within one entry's two legs only by the chain."""
    student, _ = student_with_history()
    own = wallet_row(student)
    available, locked = postings_of(own.id)[1:3]  # hold:1: -10 available, +10 locked
    purchase = postings_of(own.id)[0].entry_id
    allow_edits()
    # In three steps, as an entry has one posting per bucket of a wallet (a unique index):
    # the locked leg steps aside to another entry while the available leg takes its place.
    swap = [
        ("UPDATE postings SET entry_id = :aside WHERE id = :l", {"aside": purchase}),
        ("UPDATE postings SET bucket = 'locked', amount = -amount WHERE id = :a", {}),
        ("UPDATE postings SET entry_id = :entry, bucket = 'available', amount = -amount "
         "WHERE id = :l", {"entry": locked.entry_id}),
    ]  # fmt: skip
    for statement, values in swap:
        db.session.execute(text(statement), {"a": available.id, "l": locked.id, **values})
    db.session.commit()
    assert run_audit() == [
        Violation(
            "posting-chain",
            f"wallet {own.id} breaks at seq 2 (posting {available.id}): its content and the "
            "chain before it do not hash to its hash",
        )
    ]


def test_the_audit_names_a_gap_in_a_wallets_numbers_and_a_head_that_is_not_its_last(ctx):
    student, _ = student_with_history()
    own = wallet_row(student)
    last = postings_of(own.id)[-1]
    allow_edits()
    db.session.execute(text("UPDATE postings SET seq = 12 WHERE id = :id"), {"id": last.id})
    db.session.commit()
    assert run_audit() == [
        Violation(
            "posting-chain", f"wallet {own.id} jumps from seq 9 to seq 12 (posting {last.id})"
        ),
        Violation(
            "posting-chain",
            f"wallet {own.id}'s head says seq 10 but its last posting is seq 12, or their "
            "hashes differ",
        ),
    ]


def test_an_upgraded_database_chains_the_postings_written_before_the_chain(app, ctx):
    """Migration 0009 numbers and chains existing postings per wallet in id order."""
    student, _ = student_with_history()
    before = {p.id: (p.seq, p.hash) for p in postings_of(wallet_row(student).id)}
    db.session.commit()
    flask_migrate.downgrade(revision="0007")
    flask_migrate.upgrade()
    db.session.expire_all()
    after = {p.id: (p.seq, p.hash) for p in postings_of(wallet_row(student).id)}
    # The ledger posted each entry's buckets available first, so its ids are in seq order
    # and the backfill gives back the very same chain.
    assert after == before
    assert run_audit() == []
    with ledger.atomic():
        ledger.credit(student, 1, key="after-upgrade")
    assert run_audit() == []
    with pytest.raises(Exception, match="append-only"):
        db.session.execute(text("UPDATE postings SET amount = 1"))
    db.session.rollback()


def test_history_orders_by_seq_and_pages_whole_entries(ctx):
    """Entries at one instant, and one dated earlier than those before it, come in the
    order they were written; a page never splits an entry's two postings."""
    student = make_user("student").id
    db.session.commit()
    at = datetime(2026, 11, 24, 9, tzinfo=UTC)
    with ledger.atomic():
        ledger.credit(student, 30, key="buy", now=at)
        ledger.hold(student, 5, key="hold:1", now=at)
        ledger.credit(student, 1, key="late", now=at - timedelta(days=1))
        ledger.hold(student, 4, key="hold:2", now=at)
        ledger.hold(student, 3, key="hold:3", now=at)
    order = ["hold:3", "hold:2", "late", "hold:1", "buy"]
    own = wallet_row(student).id
    rows = history_page(own, limit=10).rows
    assert [row.entry_id for row in rows] == [entry_id(key) for key in order]
    assert [(row.available_change, row.locked_change) for row in rows[:2]] == [(-3, 3), (-4, 4)]
    assert [row.seq for row in rows] == [7, 5, 4, 2, 1]  # each entry's lowest
    for size in (1, 2, 3):
        seen, cursor = [], None
        while True:
            page = history_page(own, limit=size, cursor=cursor)
            assert len(page.rows) <= size
            seen += [row.entry_id for row in page.rows]
            if page.next_cursor is None:
                break
            cursor = Cursor.decode(page.next_cursor.encode())
        assert seen == [entry_id(key) for key in order]
    assert [row.entry_id for row in iter_history(own, batch=2)] == seen
    kinds = [row.entry_id for row in history_page(own, kind=EntryKind.CLASS_HOLD, limit=2).rows]
    assert kinds == [entry_id("hold:3"), entry_id("hold:2")]
    assert Cursor.decode("x") is None and Cursor.decode("0") is None
