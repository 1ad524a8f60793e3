"""Frozen accounts: an admin's freeze and unfreeze, and the one check every action makes.

A frozen account cannot buy, gift, book, start a class or withdraw. Each of those
services calls `refuse_if_frozen` (or `refuse_start_if_frozen`), which raises
AccountFrozen with a message saying so and whom to contact. What is already under way
still finishes: a class in progress settles (the sweeper, the tracker's poll and the
teacher's pause, resume and end never check), and a payment that comes in (a webhook,
the sandbox's Pay, an admin's match) is credited, because fulfilment never checks. A
frozen student may still receive a gift: receiving is incoming.

Race safety. Where the action is a transaction of its own (a purchase's start, a
booking, a gift, a class's start, a withdrawal's request), the check is made inside it
with `lock=True`: on PostgreSQL it reads users.frozen_at FOR SHARE, which conflicts with
the UPDATE a freeze makes. A freeze that committed first is seen (READ COMMITTED reads
the newest committed row; a share lock waits for an uncommitted update and then reads
its result), and a freeze that comes later waits until the action has committed: the
action happened before the freeze, or it was refused, never after. FOR KEY SHARE would
not do: an UPDATE that changes no key takes FOR NO KEY UPDATE, which it does not block.

Where the action also moves tokens, the locked check comes after its ledger entry, just
before the commit: the ledger takes the wallets' row locks first, and a refund that
flags an account (soma.purchases.reversals) takes the wallet, then the user's row; the
same order here means the two never deadlock. A plain, unlocked check at the start of
the same action gives the frozen message before any other refusal (an unaffordable
class, say). On SQLite a transaction that writes holds the one write lock until it
commits, so a freeze cannot commit in between.

No action here is a single own-transaction ledger statement (soma.ledger's autocommit
path): each of them checks inside its own transaction. The one window left is by
design: a purchase started before the freeze may still be paid and credited after it.
"""

from datetime import datetime

from flask import current_app
from sqlalchemy import select, update

from soma import clock
from soma.admin import actions
from soma.auth.service import end_sessions
from soma.errors import SomaError
from soma.extensions import db
from soma.models import AdminAction, Role, User
from soma.money import when
from soma.notifications.service import notify

FREEZE = "freeze"
UNFREEZE = "unfreeze"
OBJECT_TYPE = "user"


def support_email() -> str:
    return current_app.config["SUPPORT_EMAIL"]


def frozen_message(doing: str) -> str:
    """What a frozen account is told when it tries `doing` ("buy tokens", ...)."""
    return (
        f"Your account is frozen, so you cannot {doing}. Nothing was changed. "
        f"Contact {support_email()} to find out why, or to have it unfrozen."
    )


class AccountFrozen(SomaError):
    """An action a frozen account may not take. 409, so htmx shows it in place."""

    status = 409
    title = "Account frozen"


def _frozen(user_ids: list[int], lock: bool) -> set[int]:
    """Which of `user_ids` are frozen, read (with `lock`, FOR SHARE) in this transaction."""
    query = select(User.id).where(User.id.in_(user_ids), User.frozen_at.is_not(None))
    if lock:
        # The rows, frozen or not, are share-locked: lock them all, then filter.
        query = (
            select(User.id, User.frozen_at)
            .where(User.id.in_(user_ids))
            .order_by(User.id)
            .with_for_update(read=True)
        )
        return {row.id for row in db.session.execute(query) if row.frozen_at is not None}
    return set(db.session.scalars(query))


def is_frozen(user_id: int, *, lock: bool = False) -> bool:
    """Whether the account is frozen, read in this transaction (with `lock`, FOR SHARE)."""
    return bool(_frozen([user_id], lock))


def refuse_if_frozen(user_id: int, doing: str, *, lock: bool = False) -> None:
    """AccountFrozen if the account is frozen; `doing` completes "you cannot ...".

    With `lock`, the check holds a share lock on the user's row until the caller's
    transaction ends (see the module's docstring): call it inside that transaction,
    after its ledger entry, and never commit in between.
    """
    if _frozen([user_id], lock):
        raise AccountFrozen(frozen_message(doing))


def refuse_start_if_frozen(student_id: int, teacher_id: int, *, lock: bool = False) -> None:
    """AccountFrozen if the student or the teacher of a class is frozen: its start would
    take the student's tokens into a hold that pays the teacher."""
    frozen = _frozen([student_id, teacher_id], lock)
    if teacher_id in frozen:
        raise AccountFrozen(frozen_message("start a class"))
    if student_id in frozen:
        raise AccountFrozen(
            "The student's account is frozen, so this class cannot start. Nothing was "
            f"changed. You can cancel it; contact {support_email()} with any question."
        )


