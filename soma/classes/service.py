"""Booking classes, moving them through their states, and settling them through the ledger.

Every change of a class is one transaction: a conditional UPDATE of the class
row on the version it was read at (a compare-and-set: of two racing requests
exactly one matches), the event, and the ledger's entry for it (the hold at
start; the settle or release at the end, whose idempotency key is the class's
own, so a class closes once even were the row check bypassed). The class row
is always written before the wallets, the same order everywhere.

A class falls due when its active time reaches the planned time, or when it
stays paused past the limit. Whoever looks first settles it: the tracker's
poll, a teacher's action, or the sweeper (`sweep`), which finds due classes
through the indexed `due_at` and `paused_at`.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from psycopg.errors import DeadlockDetected
from sqlalchemy import and_, bindparam, func, or_, select, true, update
from sqlalchemy.exc import IntegrityError, OperationalError

from soma import clock, ledger, timezones, transitions
from soma.admin import actions
from soma.auth import freeze
from soma.classes.machine import Action, ClassClock, InvalidMove, MoneyStep, Move, decide, due
from soma.errors import FieldRefusal, KeyReused, SomaError
from soma.extensions import db
from soma.fastread import read_one
from soma.ledger.pricing import class_cost, get_token_pricing, tokens_to_cents
from soma.models import EntryKind, JournalEntry, PricingUserType, Role, User, Wallet
from soma.models.classes import (
    DURATIONS,
    FINAL_STATUSES,
    HOLDING_STATUSES,
    OCCUPYING_STATUSES,
    ClassEvent,
    ClassSession,
    ClassStatus,
)
from soma.money import tokens, when
from soma.notifications.service import notify

# Tries of a compare-and-set before giving up: each miss means another request
# changed the class first, and the next try decides again on what it did.
ATTEMPTS = transitions.ATTEMPTS

TEACHER_ACTIONS = frozenset(
    {Action.START, Action.PAUSE, Action.RESUME, Action.END_EARLY, Action.ABORT}
)


# How far ahead a class may be booked (pricing, a teacher's plans and the arithmetic of its
# end all stay within reach).
BOOKING_HORIZON = timedelta(days=2 * 366)


class BookingError(FieldRefusal):
    """A class that cannot be booked as asked."""

    title = "Cannot book that class"


class ClassBusy(SomaError):
    title = "Try again"

    def __init__(self):
        super().__init__("This class changed several times at once. Reload the page and try again.")


def class_path(class_id: int) -> str:
    """The tracker's path, for links written outside a request (the sweeper's notifications)."""
    return f"/classes/{class_id}"


def pause_limit() -> timedelta:
    return timedelta(minutes=current_app.config["CLASS_PAUSE_LIMIT_MINUTES"])


def clock_of(session: "ClassSession | ClassView") -> ClassClock:
    return ClassClock(
        status=ClassStatus(session.status),
        scheduled_start=session.scheduled_start,
        planned_seconds=session.planned_seconds,
        cost=session.cost_tokens,
        active_seconds=session.active_seconds,
        running_since=session.running_since,
        paused_at=session.paused_at,
    )


# Reading ---------------------------------------------------------------------------------


def visible_to(viewer: User):
    """The WHERE clause of the classes `viewer` may see: their own, or all for an admin."""
    if viewer.role == Role.ADMIN:
        return true()
    return or_(ClassSession.student_id == viewer.id, ClassSession.teacher_id == viewer.id)


def class_for(viewer: User, class_id: int) -> ClassSession | None:
    """The class, read fresh, if `viewer` may see it; None otherwise (the caller answers 404)."""
    return db.session.scalars(
        select(ClassSession)
        .where(ClassSession.id == class_id, visible_to(viewer))
        .execution_options(populate_existing=True)
    ).first()


@dataclass(frozen=True)
class ClassView:
    """A class's row as the timer reads it: plain values, no ORM instance to build."""

    id: int
    student_id: int
    teacher_id: int
    status: str
    scheduled_start: datetime
    duration_minutes: int
    cost_tokens: int
    active_seconds: int
    running_since: datetime | None
    paused_at: datetime | None
    charged_tokens: int | None
    end_reason: str | None
    meeting_url: str | None

    planned_seconds = ClassSession.planned_seconds
    status_label = ClassSession.status_label
    is_final = ClassSession.is_final


