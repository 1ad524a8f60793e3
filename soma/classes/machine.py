"""The class state machine (SPEC §3), as pure functions of a class's clock and `now`.

Nothing here reads the database or the real time: the service passes the
stored clock and the server's `now`, and writes back the `Move` it gets.

    scheduled -> in_progress <-> paused -> completed | ended_early | aborted
    scheduled -> cancelled
"""

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from soma.errors import SomaError
from soma.models.classes import FINAL_STATUSES, ClassEventKind, ClassStatus
from soma.money import when

# A teacher may start a class from this long before its scheduled start.
START_WINDOW = timedelta(minutes=10)


class Action(enum.StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    END_EARLY = "end_early"
    ABORT = "abort"
    CANCEL = "cancel"
    # The system's: the planned time is reached, or the pause lasted too long.
    COMPLETE = "complete"
    EXPIRE = "expire"


class MoneyStep(enum.StrEnum):
    """What the move asks of the ledger."""

    HOLD = "hold"  # hold the cost
    SETTLE = "settle"  # pay the charge to the teacher, return the rest
    RELEASE = "release"  # return the whole hold


class EndReason(enum.StrEnum):
    COMPLETED = "completed"
    ENDED_BY_TEACHER = "ended_by_teacher"
    PAUSED_TOO_LONG = "paused_too_long"
    ABORTED = "aborted"
    CANCELLED = "cancelled"


END_REASON_LABELS = {
    EndReason.COMPLETED: "The class ran its full time.",
    EndReason.ENDED_BY_TEACHER: "The teacher ended the class early.",
    EndReason.PAUSED_TOO_LONG: "The class was paused too long and ended early.",
    EndReason.ABORTED: "The teacher aborted the class; the student paid nothing.",
    EndReason.CANCELLED: "The class was cancelled before it started.",
}


class InvalidMove(SomaError):
    """The action does not apply to the class as it is now; nothing changed."""

    status = 409
    title = "Not possible now"


@dataclass(frozen=True)
class ClassClock:
    """What the machine needs of a class."""

    status: ClassStatus
    scheduled_start: datetime
    planned_seconds: int
    cost: int
    active_seconds: int = 0
    running_since: datetime | None = None
    paused_at: datetime | None = None


@dataclass(frozen=True)
class Move:
    """The class after an action, the event to record, and what the ledger must do."""

    action: Action
    status: ClassStatus
    event: ClassEventKind
    at: datetime  # when it happened (for the system's moves, when it fell due)
    active_seconds: int
    running_since: datetime | None = None
    due_at: datetime | None = None
    paused_at: datetime | None = None
    end_reason: EndReason | None = None
    ledger: MoneyStep | None = None
    charge: int | None = None  # tokens paid to the teacher, once final

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


def active_at(clock: ClassClock, now: datetime) -> int:
    """Whole seconds of active time at `now`, never past the planned time."""
    return min(_uncapped_active(clock, now), clock.planned_seconds)


def _uncapped_active(clock: ClassClock, now: datetime) -> int:
    if clock.status == ClassStatus.IN_PROGRESS and clock.running_since is not None:
        running = max(0, int((now - clock.running_since).total_seconds()))
        return clock.active_seconds + running
    return clock.active_seconds


def pro_rata(cost: int, active_seconds: int, planned_seconds: int) -> int:
    """ceil(cost x active / planned), in integers, between 0 and the cost."""
    active = max(0, min(active_seconds, planned_seconds))
    return -(-cost * active // planned_seconds)


def due(clock: ClassClock, now: datetime, pause_limit: timedelta) -> Move | None:
    """The system's move if the class has run its time or its pause has expired, else None."""
    if (
        clock.status == ClassStatus.IN_PROGRESS
        and _uncapped_active(clock, now) >= clock.planned_seconds
    ):
        remaining = clock.planned_seconds - clock.active_seconds
        return Move(
            Action.COMPLETE,
            ClassStatus.COMPLETED,
            ClassEventKind.COMPLETE,
            at=min(now, clock.running_since + timedelta(seconds=remaining)),
            active_seconds=clock.planned_seconds,
            end_reason=EndReason.COMPLETED,
            ledger=MoneyStep.SETTLE,
            charge=clock.cost,
        )
    if clock.status == ClassStatus.PAUSED and now - clock.paused_at >= pause_limit:
        return _end_early(
            clock, Action.EXPIRE, clock.paused_at + pause_limit, EndReason.PAUSED_TOO_LONG
        )
    return None


def decide(clock: ClassClock, action: Action, now: datetime, pause_limit: timedelta) -> Move:
    """The move `action` makes at `now`; InvalidMove if it does not apply.

    A class that has fallen due (see `due`) must be settled first: every action
    but the system's then finds it over.
    """
    if action in (Action.COMPLETE, Action.EXPIRE):
        move = due(clock, now, pause_limit)
        if move is None or move.action != action:
            raise InvalidMove("This class is not due to end yet.")
        return move
    if due(clock, now, pause_limit) is not None:
        raise InvalidMove("This class has just ended.")
    handler = _HANDLERS[action]
    return handler(clock, now)


def _refuse(clock: ClassClock, action: Action) -> InvalidMove:
    status = clock.status
    if status in FINAL_STATUSES:
        word = "cancelled" if status == ClassStatus.CANCELLED else "over"
        return InvalidMove(f"This class is {word}; it cannot be {_PAST[action]} now.")
    if status == ClassStatus.SCHEDULED:
        return InvalidMove(f"This class has not started yet; it cannot be {_PAST[action]}.")
    if action == Action.START:
        return InvalidMove("This class has already started.")
    if action == Action.CANCEL:
        return InvalidMove("This class has started; end it or abort it instead of cancelling.")
    if status == ClassStatus.PAUSED:
        return InvalidMove("This class is already paused.")
    return InvalidMove("This class is already running.")


_PAST = {
    Action.START: "started",
    Action.PAUSE: "paused",
    Action.RESUME: "resumed",
    Action.END_EARLY: "ended",
    Action.ABORT: "aborted",
    Action.CANCEL: "cancelled",
}


def _start(clock: ClassClock, now: datetime) -> Move:
    if clock.status != ClassStatus.SCHEDULED:
        raise _refuse(clock, Action.START)
    opens = clock.scheduled_start - START_WINDOW
    if now < opens:
        raise InvalidMove(
            f"This class can be started from {when(opens)}, 10 minutes before its scheduled start."
        )
    closes = clock.scheduled_start + timedelta(seconds=clock.planned_seconds)
    if now >= closes:
        raise InvalidMove(
            f"This class was booked to end by {when(closes)}; it can no longer "
            "be started. Cancel it, and the student can book another."
        )
    return Move(
        Action.START,
        ClassStatus.IN_PROGRESS,
        ClassEventKind.START,
        at=now,
        active_seconds=0,
        running_since=now,
        due_at=now + timedelta(seconds=clock.planned_seconds),
        ledger=MoneyStep.HOLD,
    )


def _pause(clock: ClassClock, now: datetime) -> Move:
    if clock.status != ClassStatus.IN_PROGRESS:
        raise _refuse(clock, Action.PAUSE)
    return Move(
        Action.PAUSE,
        ClassStatus.PAUSED,
        ClassEventKind.PAUSE,
        at=now,
        active_seconds=active_at(clock, now),
        paused_at=now,
    )


def _resume(clock: ClassClock, now: datetime) -> Move:
    if clock.status != ClassStatus.PAUSED:
        raise _refuse(clock, Action.RESUME)
    remaining = clock.planned_seconds - clock.active_seconds
    return Move(
        Action.RESUME,
        ClassStatus.IN_PROGRESS,
        ClassEventKind.RESUME,
        at=now,
        active_seconds=clock.active_seconds,
        running_since=now,
        due_at=now + timedelta(seconds=remaining),
    )


def _end_early(clock: ClassClock, action: Action, at: datetime, reason: EndReason) -> Move:
    active = active_at(clock, at)
    charge = pro_rata(clock.cost, active, clock.planned_seconds)
    return Move(
        action,
        ClassStatus.ENDED_EARLY,
        ClassEventKind.END_EARLY,
        at=at,
        active_seconds=active,
        end_reason=reason,
        ledger=MoneyStep.SETTLE if charge else MoneyStep.RELEASE,
        charge=charge,
    )


def _end_by_teacher(clock: ClassClock, now: datetime) -> Move:
    if clock.status not in (ClassStatus.IN_PROGRESS, ClassStatus.PAUSED):
        raise _refuse(clock, Action.END_EARLY)
    return _end_early(clock, Action.END_EARLY, now, EndReason.ENDED_BY_TEACHER)


def _abort(clock: ClassClock, now: datetime) -> Move:
    if clock.status not in (ClassStatus.IN_PROGRESS, ClassStatus.PAUSED):
        raise _refuse(clock, Action.ABORT)
    return Move(
        Action.ABORT,
        ClassStatus.ABORTED,
        ClassEventKind.ABORT,
        at=now,
        active_seconds=active_at(clock, now),
        end_reason=EndReason.ABORTED,
        ledger=MoneyStep.RELEASE,
        charge=0,
    )


def _cancel(clock: ClassClock, now: datetime) -> Move:
    if clock.status != ClassStatus.SCHEDULED:
        raise _refuse(clock, Action.CANCEL)
    return Move(
        Action.CANCEL,
        ClassStatus.CANCELLED,
        ClassEventKind.CANCEL,
        at=now,
        active_seconds=0,
        end_reason=EndReason.CANCELLED,
        charge=0,
    )


_HANDLERS = {
    Action.START: _start,
    Action.PAUSE: _pause,
    Action.RESUME: _resume,
    Action.END_EARLY: _end_by_teacher,
    Action.ABORT: _abort,
    Action.CANCEL: _cancel,
}