def refuse_booking_with_frozen_teacher(teacher: User) -> None:
    """A frozen teacher cannot start the class, so the student may not book it (the
    student is not told why: the teacher's account is the teacher's business)."""
    if teacher.is_frozen:
        raise AccountFrozen(
            f"{teacher.display_name} cannot take bookings right now. Choose another teacher."
        )


# Freezing ---------------------------------------------------------------------------------


class FreezeRefused(SomaError):
    """A freeze or unfreeze that cannot be made; nothing was changed or recorded."""

    status = 409
    title = "Not changed"


def _state(user: User) -> dict:
    return {"frozen_at": user.frozen_at, "frozen_reason": user.frozen_reason}


def _locked_user(user_id: int) -> User:
    """The user, read fresh and locked (FOR NO KEY UPDATE: rows that merely refer to the
    user, a notification say, need not wait) until the transaction ends."""
    user = db.session.scalars(
        select(User)
        .where(User.id == user_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).first()
    if user is None:
        raise FreezeRefused("There is no such account.")
    return user


def check_freeze(admin: User, user: User) -> None:
    """FreezeRefused if `admin` may not freeze `user` as the account now stands (asked
    again, under the row's lock, by `freeze`)."""
    _refuse_admins(admin, user)
    if user.is_frozen:
        raise FreezeRefused(_already_frozen(user))


def check_unfreeze(admin: User, user: User) -> None:
    """FreezeRefused if `admin` may not unfreeze `user` as the account now stands."""
    _refuse_admins(admin, user)
    if not user.is_frozen:
        raise FreezeRefused("This account is not frozen.")


def _refuse_admins(admin: User, user: User) -> None:
    if user.id == admin.id:
        raise FreezeRefused("You cannot freeze or unfreeze your own account.")
    if user.role == Role.ADMIN:
        raise FreezeRefused(
            "Admin accounts cannot be frozen or unfrozen here. Remove the admin's access "
            "from the command line instead."
        )


def freeze(admin: User, user_id: int, reason: str, now: datetime | None = None) -> User:
    """Freeze the account, record it and end its sessions, in one transaction.

    A compare-and-set on users.frozen_at: of two admins freezing at once, one freezes and
    is recorded; the other is told the account is already frozen, and nothing of theirs
    is written. FreezeRefused for an admin's account or one already frozen.
    """
    try:
        user = _locked_user(user_id)
        check_freeze(admin, user)
        now = now or clock.now()
        before = _state(user)
        after = {"frozen_at": now, "frozen_reason": reason}
        moved = db.session.execute(
            update(User)
            .where(User.id == user.id, User.frozen_at.is_(None), User.role != Role.ADMIN.value)
            .values(**after)
            .execution_options(synchronize_session=False)
        ).rowcount
        if moved != 1:  # (SQLite takes no row lock: the condition is the check)
            raise FreezeRefused("This account was just frozen by another admin.")
        actions.record(admin, FREEZE, OBJECT_TYPE, user.id, before, after, reason)
        notify(
            user.id,
            "account_frozen",
            "Your account was frozen: until it is unfrozen you cannot buy, give or withdraw "
            "tokens, book classes or start them. Classes under way and payments already "
            f"made still go through. Contact {support_email()} to find out more.",
        )
        end_sessions(user)  # commits the freeze, its record and the notification with it
    except BaseException:
        db.session.rollback()
        raise
    return db.session.get(User, user_id)


def unfreeze(admin: User, user_id: int, reason: str) -> User:
    """Unfreeze the account and record it, in one transaction; FreezeRefused if it is not
    frozen (another admin unfroze it first, say) or is an admin's."""
    try:
        user = _locked_user(user_id)
        check_unfreeze(admin, user)
        before = _state(user)
        after = {"frozen_at": None, "frozen_reason": None}
        moved = db.session.execute(
            update(User)
            .where(User.id == user.id, User.frozen_at == user.frozen_at)
            .values(**after)
            .execution_options(synchronize_session=False)
        ).rowcount
        if moved != 1:
            raise FreezeRefused("This account was just changed by another admin. Reload it.")
        actions.record(admin, UNFREEZE, OBJECT_TYPE, user.id, before, after, reason)
        notify(
            user.id,
            "account_unfrozen",
            "Your account was unfrozen: you can buy, give and withdraw tokens and book "
            "classes again.",
        )
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return db.session.get(User, user_id)


def latest_freeze(user_id: int) -> AdminAction | None:
    """The record of the account's latest freeze (who, when, why)."""
    return db.session.scalars(
        select(AdminAction)
        .where(
            AdminAction.object_type == OBJECT_TYPE,
            AdminAction.object_id == user_id,
            AdminAction.action == FREEZE,
        )
        .order_by(AdminAction.id.desc())
        .limit(1)
    ).first()


def _already_frozen(user: User) -> str:
    record = latest_freeze(user.id)
    who = f" by {record.admin.display_name}" if record is not None else ""
    return f"This account is already frozen (since {when(user.frozen_at)}{who})."
