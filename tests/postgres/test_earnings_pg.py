"""Earnings on PostgreSQL: views and the sweeper's catch-up moving one teacher's checkpoint at once,
while classes pay the teacher, count every payment once and never wait for each other; and
the reads use the indexes meant for them."""

import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import delete, event, select, text

from soma import ledger
from soma.audit import run_audit
from soma.earnings import service
from soma.extensions import db
from soma.models import (
    EarningsCheckpoint,
    EarningsDay,
    EarningsMonth,
    EntryKind,
    User,
    Wallet,
)
from tests.builders import fund, make_class, make_user
from tests.helpers import FakeClock, errors, race


@dataclass(frozen=True)
class Paid:
    teacher_id: int
    student_id: int
    wallet_id: int  # the teacher's
    hold_ids: list


def paid_teacher(fake: FakeClock, classes: int, holds: int = 0, tag: str = "race") -> Paid:
    """A teacher paid for `classes` completed classes two hours apart, and `holds` holds
    of 10 tokens on their student's wallet for `settle_to` to pay them later; committed."""
    teacher, student = make_user("teacher"), make_user("student")
    fund(student.id, 500)
    for _ in range(classes):
        make_class(student, teacher, "completed")
        fake.advance(minutes=120)
    held = [ledger.hold(student.id, 10, key=f"{tag}:hold:{n}").id for n in range(holds)]
    db.session.commit()
    wallet_id = db.session.scalar(select(Wallet.id).where(Wallet.user_id == teacher.id))
    return Paid(teacher.id, student.id, wallet_id, held)


def settle_to(paid: Paid, hold_id: int, key: str):
    """A class payment: 7 of the hold's 10 tokens settled to the teacher."""
    return ledger.settle(
        hold_id, 7, key=key, to_user_id=paid.teacher_id, holder_id=paid.student_id, held=10,
        kind=EntryKind.CLASS_SETTLE,
    )  # fmt: skip


def assert_the_ledgers_own(teacher, wallet_id: int, checkpointed, payments: int) -> None:
    """The figures read through the checkpoint are the ledger's own: with the checkpoint
    deleted, every one of the `payments` is in the tail and each figure is the same."""
    db.session.execute(delete(EarningsDay).where(EarningsDay.wallet_id == wallet_id))
    db.session.execute(delete(EarningsMonth).where(EarningsMonth.wallet_id == wallet_id))
    db.session.execute(delete(EarningsCheckpoint).where(EarningsCheckpoint.wallet_id == wallet_id))
    db.session.commit()
    from_the_ledger = service.earnings_of(teacher)
    assert from_the_ledger.tail_payments == payments
    assert (from_the_ledger.months, from_the_ledger.lifetime) == (
        checkpointed.months,
        checkpointed.lifetime,
    )


def test_views_moving_the_checkpoint_while_classes_pay_count_each_payment_once(app, wide_app):
    fake = FakeClock(datetime(2026, 11, 2, 9, tzinfo=UTC))
    app.config["SOMA_CLOCK"] = wide_app.config["SOMA_CLOCK"] = fake
    with app.app_context():
        paid = paid_teacher(fake, classes=5, holds=4)
    wallet_id = paid.wallet_id

    def view():
        return service.advance_checkpoint(wallet_id)

    def pay(hold_id):
        return lambda: settle_to(paid, hold_id, f"race:settle:{hold_id}")

    hold_ids = paid.hold_ids
    work = [view, pay(hold_ids[0]), view, view, pay(hold_ids[1]), view]
    work += [pay(hold_ids[2]), view, view, pay(hold_ids[3]), view, view]
    outcomes = race(wide_app, work)
    assert errors(outcomes) == []

    with app.app_context():
        service.advance_checkpoint(wallet_id)  # whatever landed after the last view
        teacher = db.session.get(User, paid.teacher_id)
        checkpointed = service.earnings_of(teacher)
        assert checkpointed.tail_payments == 0
        assert checkpointed.lifetime.classes == 9
        assert checkpointed.lifetime.tokens == 5 * 10 + 4 * 7
        assert run_audit() == []
        assert_the_ledgers_own(teacher, wallet_id, checkpointed, payments=9)


def generic_plan_of(statement, params) -> str:
    """The plan PostgreSQL keeps for one of the service's statements once it is prepared
    and planned generically (as psycopg's prepared statements may be), as text."""
    compiled = statement.compile(dialect=db.engine.dialect)
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", str(compiled))))
    sql = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", str(compiled))
    values = compiled.construct_params(params)
    raw = db.session.connection().connection.dbapi_connection
    # The client-side cursor sends each statement as text: PREPARE's $n stay its own.
    with psycopg.ClientCursor(raw) as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE earnings_read AS {sql}")
        placeholders = ", ".join(["%s"] * len(names))
        cursor.execute(f"EXPLAIN EXECUTE earnings_read({placeholders})", [values[n] for n in names])
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE earnings_read")
    return plan