_VIEW_COLUMNS = [getattr(ClassSession, name) for name in ClassView.__dataclass_fields__]
# The class, if the viewer's row exists and they are its student, its teacher or an
# admin; then the viewer's session version, for the timer to check the session with.
_VIEW = (
    select(*_VIEW_COLUMNS, User.session_version)
    .join(User, User.id == bindparam("viewer_id"))
    .where(
        ClassSession.id == bindparam("class_id"),
        or_(
            User.role == Role.ADMIN.value,
            ClassSession.student_id == User.id,
            ClassSession.teacher_id == User.id,
        ),
    )
)


def view_for(viewer_id: int, class_id: int) -> tuple[ClassView, int] | None:
    """`class_for` for the timer's hot path: one prebuilt query that also reads the
    viewer's row (the timer is given only the session's user id), plain values.

    Returns the class and the viewer's current session version, or None.
    """
    row = read_one(_VIEW, {"class_id": class_id, "viewer_id": viewer_id})
    if row is None:
        return None
    *values, session_version = row
    return ClassView(*values), session_version


@dataclass(frozen=True)
class Dashboard:
    in_progress: list[ClassSession]
    upcoming: list[ClassSession]
    past: list[ClassSession]


def dashboard_for(user: User, past_limit: int = 10) -> Dashboard:
    """A user's classes under way, those not started yet (soonest first) and the latest
    ones that are over: a class in progress or paused is never listed as upcoming."""
    mine = or_(ClassSession.student_id == user.id, ClassSession.teacher_id == user.id)
    final = ClassSession.status.in_([s.value for s in FINAL_STATUSES])
    not_final = db.session.scalars(
        select(ClassSession).where(mine, ~final).order_by(ClassSession.scheduled_start)
    ).all()
    past = db.session.scalars(
        select(ClassSession)
        .where(mine, final)
        .order_by(ClassSession.scheduled_start.desc(), ClassSession.id.desc())
        .limit(past_limit)
    ).all()
    live = [c for c in not_final if c.status in HOLDING_STATUSES]
    upcoming = [c for c in not_final if c.status not in HOLDING_STATUSES]
    return Dashboard(live, upcoming, list(past))


def teachers() -> list[User]:
    return list(
        db.session.scalars(
            select(User).where(User.role == Role.TEACHER).order_by(User.display_name, User.id)
        )
    )


def events_of(class_id: int) -> list[ClassEvent]:
    return list(
        db.session.scalars(
            select(ClassEvent).where(ClassEvent.class_id == class_id).order_by(ClassEvent.id)
        )
    )


# Booking ---------------------------------------------------------------------------------


def book(
    student: User,
    teacher_id: int,
    title: str,
    start: datetime,
    duration_minutes: int,
    key: str,
    now: datetime | None = None,
) -> ClassSession:
    """Book a class; a repeated `key` returns the first booking. Raises BookingError.

    Refused when the teacher or the student already has a class (not final) whose
    booked time overlaps this one, and when the student's available tokens do not
    cover this class and the classes they booked that have not started yet. On
    PostgreSQL the exclusion constraints refuse an overlap that a concurrent
    booking made after the check: the loser gets the same message, and nothing
    of it is written.

    Two such bookings can also deadlock: an exclusion constraint is checked after the
    row goes in, so each can find the other's row and wait for its transaction.
    PostgreSQL then refuses one of them; that one is booked again, and its checks (or
    the constraint, waiting for the other to end) now see the other booking. With
    three or more at once it may be refused again: after ATTEMPTS refusals it gives up
    with a BookingError, nothing of it written.
    """
    for _ in range(ATTEMPTS):
        try:
            return _book(student, teacher_id, title, start, duration_minutes, key, now)
        except OperationalError as error:
            if not isinstance(error.orig, DeadlockDetected):
                raise
            db.session.rollback()
    raise BookingError(
        "Other bookings of this time came in at the same moment. Try again.", "start"
    )


