"""The class state machine (SPEC §3) as pure functions of a clock and an injected `now`."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from soma.classes.machine import (
    Action,
    ClassClock,
    EndReason,
    InvalidMove,
    MoneyStep,
    active_at,
    decide,
    due,
    pro_rata,
)
from soma.models.classes import ClassEventKind, ClassStatus

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
LIMIT = timedelta(minutes=30)


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def scheduled(minutes: int = 60, cost: int = 10) -> ClassClock:
    return ClassClock(
        ClassStatus.SCHEDULED, scheduled_start=T0, planned_seconds=minutes * 60, cost=cost
    )


def apply(clock: ClassClock, action: Action, now: datetime) -> ClassClock:
    move = decide(clock, action, now, LIMIT)
    return replace(
        clock,
        status=move.status,
        active_seconds=move.active_seconds,
        running_since=move.running_since,
        paused_at=move.paused_at,
    )


def test_a_teacher_can_start_from_ten_minutes_before_the_scheduled_start():
    with pytest.raises(InvalidMove, match="from 24 Nov 2026, 09:50 UTC"):
        decide(scheduled(), Action.START, at(minutes=-10, seconds=-1), LIMIT)
    move = decide(scheduled(), Action.START, at(minutes=-10), LIMIT)
    assert (move.status, move.event, move.ledger) == (
        ClassStatus.IN_PROGRESS,
        ClassEventKind.START,
        MoneyStep.HOLD,
    )
    assert move.running_since == at(minutes=-10)
    assert move.due_at == at(minutes=50)
    # Late is fine: the clock starts when the teacher starts.
    late = decide(scheduled(), Action.START, at(minutes=25), LIMIT)
    assert late.due_at == at(minutes=85)


def test_paused_time_does_not_count_and_resume_moves_the_due_time():
    clock = apply(scheduled(), Action.START, at(0))
    assert active_at(clock, at(minutes=20)) == 1200
    clock = apply(clock, Action.PAUSE, at(minutes=20))
    assert clock.status == ClassStatus.PAUSED
    assert active_at(clock, at(minutes=29)) == 1200  # frozen while paused
    move = decide(clock, Action.RESUME, at(minutes=29), LIMIT)
    assert (move.status, move.active_seconds) == (ClassStatus.IN_PROGRESS, 1200)
    assert move.due_at == at(minutes=29 + 40)
    clock = apply(clock, Action.RESUME, at(minutes=29))
    assert active_at(clock, at(minutes=30, seconds=30)) == 1200 + 90
    assert due(clock, at(minutes=68, seconds=59), LIMIT) is None


def test_the_class_falls_due_when_active_time_reaches_the_planned_time():
    clock = apply(scheduled(minutes=30, cost=5), Action.START, at(0))
    assert due(clock, at(minutes=29, seconds=59), LIMIT) is None
    move = due(clock, at(minutes=31), LIMIT)  # found a minute late
    assert (move.status, move.end_reason, move.ledger) == (
        ClassStatus.COMPLETED,
        EndReason.COMPLETED,
        MoneyStep.SETTLE,
    )
    assert move.charge == 5
    assert move.active_seconds == 1800
    assert move.at == at(minutes=30)  # when it fell due, not when it was found
    assert active_at(clock, at(minutes=45)) == 1800  # never past the planned time


def test_a_due_class_is_over_for_every_action_but_the_systems():
    clock = apply(scheduled(), Action.START, at(0))
    for action in (Action.PAUSE, Action.END_EARLY, Action.ABORT):
        with pytest.raises(InvalidMove, match="just ended"):
            decide(clock, action, at(minutes=61), LIMIT)
    assert decide(clock, Action.COMPLETE, at(minutes=61), LIMIT).status == ClassStatus.COMPLETED
    with pytest.raises(InvalidMove):
        decide(clock, Action.COMPLETE, at(minutes=59), LIMIT)


@pytest.mark.parametrize(
    ("cost", "planned_minutes", "active_seconds", "charge"),
    [
        (10, 60, 0, 0),
        (10, 60, 1, 1),  # any active second is charged: ceil
        (10, 60, 360, 1),
        (10, 60, 361, 2),
        (10, 60, 1800, 5),
        (10, 60, 3599, 10),
        (10, 60, 3600, 10),
        (5, 30, 900, 3),  # ceil(2.5)
        (8, 45, 1350, 4),
        (8, 45, 1351, 5),
        (15, 90, 2700, 8),  # ceil(7.5)
        (20, 120, 60, 1),
        (20, 120, 7199, 20),
        (20, 120, 3600, 10),
    ],
)
def test_pro_rata_charge_is_the_ceiling_of_cost_times_active_over_planned(
    cost, planned_minutes, active_seconds, charge
):
    assert pro_rata(cost, active_seconds, planned_minutes * 60) == charge


@pytest.mark.parametrize(
    ("minutes_active", "charge", "ledger"),
    [(0, 0, MoneyStep.RELEASE), (15, 3, MoneyStep.SETTLE), (44, 8, MoneyStep.SETTLE)],
)
def test_ending_early_charges_for_active_time_and_returns_the_rest(minutes_active, charge, ledger):
    clock = apply(scheduled(minutes=45, cost=8), Action.START, at(0))
    move = decide(clock, Action.END_EARLY, at(minutes=minutes_active), LIMIT)
    assert (move.status, move.end_reason) == (ClassStatus.ENDED_EARLY, EndReason.ENDED_BY_TEACHER)
    assert (move.charge, move.ledger) == (charge, ledger)


def test_a_class_paused_past_the_limit_ends_early_at_the_limit():
    clock = apply(scheduled(), Action.START, at(0))
    clock = apply(clock, Action.PAUSE, at(minutes=12))
    assert due(clock, at(minutes=41, seconds=59), LIMIT) is None
    move = due(clock, at(minutes=50), LIMIT)
    assert (move.action, move.status, move.end_reason) == (
        Action.EXPIRE,
        ClassStatus.ENDED_EARLY,
        EndReason.PAUSED_TOO_LONG,
    )
    assert move.at == at(minutes=42)
    assert (move.active_seconds, move.charge) == (720, 2)
    with pytest.raises(InvalidMove, match="just ended"):
        decide(clock, Action.RESUME, at(minutes=43), LIMIT)
    # A shorter limit, from the settings, ends it sooner.
    assert due(clock, at(minutes=17), timedelta(minutes=5)).at == at(minutes=17)


def test_abort_returns_everything_and_cancel_is_only_for_a_class_not_started():
    clock = apply(scheduled(), Action.START, at(0))
    move = decide(clock, Action.ABORT, at(minutes=5), LIMIT)
    assert (move.status, move.charge, move.ledger) == (ClassStatus.ABORTED, 0, MoneyStep.RELEASE)
    with pytest.raises(InvalidMove, match="end it or abort it"):
        decide(clock, Action.CANCEL, at(minutes=5), LIMIT)
    cancelled = decide(scheduled(), Action.CANCEL, at(minutes=-60), LIMIT)
    assert (cancelled.status, cancelled.ledger, cancelled.charge) == (
        ClassStatus.CANCELLED,
        None,
        0,
    )


@pytest.mark.parametrize(
    ("status", "action", "message"),
    [
        (ClassStatus.PAUSED, Action.PAUSE, "already paused"),
        (ClassStatus.IN_PROGRESS, Action.RESUME, "already running"),
        (ClassStatus.IN_PROGRESS, Action.START, "already started"),
        (ClassStatus.SCHEDULED, Action.PAUSE, "not started yet"),
        (ClassStatus.SCHEDULED, Action.END_EARLY, "not started yet"),
        (ClassStatus.COMPLETED, Action.RESUME, "over; it cannot be resumed"),
        (ClassStatus.ENDED_EARLY, Action.START, "over; it cannot be started"),
        (ClassStatus.CANCELLED, Action.START, "cancelled; it cannot be started"),
        (ClassStatus.ABORTED, Action.CANCEL, "over; it cannot be cancelled"),
    ],
)
def test_invalid_moves_are_refused_with_a_clear_message(status, action, message):
    clock = ClassClock(
        status, T0, 3600, 10, active_seconds=60, running_since=at(0), paused_at=at(1)
    )
    with pytest.raises(InvalidMove, match=message) as refused:
        decide(clock, action, at(minutes=2), LIMIT)
    assert refused.value.status == 409
