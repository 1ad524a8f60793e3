"""The operator's metrics on PostgreSQL: views moving the checkpoint at once, while money
moves, count every entry once; and the reads use their indexes, not a scan of the ledger."""

from datetime import timedelta

from sqlalchemy import delete, func, select, text

from soma import ledger
from soma.admin import metrics
from soma.extensions import db
from soma.models import (
    JournalEntry,
    MetricsActiveDay,
    MetricsCheckpoint,
    MetricsDay,
    MetricsWallet,
    utcnow,
)
from tests.builders import fund, make_user
from tests.helpers import errors, race


def test_views_moving_the_checkpoint_while_money_moves_count_each_entry_once(app, wide_app):
    with app.app_context():
        students = [make_user("student") for _ in range(3)]
        an_hour_ago = utcnow() - timedelta(hours=1)
        for n in range(30):
            fund(students[n % 3].id, 10, key=f"metrics-race-old:{n}", now=an_hour_ago)
        ids = [s.id for s in students]

    def view():
        # The real time: what the writers write now is too new to fold, and must wait.
        return metrics.advance_checkpoint(batch=7)

    def write(n):
        return lambda: ledger.credit(ids[n % 3], 5, key=f"metrics-race-new:{n}")

    work = [view, write(0), view, view, write(1), view, write(2), view, view, write(3)]
    outcomes = race(wide_app, work)
    assert errors(outcomes) == []

    with app.app_context():
        entries = db.session.scalar(select(func.count(JournalEntry.id)))
        now = utcnow()
        during = metrics.figures(now)
        folded = db.session.scalar(select(func.coalesce(func.sum(MetricsDay.entries), 0)))
        through = db.session.scalar(select(MetricsCheckpoint.through_entry_id))
        below = db.session.scalar(select(func.count()).where(JournalEntry.id <= through))
        assert folded == below  # each folded entry once, whatever the views did at once
        assert (
            during.days[-1].totals.entries + sum(d.totals.entries for d in during.days[:-1])
            == entries
        )
        assert metrics.catch_up(now + timedelta(minutes=10)) == db.session.scalar(
            select(func.max(JournalEntry.id))
        )
        assert db.session.scalar(select(func.sum(MetricsDay.entries))) == entries
        after = metrics.figures(now)
        assert (after.days, after.active) == (during.days, during.active)
        for table in (MetricsDay, MetricsWallet, MetricsActiveDay, MetricsCheckpoint):
            db.session.execute(delete(table))
        db.session.commit()
        scratch = metrics.figures(now)
        assert scratch.tail_entries == entries
        assert (scratch.days, scratch.months, scratch.active) == (
            after.days,
            after.months,
            after.active,
        )


def test_a_view_reads_the_tail_and_the_rollup_through_their_indexes(ctx):
    """No read of a view scans journal_entries or postings: the tail past the checkpoint
    is a range of journal_entries' primary key, and postings are read through an index."""
    student = make_user("student")
    for n in range(40):
        fund(student.id, 10, key=f"metrics-plan:{n}", now=utcnow() - timedelta(hours=1))
    # The planner's statistics as a live database has them, not what earlier tests left:
    # with none, a plan over "every entry" may pick any index, and this test flaked so.
    db.session.commit()
    db.session.execute(text("ANALYZE journal_entries, postings"))
    checkpoint = db.session.scalar(select(func.max(JournalEntry.id))) - 4  # a tail of four
    db.session.execute(text("SET LOCAL enable_seqscan = off"))  # as on a large table
    statement = metrics._entry_totals(checkpoint, None, "postgresql", metrics._issuance_ids())
    compiled = statement.compile(dialect=db.engine.dialect, compile_kwargs={"literal_binds": True})
    plan = "\n".join(row[0] for row in db.session.execute(text(f"EXPLAIN {compiled}")))
    assert "Seq Scan on journal_entries" not in plan
    assert "journal_entries_pkey" in plan or "pk_journal_entries" in plan
    assert "Seq Scan on postings" not in plan
    assert f"(id > {checkpoint})" in plan  # the tail is a range of the key, not a filter