def _book(student, teacher_id, title, start, duration_minutes, key, now) -> ClassSession:
    now = now or clock.now()
    existing = _booked_with(key)
    if existing is not None:
        return _repeat(existing, student, teacher_id, title, start, duration_minutes)
    if student.role != Role.STUDENT:
        raise BookingError("Only students book classes.")
    freeze.refuse_if_frozen(student.id, "book a class")
    teacher = db.session.get(User, teacher_id) if teacher_id else None
    if teacher is None or teacher.role != Role.TEACHER:
        raise BookingError("Choose one of our teachers.", "teacher")
    # (Unlocked: a class booked as its teacher is frozen moves nothing; it cannot start.)
    freeze.refuse_booking_with_frozen_teacher(teacher)
    if duration_minutes not in DURATIONS:
        allowed = ", ".join(map(str, DURATIONS))
        raise BookingError(f"A class lasts {allowed} minutes.", "duration")
    if start.tzinfo is None:
        raise BookingError("Give the start time with its time zone.", "start")
    if start <= now:
        raise BookingError("Choose a start time in the future.", "start")
    if start > now + BOOKING_HORIZON:
        raise BookingError("Book a class at most two years ahead.", "start")
    title = _title(title, teacher)
    end = start + timedelta(minutes=duration_minutes)
    cost = class_cost(duration_minutes, now)
    _lock_bookings_of(student.id)
    try:
        # Under the student's row lock, which a freeze's UPDATE waits for.
        freeze.refuse_if_frozen(student.id, "book a class", lock=True)
        existing = _booked_with(key)
        if existing is None:
            _refuse_overlap(student, teacher, start, end)
            _refuse_unaffordable(student.id, cost, now)
    except (BookingError, freeze.AccountFrozen):
        db.session.rollback()  # let go of the lock taken above
        raise
    if existing is not None:  # a double submit's twin, booked while this one waited
        db.session.rollback()
        return _repeat(existing, student, teacher_id, title, start, duration_minutes)
    session = ClassSession(
        booking_key=key,
        student_id=student.id,
        teacher_id=teacher.id,
        title=title,
        scheduled_start=start,
        scheduled_end=end,
        duration_minutes=duration_minutes,
        cost_tokens=cost,
        created_at=now,
    )
    db.session.add(session)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        existing = _booked_with(key)
        if existing is not None:  # a double submit's twin was first
            return _repeat(existing, student, teacher_id, title, start, duration_minutes)
        _refuse_overlap(student, teacher, start, end)  # a concurrent booking took the time
        raise BookingError(
            "This time was just taken by another booking. Choose another time.", "start"
        ) from None
    notify(
        teacher.id,
        "class_booked",
        f"{student.display_name} booked “{title}” for {when(start, timezones.zone_of(teacher))}.",
        link=class_path(session.id),
    )
    db.session.commit()
    return session


def _booked_with(key: str) -> ClassSession | None:
    return db.session.scalars(select(ClassSession).where(ClassSession.booking_key == key)).first()


def _repeat(
    existing: ClassSession,
    student: User,
    teacher_id: int,
    title: str,
    start: datetime,
    duration_minutes: int,
) -> ClassSession:
    """The first booking made with a key, if this is the same student asking the same."""
    if existing.student_id != student.id:
        raise BookingError("This booking form was already used. Reload the page.")
    if _booked(existing) != _booking(teacher_id, title, start, duration_minutes):
        raise KeyReused(
            f"This booking form was already used for another class (#{existing.id}). "
            "Reload the booking page to book a new one."
        )
    return existing


def _lock_bookings_of(student_id: int) -> None:
    """Make the checks that follow and the insert one step, as far as bookings go.

    PostgreSQL: one student's bookings take turns on their row (FOR NO KEY UPDATE, which
    foreign keys to it do not wait for), so two at once cannot both count the same tokens
    as free; bookings of one teacher's time by two students are the exclusion
    constraint's to refuse. SQLite has no row locks and no exclusion constraint: a write
    that changes nothing takes its single write lock until the commit, so every booking
    reads what the ones before it wrote, and none writes in between.
    """
    if db.session.get_bind().dialect.name == "sqlite":
        db.session.execute(
            update(User).where(User.id == student_id).values(id=User.id),
            execution_options={"synchronize_session": False},
        )
        return
    db.session.execute(select(User.id).where(User.id == student_id).with_for_update(key_share=True))