@pytest.mark.parametrize("before", ["earnings_months", "FROM postings"])
def test_a_checkpoint_moved_by_another_view_during_a_view_counts_each_payment_once(
    app, wide_app, before
):
    """Another view moves the checkpoint on just before this view reads the months, or
    just before it reads the payments since: every payment is counted once all the same
    (the months and the seq they run through are read in one statement)."""
    fake = FakeClock(datetime(2026, 11, 2, 9, tzinfo=UTC))
    app.config["SOMA_CLOCK"] = wide_app.config["SOMA_CLOCK"] = fake
    with app.app_context():
        paid = paid_teacher(fake, classes=3)
        teacher_id, wallet_id = paid.teacher_id, paid.wallet_id
        truth = service.earnings_of(db.session.get(User, teacher_id))
        assert truth.lifetime.classes == 3 and truth.tail_payments == 3
        db.session.rollback()
        moved = []

        def another_view():
            with wide_app.app_context():
                moved.append(service.advance_checkpoint(wallet_id))

        def move_first(conn, cursor, statement, parameters, context, executemany):
            if before in statement and "GROUP BY" in statement and not moved:
                thread = threading.Thread(target=another_view)
                thread.start()
                thread.join()

        event.listen(db.engine, "before_cursor_execute", move_first)
        try:
            seen = service.earnings_of(db.session.get(User, teacher_id))
        finally:
            event.remove(db.engine, "before_cursor_execute", move_first)
        assert moved, "the other view never ran"
        assert seen.lifetime == truth.lifetime
        assert [month.totals for month in seen.months] == [m.totals for m in truth.months]
        assert run_audit() == []


def test_the_reads_use_their_indexes_with_a_generic_plan(ctx):
    """The partial index serves a generic plan only because the query repeats its
    predicate as literals (a parameter could be any kind); with sequential scans priced
    out, each read finds the index meant for it."""
    teacher = make_user("teacher")
    wallet_id = db.session.scalar(select(Wallet.id).where(Wallet.user_id == teacher.id))
    db.session.execute(text("SET LOCAL enable_seqscan = off"))
    when = datetime(2026, 11, 24, tzinfo=UTC)
    same_point = generic_plan_of(
        service.SAME_POINT,
        {"p_wallet": wallet_id, "p_point_from": when, "p_until": when},
    )
    assert "ix_postings_class_pay" in same_point, same_point
    params = {
        "p_wallet": wallet_id,
        "p_through": 0,
        "p_end": when,
        "p_from": when,
        "p_point_from": when,
    }
    params.update({f"p_month{i}": when for i in range(service.MONTHS)})
    tail = generic_plan_of(service.TAIL, params)
    assert "ix_postings_wallet_kind_seq" in tail or "ix_postings_class_pay" in tail, tail
    db.session.rollback()


def test_catch_up_passes_racing_with_payments_and_other_credits_count_each_payment_once(
    app, wide_app
):
    """The sweeper's catch-up moves the checkpoint by a few postings at a time, past
    postings that are not payments too, while classes pay the teacher and tokens reach
    them otherwise: a posting that lands as a pass reads the wallet's head stays after
    the checkpoint, so each payment is summed once, and the audit agrees."""
    fake = FakeClock(datetime(2026, 11, 2, 9, tzinfo=UTC))
    app.config["SOMA_CLOCK"] = wide_app.config["SOMA_CLOCK"] = fake
    with app.app_context():
        paid = paid_teacher(fake, classes=3, holds=4, tag="catch-up")
    teacher_id, wallet_id, hold_ids = paid.teacher_id, paid.wallet_id, paid.hold_ids

    def catch_up():
        return service.catch_up(behind=1, seqs=3)

    def pay(hold_id):
        return lambda: settle_to(paid, hold_id, f"catch-up:settle:{hold_id}")

    def credit(n):
        return lambda: ledger.credit(teacher_id, 3, key=f"catch-up:credit:{n}")

    work = [catch_up, pay(hold_ids[0]), credit(0), catch_up, pay(hold_ids[1]), catch_up]
    work += [credit(1), pay(hold_ids[2]), catch_up, catch_up, pay(hold_ids[3]), credit(2)]
    outcomes = race(wide_app, work)
    assert errors(outcomes) == []

    with app.app_context():
        while service.catch_up(behind=1, seqs=3):
            pass
        head = db.session.scalar(select(Wallet.head_seq).where(Wallet.id == wallet_id))
        through = db.session.scalar(
            select(EarningsCheckpoint.through_seq).where(EarningsCheckpoint.wallet_id == wallet_id)
        )
        assert head == through == 3 + 4 + 3
        teacher = db.session.get(User, teacher_id)
        checkpointed = service.earnings_of(teacher)
        assert checkpointed.tail_payments == 0
        assert (checkpointed.lifetime.classes, checkpointed.lifetime.tokens) == (7, 3 * 10 + 4 * 7)
        assert run_audit() == []
        assert_the_ledgers_own(teacher, wallet_id, checkpointed, payments=7)


