"""The audit's checks of classes (SPEC §2.10): every finished class settled exactly once,
between the class's own student and teacher.

The settlement check finds the wrong classes in SQL (their entries aggregated by class,
what a finished one owes computed there too) and only words them in Python. In an
incremental run it looks at the classes named by an entry in scope, those booked since
the checkpoint, and those still open (scheduled, in progress, paused: a row that can
change with no entry, as a cancel does). A class has no reliable change time, so an edit
of a class already finished at the checkpoint, with no entry since, is left to `--full`.
The two checks of class entries read only the entries in scope.
"""

from sqlalchemy import and_, case, exists, func, or_, select, true
from sqlalchemy.orm import aliased

from soma.audit.checkpoint import FULL, Scope
from soma.audit.violation import MOST, Violation
from soma.classes.machine import pro_rata
from soma.extensions import db
from soma.models import ClassSession, EntryKind, JournalEntry, Posting, Wallet
from soma.models.classes import ClassStatus

CLOSING = (EntryKind.CLASS_SETTLE.value, EntryKind.CLASS_RELEASE.value)
NOT_STARTED = (ClassStatus.SCHEDULED, ClassStatus.CANCELLED)
RUNNING = (ClassStatus.IN_PROGRESS, ClassStatus.PAUSED)


def classes_settle_exactly_once(scope: Scope = FULL) -> list[Violation]:
    """Each class's entries match its status: none before it starts, one hold while it
    runs, and once it is over one hold and one closing entry that charged what it says."""
    class_in_scope = or_(
        scope.named(ClassSession.id, "class"),
        scope.newer(ClassSession.id, "through_class_id"),
        # Made before the checkpoint's snapshot but committed after it: a smaller id.
        scope.changed(ClassSession.created_at),
        ClassSession.status.in_((ClassStatus.SCHEDULED, *RUNNING)),
    )
    in_scope = (
        true()
        if scope.full
        else JournalEntry.reference_id.in_(
            select(ClassSession.id).where(class_in_scope).correlate(None)
        )
    )
    entries = (
        select(
            JournalEntry.reference_id.label("class_id"),
            func.sum(case((JournalEntry.kind == EntryKind.CLASS_HOLD.value, 1), else_=0)).label(
                "holds"
            ),
            func.sum(case((JournalEntry.kind.in_(CLOSING), 1), else_=0)).label("closes"),
            func.max(
                case((JournalEntry.kind == EntryKind.CLASS_HOLD.value, JournalEntry.id))
            ).label("hold_id"),
            func.max(case((JournalEntry.kind.in_(CLOSING), JournalEntry.id))).label("close_id"),
            func.sum(
                case(
                    (JournalEntry.kind == EntryKind.CLASS_SETTLE.value, JournalEntry.tokens),
                    else_=0,
                )
            ).label("paid"),
            func.max(
                case((JournalEntry.kind == EntryKind.CLASS_HOLD.value, JournalEntry.tokens))
            ).label("held"),
        )
        .where(JournalEntry.reference_type == "class", in_scope)
        .group_by(JournalEntry.reference_id)
        .subquery()
    )
    holds = func.coalesce(entries.c.holds, 0)
    closes = func.coalesce(entries.c.closes, 0)
    paid = func.coalesce(entries.c.paid, 0)
    planned = ClassSession.duration_minutes * 60
    active = case(
        (ClassSession.active_seconds < 0, 0),
        (ClassSession.active_seconds > planned, planned),
        else_=ClassSession.active_seconds,
    )
    due = case(
        (ClassSession.status == ClassStatus.COMPLETED.value, ClassSession.cost_tokens),
        (
            ClassSession.status == ClassStatus.ENDED_EARLY.value,
            (ClassSession.cost_tokens * active + planned - 1) // planned,
        ),
        else_=0,
    )
    wrong = or_(
        and_(ClassSession.status.in_(NOT_STARTED), or_(holds != 0, closes != 0)),
        and_(
            ClassSession.status.in_(RUNNING),
            or_(
                holds != 1,
                closes != 0,
                ClassSession.hold_entry_id.is_distinct_from(entries.c.hold_id),
            ),
        ),
        and_(
            ClassSession.status.not_in(NOT_STARTED + RUNNING),
            or_(
                holds != 1,
                closes != 1,
                ClassSession.hold_entry_id.is_distinct_from(entries.c.hold_id),
                ClassSession.closing_entry_id.is_distinct_from(entries.c.close_id),
                ClassSession.charged_tokens.is_distinct_from(paid),
                paid != due,
            ),
        ),
        and_(holds != 0, entries.c.held.is_distinct_from(ClassSession.cost_tokens)),
    )
    rows = db.session.execute(
        select(
            ClassSession.id,
            ClassSession.status,
            ClassSession.cost_tokens,
            ClassSession.charged_tokens,
            ClassSession.hold_entry_id,
            ClassSession.closing_entry_id,
            ClassSession.active_seconds,
            ClassSession.duration_minutes,
            func.coalesce(entries.c.holds, 0),
            func.coalesce(entries.c.closes, 0),
            entries.c.hold_id,
            entries.c.close_id,
            func.coalesce(entries.c.paid, 0),
            entries.c.held,
        )
        .outerjoin(entries, entries.c.class_id == ClassSession.id)
        .where(class_in_scope, wrong)
        .order_by(ClassSession.id)
        .limit(MOST)
    ).all()
    found = []
    for (class_id, status, cost, charged, hold_ref, close_ref, active, minutes,
         holds, closes, hold_id, close_id, paid, held) in rows:  # fmt: skip
        problems = []
        if status in NOT_STARTED:
            if holds or closes:
                problems.append(f"has {holds} hold(s) and {closes} closing entries before starting")
        elif status in RUNNING:
            if (holds, closes) != (1, 0) or hold_ref != hold_id:
                problems.append(f"runs with {holds} hold(s) and {closes} closing entries")
        else:
            if (holds, closes) != (1, 1):
                problems.append(
                    f"ended with {holds} hold(s) and {closes} closing entries, not 1 and 1"
                )
            elif (hold_ref, close_ref) != (hold_id, close_id):
                problems.append("records other entries than the ledger holds for it")
            elif paid != charged:
                problems.append(f"says it charged {charged} tokens but the ledger paid {paid}")
            elif paid != _due(status, cost, active, minutes * 60):
                due = _due(status, cost, active, minutes * 60)
                problems.append(
                    f"is {status} after {active} active seconds, so owes {due} tokens, "
                    f"but paid {paid}"
                )
        if holds and held != cost:
            problems.append(f"held {held} tokens for a class that costs {cost}")
        found.extend(Violation("class-settlement", f"class {class_id} {p}") for p in problems)
    return found