def overlapping(person, person_id: int, start: datetime, end: datetime) -> ClassSession | None:
    """The first class not final of `person` (a ClassSession column: teacher_id or
    student_id) whose booked time overlaps [start, end)."""
    return db.session.scalars(
        select(ClassSession)
        .where(
            person == person_id,
            ClassSession.status.in_([status.value for status in OCCUPYING_STATUSES]),
            ClassSession.scheduled_start < end,
            ClassSession.scheduled_end > start,
        )
        .order_by(ClassSession.scheduled_start)
        .limit(1)
    ).first()


def _refuse_overlap(student: User, teacher: User, start: datetime, end: datetime) -> None:
    taken = overlapping(ClassSession.teacher_id, teacher.id, start, end)
    if taken is not None:
        raise BookingError(
            f"{teacher.display_name} is already booked {_span(taken, student)}. "
            "Choose another time.",
            "start",
        )
    taken = overlapping(ClassSession.student_id, student.id, start, end)
    if taken is not None:
        raise BookingError(
            f"You already have a class booked {_span(taken, student)} (“{taken.title}”). "
            "Choose another time.",
            "start",
        )


def _span(session: ClassSession, reader: User) -> str:
    """When `session` runs, in the zone of `reader` (who is told it)."""
    zone = timezones.zone_of(reader)
    start = timezones.local(session.scheduled_start, zone)
    end = timezones.local(session.scheduled_end, zone)
    # The clocks may change during the class: then each end names its own abbreviation.
    first = f"{start:%H:%M}" if start.tzname() == end.tzname() else f"{start:%H:%M %Z}"
    return f"on {start:%d %b %Y} from {first} to {end:%H:%M %Z}"


@dataclass(frozen=True)
class Budget:
    """What a student can still spend on new bookings."""

    available: int  # the wallet's available tokens
    promised: int  # the costs of their booked classes that have not started yet
    promised_classes: int

    @property
    def free(self) -> int:
        return max(0, self.available - self.promised)


def budget_of(student_id: int, now: datetime | None = None) -> Budget:
    """The student's available tokens, and what their booked classes will hold when they
    start: those scheduled whose booked time has not ended (a class past its booked end
    can no longer start, so it will hold nothing)."""
    now = now or clock.now()
    available, _ = wallet_balances(student_id)
    count, promised = db.session.execute(
        select(func.count(), func.coalesce(func.sum(ClassSession.cost_tokens), 0)).where(
            ClassSession.student_id == student_id,
            ClassSession.status == ClassStatus.SCHEDULED.value,
            ClassSession.scheduled_end > now,
        )
    ).one()
    return Budget(available, int(promised), count)


def _refuse_unaffordable(student_id: int, cost: int, now: datetime) -> None:
    budget = budget_of(student_id, now)
    if cost <= budget.free:
        return
    text = f"This class costs {tokens(cost)}. You have {tokens(budget.available)} available"
    if budget.promised_classes == 1:
        text += (
            f", and the class you booked that has not started yet will hold "
            f"{tokens(budget.promised)}"
        )
    elif budget.promised_classes:
        text += (
            f", and the {budget.promised_classes} classes you booked that have not started yet "
            f"will hold {tokens(budget.promised)}"
        )
    text += f": you can afford {tokens(budget.free)} more. Buy tokens, or choose a shorter class."
    raise BookingError(text, "duration")


def _title(title: str, teacher: User | None) -> str:
    name = teacher.display_name if teacher is not None else ""
    return " ".join(title.split())[:120] or f"Class with {name}"


def _booking(teacher_id: int, title: str, start: datetime, duration_minutes: int) -> tuple:
    """What a booking form asks for, to compare with a repeat of its key."""
    teacher = db.session.get(User, teacher_id) if teacher_id else None
    return (teacher_id, _title(title, teacher), start, duration_minutes)


def _booked(session: ClassSession) -> tuple:
    return (session.teacher_id, session.title, session.scheduled_start, session.duration_minutes)


# Acting ----------------------------------------------------------------------------------