@pytest.mark.parametrize("injected_before", ["SELECT wallets.head_seq", "SELECT max(postings.seq)"])
def test_a_payment_committed_while_a_catch_up_reads_is_summed_once(app, wide_app, injected_before):
    """A class payment commits just before the catch-up reads the wallet's head, or just
    before it reads the payments: either way it is summed once, now or later (with the
    head read after the payments, the first would move the checkpoint past it unsummed)."""
    fake = FakeClock(datetime(2026, 11, 2, 9, tzinfo=UTC))
    app.config["SOMA_CLOCK"] = wide_app.config["SOMA_CLOCK"] = fake
    with app.app_context():
        paid = paid_teacher(fake, classes=2, holds=1, tag="catch-up:late")
        teacher_id, wallet_id = paid.teacher_id, paid.wallet_id
        settled = []

        def pay():
            with wide_app.app_context(), ledger.atomic():
                settled.append(settle_to(paid, paid.hold_ids[0], "catch-up:late:settle"))

        def pay_first(conn, cursor, statement, parameters, context, executemany):
            if statement.startswith(injected_before) and not settled:
                thread = threading.Thread(target=pay)
                thread.start()
                thread.join()

        event.listen(db.engine, "before_cursor_execute", pay_first)
        try:
            service.catch_up(behind=1, seqs=100)
        finally:
            event.remove(db.engine, "before_cursor_execute", pay_first)
        assert settled, "the payment never ran"
        service.catch_up(behind=1, seqs=100)  # whatever came after the first pass
        head = db.session.scalar(select(Wallet.head_seq).where(Wallet.id == wallet_id))
        through = db.session.scalar(
            select(EarningsCheckpoint.through_seq).where(EarningsCheckpoint.wallet_id == wallet_id)
        )
        assert head == through == 3
        earnings = service.earnings_of(db.session.get(User, teacher_id))
        assert earnings.tail_payments == 0
        assert (earnings.lifetime.classes, earnings.lifetime.tokens) == (3, 2 * 10 + 7)
        assert run_audit() == []


@pytest.mark.parametrize("held", ["checkpoint row", "first checkpoint, uncommitted"])
def test_a_view_or_a_catch_up_does_not_wait_behind_another_move(app, held):
    """Another move holds the teacher's checkpoint (a sweeper's catch-up summing years, or
    its first checkpoint not yet committed): a view's move and a catch-up skip the
    wallet at once instead of waiting, and move it once the other is done."""
    fake = FakeClock(datetime(2026, 11, 2, 9, tzinfo=UTC))
    app.config["SOMA_CLOCK"] = fake
    with app.app_context():
        paid = paid_teacher(fake, classes=2)
        teacher_id, wallet_id = paid.teacher_id, paid.wallet_id
        if held == "checkpoint row":
            service.advance_checkpoint(wallet_id, upto=1)
        db.session.commit()
        url = db.engine.url.render_as_string(hide_password=False).replace("+psycopg", "")
        with psycopg.connect(url) as other:
            if held == "checkpoint row":
                other.execute(
                    "SELECT 1 FROM earnings_checkpoints WHERE wallet_id = %s FOR UPDATE",
                    (wallet_id,),
                )
            else:
                other.execute(
                    "INSERT INTO earnings_checkpoints (wallet_id, through_seq, updated_at) "
                    "VALUES (%s, 0, now())",
                    (wallet_id,),
                )
            began = time.monotonic()
            assert service.advance_checkpoint(wallet_id, wait=False) == 0
            assert service.catch_up(behind=1) == []
            assert time.monotonic() - began < 2
            other.rollback()
        assert service.catch_up(behind=1) == [(wallet_id, 1 if held == "checkpoint row" else 0)]
        through = db.session.scalar(
            select(EarningsCheckpoint.through_seq).where(EarningsCheckpoint.wallet_id == wallet_id)
        )
        assert through == 2
        earnings = service.earnings_of(db.session.get(User, teacher_id))
        assert (earnings.lifetime.classes, earnings.tail_payments) == (2, 0)
        assert run_audit() == []