def _due(status: str, cost: int, active_seconds: int, planned_seconds: int) -> int:
    """What a finished class should have paid the teacher (SPEC §3)."""
    if status == ClassStatus.COMPLETED:
        return cost
    if status == ClassStatus.ENDED_EARLY:
        return pro_rata(cost, active_seconds, planned_seconds)
    return 0  # aborted


def class_entries_name_a_class(scope: Scope = FULL) -> list[Violation]:
    """Every entry that says it concerns a class concerns one that exists."""
    orphans = db.session.scalars(
        select(JournalEntry.id)
        .where(JournalEntry.reference_type == "class", scope.entries(JournalEntry.id))
        .where(~exists().where(ClassSession.id == JournalEntry.reference_id))
        .order_by(JournalEntry.id)
        .limit(MOST)
    ).all()
    return [
        Violation("class-settlement", f"entry {entry_id} names no class") for entry_id in orphans
    ]


def class_entries_move_its_own_parties_tokens(scope: Scope = FULL) -> list[Violation]:
    """A class's hold and release touch only its student's wallet; its settle also pays its
    teacher, once, and nobody else: tokens held for one class never pay another teacher."""
    student_wallet = aliased(Wallet)
    teacher_wallet = aliased(Wallet)
    settle = JournalEntry.kind == EntryKind.CLASS_SETTLE.value
    to_teacher = Posting.wallet_id == teacher_wallet.id
    # A posting on another wallet than the student's, unless it is a settle paying the teacher.
    stray = and_(
        Posting.wallet_id != student_wallet.id,
        or_(~settle, ~to_teacher),
    )
    rows = db.session.execute(
        select(
            JournalEntry.id,
            JournalEntry.kind,
            ClassSession.id,
            func.sum(case((stray, 1), else_=0)),
            func.sum(case((and_(to_teacher, Posting.amount > 0), 1), else_=0)),
        )
        .join(ClassSession, ClassSession.id == JournalEntry.reference_id)
        .join(student_wallet, student_wallet.user_id == ClassSession.student_id)
        .join(teacher_wallet, teacher_wallet.user_id == ClassSession.teacher_id)
        .join(Posting, Posting.entry_id == JournalEntry.id)
        .where(JournalEntry.reference_type == "class", scope.entries(JournalEntry.id))
        .group_by(JournalEntry.id, JournalEntry.kind, ClassSession.id)
        .having(
            or_(
                func.sum(case((stray, 1), else_=0)) > 0,
                and_(
                    settle, func.sum(case((and_(to_teacher, Posting.amount > 0), 1), else_=0)) != 1
                ),
            )
        )
        .order_by(JournalEntry.id)
        .limit(MOST)
    ).all()
    return [
        Violation("class-wrong-party", _wrong_party(class_id, kind, entry_id, strays, paid))
        for entry_id, kind, class_id, strays, paid in rows
    ]


def _wrong_party(class_id: int, kind: str, entry_id: int, strays: int, paid: int) -> str:
    detail = f"class {class_id}'s {kind} entry {entry_id}"
    if strays:
        detail += f" posts to {strays} wallet(s) of neither its student nor its teacher"
    if kind == EntryKind.CLASS_SETTLE and paid != 1:
        detail += f"{',' if strays else ''} pays its teacher {paid} time(s), not once"
    return detail
