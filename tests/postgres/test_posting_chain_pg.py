"""The posting chain on PostgreSQL: computed inside the entry's one statement, under the
wallet's row lock, so racing entries on one wallet still number and chain without gaps."""

import threading

import flask_migrate
import pytest
from sqlalchemy import select, text

from soma import ledger
from soma.audit import Violation, run_audit
from soma.extensions import db
from soma.ledger.core import chain_link
from soma.models import Posting
from tests.builders import make_user
from tests.helpers import postings_of, wallet_row

WORKERS = 16
THREAD_TIMEOUT = 60


def funded_student(tokens: int) -> int:
    student = make_user("student").id
    db.session.commit()
    with ledger.atomic():
        ledger.credit(student, tokens, key=f"fund:{student}")
    return student


@pytest.mark.parametrize("own_transaction", [False, True], ids=["session", "own"])
def test_racing_entries_on_one_wallet_number_and_chain_it_without_gaps(
    app, wide_app, own_transaction
):
    """Holds (two postings each), releases and credits race on one wallet."""
    with app.app_context():
        student = funded_student(1000)
        with ledger.atomic():
            held = [ledger.hold(student, 5, key=f"held:{n}").id for n in range(WORKERS // 2)]
    barrier = threading.Barrier(WORKERS)
    failures = []

    def work(n: int) -> None:
        with wide_app.app_context():
            barrier.wait(timeout=THREAD_TIMEOUT)
            try:
                with ledger.atomic():
                    if n % 2:
                        ledger.hold(student, 3, key=f"race:{n}", own_transaction=own_transaction)
                    elif n % 4:
                        ledger.release(
                            held[n // 2], key=f"race:{n}", own_transaction=own_transaction
                        )
                    else:
                        ledger.credit(student, 2, key=f"race:{n}", own_transaction=own_transaction)
            except Exception as error:
                failures.append(error)

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []

    with app.app_context():
        own = wallet_row(student)
        postings = postings_of(own.id)
        # 1 credit, 8 holds of 2 postings, then 8 holds (2), 4 releases (2), 4 credits (1).
        assert len(postings) == 1 + 2 * 8 + 2 * 8 + 2 * 4 + 4
        assert [p.seq for p in postings] == list(range(1, len(postings) + 1))
        previous = ""
        for p in postings:
            content = (p.bucket, p.amount, p.available_after, p.locked_after)
            assert p.hash == chain_link(previous, p.entry_id, own.id, p.seq, *content)
            previous = p.hash
        assert (own.head_seq, own.head_hash) == (len(postings), previous)
        assert run_audit() == []


def test_the_audit_names_a_posting_edited_with_the_append_only_trigger_disabled(app):
    with app.app_context():
        student = funded_student(50)
        with ledger.atomic():
            ledger.hold(student, 10, key="hold")
            ledger.credit(student, 5, key="more")
        own = wallet_row(student)
        edited = postings_of(own.id)[2]  # seq 3: the hold's locked posting
        db.session.execute(text("ALTER TABLE postings DISABLE TRIGGER postings_append_only"))
        db.session.execute(
            text("UPDATE postings SET locked_after = locked_after + 1 WHERE id = :id"),
            {"id": edited.id},
        )
        db.session.execute(text("ALTER TABLE postings ENABLE TRIGGER postings_append_only"))
        db.session.commit()
        assert run_audit() == [
            Violation(
                "posting-chain",
                f"wallet {own.id} breaks at seq 3 (posting {edited.id}): its content and the "
                "chain before it do not hash to its hash",
            )
        ]


def test_an_upgraded_database_chains_its_postings_as_the_ledger_would_have(app):
    """Migration 0009's backfill (Python) gives the chain PostgreSQL's functions did."""
    with app.app_context():
        student = funded_student(40)
        with ledger.atomic():
            hold = ledger.hold(student, 10, key="hold")
        ledger.settle(hold.id, 4, key="settle", to_user_id=make_user("teacher").id)
        db.session.commit()
        chains = {p.id: (p.seq, p.hash) for p in db.session.scalars(select(Posting))}
        db.session.remove()
        flask_migrate.downgrade(revision="0007")
        flask_migrate.upgrade()
        assert {p.id: (p.seq, p.hash) for p in db.session.scalars(select(Posting))} == chains
        assert run_audit() == []
        with pytest.raises(Exception, match="append-only"):
            db.session.execute(text("UPDATE postings SET amount = 1"))
        db.session.rollback()


def test_the_audits_ledger_checks_name_corruptions_on_postgresql_too(app):
    """locked-not-open-holds, entry-tokens-mismatch and entry-value-mismatch, as SQL there."""
    with app.app_context():
        student = funded_student(50)
        with ledger.atomic():
            hold = ledger.hold(student, 10, key="hold")
        with ledger.atomic():
            ledger.release(hold.id, key="release")
        assert run_audit() == []
        db.session.execute(
            text("ALTER TABLE journal_entries DISABLE TRIGGER journal_entries_append_only")
        )
        db.session.execute(
            text(
                "UPDATE journal_entries SET closes_entry_id = NULL "
                "WHERE idempotency_key = 'release'"
            )
        )
        db.session.execute(
            text("UPDATE journal_entries SET tokens = 9 WHERE idempotency_key = 'hold'")
        )
        db.session.execute(
            text("ALTER TABLE journal_entries ENABLE TRIGGER journal_entries_append_only")
        )
        db.session.commit()
        own = wallet_row(student)
        assert run_audit() == [
            Violation(
                "locked-not-open-holds",
                f"wallet {own.id} (user {student}) has 0 locked but its open holds lock 10",
            ),
            Violation(
                "entry-tokens-mismatch",
                f"class_hold entry {hold.id} says 9 tokens but its postings move 10",
            ),
            Violation(
                "entry-value-mismatch",
                f"entry {hold.id} is worth 100 and 40 cents but the pricing in force then makes "
                "it 90 and 36",
            ),
        ]
