"""The sweeper's earnings catch-up: a teacher who has not looked at /earnings in a long
while, or ever, has their class payments summed in the background, a bounded batch a
pass, so that their first view does not read years of payments; and no figure changes
wherever it leaves the checkpoint."""

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from soma.audit import run_audit
from soma.earnings import service
from soma.earnings.service import earnings_of
from soma.extensions import db
from soma.models import EarningsCheckpoint, User, Wallet
from tests.builders import fund, make_class, make_funded_user, make_user
from tests.unit import test_earnings
from tests.unit.test_earnings import NOW, checkpointed_months, figures, wallet_id_of

three_rates = test_earnings.three_rates  # (the fixture: a teacher paid in three months)

_slots = iter(range(10**6))


def taught(student, teacher, classes: int) -> None:
    """`classes` completed half-hour classes, each in a time slot of its own."""
    for _ in range(classes):
        now = NOW + timedelta(hours=next(_slots))
        make_class(student, teacher, "completed", now=now, minutes=30)


def checkpoint_of(wallet_id: int) -> int | None:
    db.session.rollback()
    return db.session.scalar(
        select(EarningsCheckpoint.through_seq).where(EarningsCheckpoint.wallet_id == wallet_id)
    )


def head_of(wallet_id: int) -> int:
    return db.session.scalar(select(Wallet.head_seq).where(Wallet.id == wallet_id))


def test_a_teacher_who_never_looked_is_summed_a_batch_at_a_time_and_no_figure_changes(
    three_rates,
):
    teacher = three_rates
    wallet_id = wallet_id_of(teacher.id)
    expected = figures(earnings_of(teacher))
    assert earnings_of(teacher).tail_payments == 4  # no checkpoint: every payment read
    assert checkpoint_of(wallet_id) is None

    # Two postings a pass: the first pass sums the first two payments only.
    assert service.catch_up(behind=1, seqs=2) == [(wallet_id, 0)]
    assert checkpoint_of(wallet_id) == 2
    earnings = earnings_of(teacher)
    assert (figures(earnings), earnings.tail_payments) == (expected, 2)
    assert run_audit() == []

    assert service.catch_up(behind=1, seqs=2) == [(wallet_id, 2)]
    assert checkpoint_of(wallet_id) == 4 == head_of(wallet_id)
    earnings = earnings_of(teacher)
    assert (figures(earnings), earnings.tail_payments) == (expected, 0)
    assert checkpointed_months(wallet_id) == [
        ("2026-09", 1, 40),
        ("2026-10", 2, 60),
        ("2026-11", 1, 48),
    ]
    assert run_audit() == []

    assert service.catch_up(behind=1, seqs=2) == []  # caught up: nothing is due


def test_the_checkpoint_moves_past_postings_that_are_not_payments(three_rates):
    """A wallet behind on postings that are not class payments (tokens credited to the
    teacher some other way) is moved to its head once, not found due on every pass."""
    teacher = three_rates
    wallet_id = wallet_id_of(teacher.id)
    service.catch_up(behind=1)
    expected = figures(earnings_of(teacher))
    for _ in range(3):
        fund(teacher.id, 5)
    assert head_of(wallet_id) == 7

    assert service.catch_up(behind=3) == [(wallet_id, 4)]
    assert checkpoint_of(wallet_id) == 7
    assert figures(earnings_of(teacher))[:3] == expected[:3]  # (not its balances)
    assert service.catch_up(behind=1) == []
    assert run_audit() == []


def test_a_pass_moves_the_most_behind_teachers_first_and_at_most_its_batch(ctx, clock):
    student = make_funded_user(500)
    teachers = [make_user("teacher") for _ in range(3)]
    for classes, teacher in zip((1, 3, 2), teachers, strict=True):
        taught(student, teacher, classes)
    wallets = [wallet_id_of(teacher.id) for teacher in teachers]

    assert service.catch_up(behind=1, wallets=2) == [(wallets[1], 0), (wallets[2], 0)]
    assert [checkpoint_of(w) for w in wallets] == [None, 3, 2]
    assert service.catch_up(behind=1, wallets=2) == [(wallets[0], 0)]
    assert [checkpoint_of(w) for w in wallets] == [1, 3, 2]
    # Students are not teachers: their wallets, however long, get no earnings checkpoint.
    student_wallet = wallet_id_of(student.id)
    assert head_of(student_wallet) > 3
    assert checkpoint_of(student_wallet) is None
    assert db.session.scalar(select(func.count()).select_from(EarningsCheckpoint)) == 3
    assert run_audit() == []


def test_flask_soma_earnings_catches_every_teacher_up(app, ctx, clock, monkeypatch):
    monkeypatch.setattr(service, "CHECKPOINT_AFTER", 3)
    student = make_funded_user(2000)
    teachers = [make_user("teacher") for _ in range(3)]
    for n, teacher in enumerate(teachers):
        taught(student, teacher, 3 + n)
    late = make_user("teacher")
    taught(student, late, 2)  # below the views' threshold: left for its view
    views = {teacher.id: figures(earnings_of(teacher)) for teacher in teachers}

    result = app.test_cli_runner().invoke(args=["soma", "earnings"])

    assert result.exit_code == 0, result.output
    assert "3 checkpoint move(s)" in result.output
    for teacher in teachers:
        wallet_id = wallet_id_of(teacher.id)
        assert checkpoint_of(wallet_id) == head_of(wallet_id)
        earnings = earnings_of(teacher)
        assert (figures(earnings), earnings.tail_payments) == (views[teacher.id], 0)
    assert checkpoint_of(wallet_id_of(late.id)) is None
    assert run_audit() == []


def test_a_sweep_pass_catches_a_teacher_up(app, ctx, clock, monkeypatch):
    monkeypatch.setattr(service, "CATCH_UP_BEHIND", 4)
    student = make_funded_user(5000)
    teacher = make_user("teacher")
    taught(student, teacher, 4)
    teacher_id, wallet_id = teacher.id, wallet_id_of(teacher.id)
    clock.now = NOW + timedelta(days=1)
    expected = figures(earnings_of(teacher))

    result = app.test_cli_runner().invoke(args=["soma", "sweep"])

    assert result.exit_code == 0, result.output
    assert checkpoint_of(wallet_id) == 4 == head_of(wallet_id)
    earnings = earnings_of(db.session.get(User, teacher_id))
    assert (figures(earnings), earnings.tail_payments) == (expected, 0)
    assert run_audit() == []


def test_a_pass_begins_no_move_past_its_time(three_rates):
    wallet_id = wallet_id_of(three_rates.id)
    assert service.catch_up(behind=1, seconds=0) == []
    assert checkpoint_of(wallet_id) is None
    assert service.catch_up(behind=1, seconds=None) == [(wallet_id, 0)]
    assert checkpoint_of(wallet_id) == 4


def test_a_failing_catch_up_does_not_stop_the_sweep(app, ctx, clock, monkeypatch, caplog):
    def broken(**_):
        raise OperationalError("SELECT", {}, Exception("the database went away"))

    monkeypatch.setattr(service, "catch_up", broken)
    result = app.test_cli_runner().invoke(args=["soma", "sweep"])
    assert result.exit_code == 0, result.output
    assert "sweep: 0 completed" in result.output
    assert "the earnings catch-up failed" in caplog.text