def act(session: ClassSession, action: Action, actor: User, now: datetime | None = None):
    """Apply a person's `action` to the class; return the class as it now is.

    Raises InvalidMove (409) when the action does not apply, PermissionError
    when `actor` may not take it, InsufficientTokens when the student cannot
    afford the start, AccountFrozen when a start finds the teacher or the student
    frozen. On any of them nothing changed. Only the start checks for a freeze: a class
    under way is paused, resumed, ended and settled as usual. A class that has fallen
    due is settled first; the action then finds it over.
    """
    _check_allowed(session, action, actor)
    if action == Action.START:
        freeze.refuse_start_if_frozen(session.student_id, session.teacher_id)
    now = now or clock.now()
    for _ in range(ATTEMPTS):
        session = settle_if_due(session, now)
        state, version = _read(session)
        move = decide(state, action, now, pause_limit())
        if move.action == Action.START:
            _refuse_second_live(session)
        try:
            applied = _apply(session, version, move, actor.id, _admin_record(session, actor))
        except IntegrityError:
            if move.action != Action.START:
                raise
            # Another class of theirs started at the same time: the unique index refused this.
            _refuse_second_live(_reload(session.id))
            raise InvalidMove(_BUSY_ELSEWHERE) from None
        if applied:
            return session
        session = _reload(session.id)
    raise ClassBusy()


_BUSY_ELSEWHERE = "Another class of this teacher or student has just started. Nothing was changed."


def live_class_of(person, person_id: int, other_than: int) -> ClassSession | None:
    """A class in progress or paused of `person` (teacher_id or student_id), other than one."""
    return db.session.scalars(
        select(ClassSession)
        .where(
            person == person_id,
            ClassSession.id != other_than,
            ClassSession.status.in_([status.value for status in HOLDING_STATUSES]),
        )
        .limit(1)
    ).first()


def _refuse_second_live(session: ClassSession) -> None:
    """InvalidMove if the class's teacher, or its student, has another class in progress or
    paused: one live class at a time each (a unique index on each database backs this)."""
    other = live_class_of(ClassSession.teacher_id, session.teacher_id, session.id)
    if other is not None:
        raise InvalidMove(
            f"You have another class {other.status_label.lower()}: “{other.title}” "
            f"(#{other.id}). End it before starting this one. Nothing was changed."
        )
    other = live_class_of(ClassSession.student_id, session.student_id, session.id)
    if other is not None:
        raise InvalidMove(
            f"The student is still in another class, which is {other.status_label.lower()}. "
            "This class can start once it ends. Nothing was changed."
        )


def settle_if_due(session: ClassSession, now: datetime | None = None) -> ClassSession:
    """Settle the class if it has run its time or paused too long; return it as it now is.

    Safe to call from any number of requests at once: one settles, the others
    find it settled.
    """
    return _settle_due(session, now or clock.now())[0]


def _settle_due(session: ClassSession, now: datetime) -> tuple[ClassSession, Move | None]:
    """`settle_if_due`, also returning the move this call made (None if it made none)."""
    for _ in range(ATTEMPTS):
        state, version = _read(session)
        move = due(state, now, pause_limit())
        if move is None:
            return session, None
        if _apply(session, version, move, None):
            return session, move
        session = _reload(session.id)
    raise ClassBusy()


def _read(session: ClassSession) -> tuple[ClassClock, int]:
    """The class's clock and the version it belongs to, from one load of the row."""
    return clock_of(session), session.version


def _check_allowed(session: ClassSession, action: Action, actor: User) -> None:
    is_teacher = actor.id == session.teacher_id
    is_student = actor.id == session.student_id
    is_admin = actor.role == Role.ADMIN
    if action == Action.CANCEL:
        allowed = is_teacher or is_student or is_admin
    elif action == Action.ABORT:
        allowed = is_teacher or is_admin
    elif action in TEACHER_ACTIONS:
        allowed = is_teacher
    else:
        allowed = False  # the system's own actions
    if not allowed:
        raise PermissionError(f"{actor.role} {actor.id} may not {action} class {session.id}")


def _reload(class_id: int) -> ClassSession:
    return db.session.scalars(
        select(ClassSession)
        .where(ClassSession.id == class_id)
        .execution_options(populate_existing=True)
    ).one()


