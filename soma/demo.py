"""The demo's past year: the demo teacher's classes with the demo student, so that the
earnings dashboard and its chart have something to show on a fresh `make run`.

Every class is booked, started and finished by the class service, and every token moves
through the ledger, at the class's real past times: while the year is replayed, the app's
clock (SOMA_CLOCK, which the services read; see soma.clock) is set to each moment in
turn, and put back afterwards. The student's tokens for each month's classes come from
the promotions account the day the month's first class starts (a credit of the ledger,
like the welcome bonus; no money changed hands, so no purchase is made up).

The schedule is fixed by the hour the demo teacher's account was made: the year before
it, the same every run. A rerun finds each class by its booking key and adds nothing; a
class an interrupted run left half-done is taken on from where it stopped. Run it before
the sweeper starts (`make run` does): the sweeper would settle a replayed class that is
in progress at the real time instead.
"""

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import select, update

from soma import clock, ledger
from soma.classes import service as class_service
from soma.classes.machine import Action
from soma.extensions import db
from soma.models import ClassSession, ClassStatus, EntryKind, PlatformAccount, User
from soma.models.classes import HOLDING_STATUSES
from soma.models.outbox import OutboxMessage as Outbox
from soma.notifications.service import mark_all_read

YEAR_DAYS = 365
CLASS_HOURS = (16, 18)  # UTC, after school in Nairobi
DURATIONS = (30, 45, 60, 60, 90)
TOPICS = ("Fractions", "Algebra", "Essay writing", "Kiswahili", "Chemistry", "Geometry")
# The schedule's own randomness, fixed: the same year every run.
SEED = "soma-demo-year"


@dataclass(frozen=True)
class PlannedClass:
    key: str  # the booking key: how a rerun finds it
    title: str
    start: datetime
    minutes: int
    ending: str  # "completed", "ended_early" (two thirds in) or "aborted" (a no-show)

    @property
    def booked_at(self) -> datetime:
        return self.start - timedelta(days=1)

    @property
    def ends_at(self) -> datetime:
        if self.ending == "ended_early":
            return self.start + timedelta(minutes=self.minutes * 2 // 3)
        if self.ending == "aborted":
            return self.start + timedelta(minutes=10)
        return self.start + timedelta(minutes=self.minutes)


@dataclass(frozen=True)
class ReplayedYear:
    classes: int  # classes made or finished by this run
    credited: int  # tokens credited to the student by this run


def plan_year(teacher: User) -> list[PlannedClass]:
    """The demo teacher's classes in the year before their account was made, oldest first.

    Weekdays only, busier as the year goes on, with a quiet August; about one class in
    ten ended early and one in thirty aborted.
    """
    anchor = teacher.created_at.replace(minute=0, second=0, microsecond=0)
    first_day = (anchor - timedelta(days=YEAR_DAYS)).date()
    rng = random.Random(SEED)
    planned = []
    for offset in range(YEAR_DAYS):
        day = first_day + timedelta(days=offset)
        if day >= anchor.date():
            break
        busy = 0.12 + 0.3 * offset / YEAR_DAYS  # the teacher's reputation grows
        if day.month == 8:
            busy /= 3
        for hour in CLASS_HOURS:
            draw = rng.random()
            minutes = rng.choice(DURATIONS)
            title = rng.choice(TOPICS)
            ending = rng.choices(("completed", "ended_early", "aborted"), (87, 10, 3))[0]
            if day.weekday() >= 5 or draw >= busy:
                continue
            start = anchor.replace(year=day.year, month=day.month, day=day.day, hour=hour)
            key = f"demo:year:{teacher.id}:{start:%Y%m%d%H}"
            planned.append(PlannedClass(key, title, start, minutes, ending))
    return planned


class _ReplayClock:
    """The app's clock during the replay: whatever moment the replay is at."""

    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@contextmanager
def _replaying(start: datetime) -> Iterator[_ReplayClock]:
    """Set the app's clock to a moment the caller moves; put the previous clock back after."""
    previous = current_app.config.get("SOMA_CLOCK")
    replay = _ReplayClock(start)
    current_app.config["SOMA_CLOCK"] = replay
    try:
        yield replay
    finally:
        current_app.config["SOMA_CLOCK"] = previous


def replay_year(student: User, teacher: User) -> ReplayedYear:
    """Make the teacher's planned year of classes with the student that are not made yet."""
    planned = plan_year(teacher)
    if not planned:
        return ReplayedYear(0, 0)
    existing = {
        session.booking_key: session
        for session in db.session.scalars(
            select(ClassSession).where(ClassSession.booking_key.in_([p.key for p in planned]))
        )
    }
    todo = [p for p in planned if p.key not in existing or not existing[p.key].is_final]
    if not todo:
        return ReplayedYear(0, 0)
    by_month: dict[str, list[PlannedClass]] = {}
    for plan in planned:
        by_month.setdefault(f"{plan.start:%Y-%m}", []).append(plan)
    credited = 0
    with _replaying(todo[0].booked_at) as replay:
        for plan in todo:
            month = by_month.pop(f"{plan.start:%Y-%m}", None)
            if month is not None:  # the first class of its month this run
                credited += _fund_month(student, month)
            _replay_class(replay, student, teacher, plan, existing.get(plan.key))
    for user in (student, teacher):
        # The year is past: its notifications were read long ago, and their mail went
        # out back then (it is not sent again now).
        mark_all_read(user.id, up_to_id=2**63 - 1)
    db.session.execute(
        update(Outbox)
        .where(
            Outbox.user_id.in_([student.id, teacher.id]),
            Outbox.key.startswith("notification:"),
            Outbox.sent_at.is_(None),
        )
        .values(sent_at=clock.now())
    )
    db.session.commit()
    return ReplayedYear(len(todo), credited)


def _fund_month(student: User, month: list[PlannedClass]) -> int:
    """Credit the student, from promotions, what all the month's planned classes will hold,
    an hour before the first starts; once a month (by its key). Returns the tokens this
    call credited."""
    first = month[0]
    tokens = sum(ledger.class_cost(p.minutes, p.booked_at) for p in month)
    with ledger.atomic():
        entry = ledger.credit(
            student.id,
            tokens,
            key=f"demo:year:credit:{student.id}:{first.start:%Y-%m}",
            kind=EntryKind.BONUS,
            source=PlatformAccount.PROMOTIONS,
            memo=f"Demo tokens for {first.start:%B %Y}'s classes",
            now=first.start - timedelta(hours=1),
        )
    return 0 if entry.replayed else tokens


def _replay_class(
    replay: _ReplayClock,
    student: User,
    teacher: User,
    plan: PlannedClass,
    session: ClassSession | None,
) -> None:
    """Book, start and finish the class as planned, each step at its time; a step already
    taken (by an interrupted run) is not taken again."""
    if session is None:
        replay.now = plan.booked_at
        session = class_service.book(
            student, teacher.id, plan.title, plan.start, plan.minutes, plan.key, now=replay.now
        )
    if session.status == ClassStatus.SCHEDULED:
        replay.now = plan.start
        session = class_service.act(session, Action.START, teacher, now=replay.now)
    if session.status in HOLDING_STATUSES:
        replay.now = plan.ends_at
        if plan.ending == "completed":
            class_service.settle_if_due(session, now=replay.now)
        elif plan.ending == "ended_early":
            class_service.act(session, Action.END_EARLY, teacher, now=replay.now)
        else:
            class_service.act(session, Action.ABORT, teacher, now=replay.now)