def _admin_record(session: ClassSession, actor: User):
    """An admin who is not in the class (aborting or cancelling it) records the action in
    the move's own transaction; None for the teacher and the student."""
    if actor.role != Role.ADMIN or actor.id in (session.teacher_id, session.student_id):
        return None
    before = session.status

    def record(move: Move) -> None:
        after = {"status": move.status.value, "charged_tokens": move.charge}
        actions.record(actor, f"{move.action.value}_class", "class", session.id,
                       {"status": before}, after)  # fmt: skip

    return record


def _apply(
    session: ClassSession, version: int, move: Move, actor_id: int | None, on_applied=None
) -> bool:
    """Write `move` if the class is still at `version`; False if another request won.

    One transaction: the class row, its event, the ledger entry, the notifications and,
    with `on_applied(move)`, what it adds (an admin's action record). Any error rolls all
    of it back.
    """
    values = {
        "status": move.status.value,
        "active_seconds": move.active_seconds,
        "running_since": move.running_since,
        "due_at": move.due_at,
        "paused_at": move.paused_at,
    }
    if move.action == Action.START:
        values["started_at"] = move.at
    if move.is_final:
        values.update(ended_at=move.at, end_reason=move.end_reason.value)
        values["charged_tokens"] = move.charge
    class_id = session.id
    try:
        with ledger.atomic():
            if not transitions.compare_and_set(ClassSession, class_id, version, values):
                raise _Lost()
            db.session.add(
                ClassEvent(
                    class_id=class_id,
                    kind=move.event.value,
                    at=move.at,
                    actor_id=actor_id,
                    active_seconds=move.active_seconds,
                )
            )
            entries = _move_tokens(session, move, actor_id)
            if entries:
                db.session.execute(
                    update(ClassSession)
                    .where(ClassSession.id == class_id)
                    .values(**entries)
                    .execution_options(synchronize_session=False)
                )
            if move.is_final:
                _notify_end(session, move)
            if on_applied is not None:
                on_applied(move)
    except _Lost:
        return False
    db.session.expire(session)
    return True


class _Lost(Exception):
    """Another request changed the class first."""


def _move_tokens(session: ClassSession, move: Move, actor_id: int | None) -> dict:
    """The ledger's entry for `move`, in the current transaction; the entry ids to record."""
    # The entry is dated when it is written: a completion found late still ended
    # at `move.at` (the class's event says so), but the ledger's order is the
    # order money moved, which wallet histories and their running balances follow.
    details = {
        "reference": ("class", session.id),
        "memo": session.title,
        "actor_id": actor_id,
        "now": clock.now(),
    }
    if move.ledger == MoneyStep.HOLD:
        held = ledger.hold(
            session.student_id,
            session.cost_tokens,
            key=f"class:{session.id}:hold",
            kind=EntryKind.CLASS_HOLD,
            **details,
        )
        # After the hold's wallet locks (soma.auth.freeze): a freeze of either side that
        # commits meanwhile is seen here, or waits until the class has started.
        freeze.refuse_start_if_frozen(session.student_id, session.teacher_id, lock=True)
        return {"hold_entry_id": held.id}
    if move.ledger is None:
        return {}
    facts = {"holder_id": session.student_id, "held": session.cost_tokens}
    # One key for however the class closes: it can close only once.
    key = f"class:{session.id}:close"
    if move.ledger == MoneyStep.SETTLE:
        closing = ledger.settle(
            session.hold_entry_id,
            move.charge,
            key=key,
            to_user_id=session.teacher_id,
            **facts,
            **details,
        )
    else:
        closing = ledger.release(session.hold_entry_id, key=key, **facts, **details)
    return {"closing_entry_id": closing.id}


def _notify_end(session: ClassSession, move: Move) -> None:
    link = class_path(session.id)
    title = session.title
    returned = session.cost_tokens - move.charge
    if move.status == ClassStatus.CANCELLED:
        for user_id in (session.student_id, session.teacher_id):
            notify(user_id, "class_cancelled", f"“{title}” was cancelled.", link)
        return
    if move.status == ClassStatus.ABORTED:
        notify(
            session.student_id,
            "class_aborted",
            f"“{title}” was aborted; your {tokens(returned)} were returned.",
            link,
        )
        notify(session.teacher_id, "class_aborted", f"“{title}” was aborted.", link)
        return
    student_text = f"“{title}” ended: {tokens(move.charge)} paid"
    if returned:
        student_text += f", {returned:,} returned to you"
    notify(session.student_id, "class_completed", student_text + ".", link)
    notify(
        session.teacher_id,
        "class_completed",
        f"“{title}” ended: you earned {tokens(move.charge)}.",
        link,
    )


# The sweeper -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    completed: int
    ended_early: int
    failed: int


def sweep(now: datetime | None = None, limit: int = 500) -> SweepResult:
    """One pass: settle every class that has run its time or stayed paused too long."""
    now = now or clock.now()
    cutoff = now - pause_limit()
    due_ids = db.session.scalars(
        select(ClassSession.id)
        .where(
            or_(
                and_(
                    ClassSession.status == ClassStatus.IN_PROGRESS.value,
                    ClassSession.due_at <= now,
                ),
                and_(
                    ClassSession.status == ClassStatus.PAUSED.value,
                    ClassSession.paused_at <= cutoff,
                ),
            )
        )
        .order_by(ClassSession.id)
        .limit(limit)
    ).all()
    db.session.rollback()  # end the read: each class settles in a transaction of its own
    completed = ended_early = failed = 0
    for class_id in due_ids:
        try:
            _, move = _settle_due(_reload(class_id), now)
        except Exception:
            db.session.rollback()
            current_app.logger.exception("sweeper: class %s could not be settled", class_id)
            failed += 1
            continue
        if move is None:
            continue  # settled meanwhile by a poll or another sweeper
        if move.status == ClassStatus.COMPLETED:
            completed += 1
        else:
            ended_early += 1
    return SweepResult(completed, ended_early, failed)


# Where the class happens ---------------------------------------------------------------


def set_meeting_url(session: ClassSession, actor: User, url: str | None) -> ClassSession:
    """Set (or, with None, remove) the class's meeting link. Only its teacher may:
    PermissionError otherwise; InvalidMove once the class is over. The link is checked
    by the form (soma.classes.forms.meeting_url_problem)."""
    if actor.id != session.teacher_id:
        raise PermissionError(f"user {actor.id} may not set the link of class {session.id}")
    if session.is_final:
        raise InvalidMove("This class is over; its meeting link can no longer change.")
    # Not a move of the class: its version (the state's compare-and-set) is left alone.
    db.session.execute(
        update(ClassSession)
        .where(ClassSession.id == session.id)
        .values(meeting_url=url)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return _reload(session.id)


# The tracker's figures -------------------------------------------------------------------


@dataclass(frozen=True)
class Earning:
    """What the teacher earns for a class, in tokens and at the teacher rate."""

    tokens: int
    cents: int
    final: bool  # earned (the settle's frozen value), else what the full class would earn
    rate_tokens: int
    rate_cents: int


def teacher_earning(session: ClassSession, now: datetime | None = None) -> Earning:
    """For a final class, what its settle paid the teacher, valued as the ledger froze
    it; before that, its whole cost at the teacher rate in force now."""
    pricing = get_token_pricing(PricingUserType.TEACHER, now or clock.now())
    rate = (pricing.tokens, pricing.usd_cents)
    if not session.is_final:
        cost = session.cost_tokens
        return Earning(cost, tokens_to_cents(cost, pricing), False, *rate)
    charged = session.charged_tokens or 0
    cents = 0
    if charged and session.closing_entry_id is not None:
        cents = db.session.scalar(
            select(JournalEntry.teacher_usd_cents).where(
                JournalEntry.id == session.closing_entry_id
            )
        )
    return Earning(charged, cents or 0, True, *rate)


def wallet_balances(user_id: int) -> tuple[int, int]:
    row = db.session.execute(
        select(Wallet.available, Wallet.locked).where(Wallet.user_id == user_id)
    ).one()
    return row.available, row.locked


__all__ = [
    "Action",
    "BookingError",
    "ClassBusy",
    "InvalidMove",
    "act",
    "book",
    "class_for",
    "dashboard_for",
    "settle_if_due",
    "sweep",
]
