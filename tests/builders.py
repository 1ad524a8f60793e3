"""Test data, built through the app's own services (each needs an app context).

Users come from the auth service, tokens from the ledger, purchases from the purchase
service's real fulfilment path with the sandbox provider, classes from the class service
at the times a test's clock gives. Nothing here inserts rows by hand.
"""

import itertools
from datetime import datetime, timedelta

from soma import clock, ledger
from soma.auth import service as auth_service
from soma.classes import service as class_service
from soma.classes.machine import Action
from soma.models import ClassSession, PayoutMethod, Purchase, User, Withdrawal
from soma.payouts import methods as payout_methods
from soma.payouts import withdrawals as withdrawal_service
from soma.purchases import service as purchase_service

DEFAULT_PASSWORD = "correct-horse-battery"

_numbers = itertools.count(1)


def make_user(
    role: str = "student",
    email: str | None = None,
    name: str | None = None,
    password: str = DEFAULT_PASSWORD,
) -> User:
    """A user with `role` (student, teacher or admin), made by the auth service."""
    number = next(_numbers)
    email = email or f"{role}{number}@example.com"
    return auth_service.create_user(email, name or f"{role.title()} {number}", password, role)


def fund(user_id: int, tokens: int, key: str | None = None, **kwargs) -> ledger.PostedEntry:
    """Credit `tokens` to a user through the ledger, as a purchase; `kwargs` go to credit."""
    with ledger.atomic():
        return ledger.credit(user_id, tokens, key=key or f"test:fund:{next(_numbers)}", **kwargs)


def make_funded_user(tokens: int, role: str = "student", **user) -> User:
    """A user whose wallet holds `tokens`, credited through the ledger."""
    made = make_user(role, **user)
    fund(made.id, tokens)
    return made


def paid_purchase(
    student: User, tokens: int | None = None, package_tokens: int | None = None
) -> Purchase:
    """A sandbox purchase, started and paid through the purchase service: its tokens credited.

    Give `tokens` for a custom amount, or `package_tokens` to buy the package of that size;
    with neither, the first package.
    """
    if tokens is not None:
        chosen = purchase_service.quote(custom_tokens=tokens)
    else:
        quotes = purchase_service.package_quotes()
        chosen = next(
            (q for q in quotes if package_tokens is None or q.tokens == package_tokens), None
        )
        assert chosen is not None, f"no package of {package_tokens} tokens"
    key = f"test:purchase:{next(_numbers)}"
    started = purchase_service.start(student, chosen, purchase_service.Provider.SANDBOX, key)
    return purchase_service.fulfil(started.id, "sandbox", receipt=f"SANDBOX-{started.id}")


CLASS_STATES = ("scheduled", "in_progress", "paused", "completed", "ended_early", "cancelled")


def make_class(
    student: User,
    teacher: User,
    state: str = "scheduled",
    now: datetime | None = None,
    minutes: int = 60,
    title: str = "Fractions",
) -> ClassSession:
    """A class booked by `student` with `teacher`, brought to `state` by the class service.

    The class is booked at `now` (the app's clock when not given) to start five minutes
    later; each later move happens at the time it would: started at its start, paused or
    ended early by the teacher ten minutes in, completed when its time has run. The booking
    rules hold: the student needs tokens for this class and their other classes not yet
    started, the class must not overlap another of the teacher's or the student's (give
    each its own `now`), and a teacher or a student has one class in progress or paused.
    """
    if state not in CLASS_STATES:
        raise ValueError(f"no class state {state!r}; choose one of {CLASS_STATES}")
    now = now or clock.now()
    start = now + timedelta(minutes=5)
    key = f"test:class:{next(_numbers)}"
    session = class_service.book(student, teacher.id, title, start, minutes, key, now=now)
    if state == "cancelled":
        return class_service.act(session, Action.CANCEL, student, now=now)
    if state == "scheduled":
        return session
    session = class_service.act(session, Action.START, teacher, now=start)
    ten_minutes_in = start + timedelta(minutes=10)
    if state == "paused":
        return class_service.act(session, Action.PAUSE, teacher, now=ten_minutes_in)
    if state == "ended_early":
        return class_service.act(session, Action.END_EARLY, teacher, now=ten_minutes_in)
    if state == "completed":
        return class_service.settle_if_due(session, now=start + timedelta(minutes=minutes))
    return session


def make_teacher(tokens: int = 0, **user) -> User:
    """A teacher whose wallet holds `tokens` (credited through the ledger, as earnings
    would be): enough for a withdrawal, which a few test classes never earn."""
    teacher = make_user("teacher", **user)
    if tokens:
        fund(teacher.id, tokens)
    return teacher


def payout_method(
    teacher: User, kind: str = "sandbox", now: datetime | None = None, **details
) -> PayoutMethod:
    """A payout method of `teacher`, added through the methods service at `now` (the app's
    clock when not given): "sandbox", or "bank" (with made-up account details)."""
    if kind == "sandbox":
        return payout_methods.add_sandbox(teacher, now=now)
    if kind == "bank":
        return payout_methods.add_bank(
            teacher,
            details.get("holder", teacher.display_name),
            details.get("bank", "Equity Bank"),
            details.get("number", f"01{next(_numbers):08d}"),
            now=now,
        )
    raise ValueError(f"no builder for a {kind!r} payout method")


def make_withdrawal(
    teacher: User, usd_cents: int = 1000, method: PayoutMethod | None = None, key: str | None = None
) -> Withdrawal:
    """A withdrawal of `usd_cents` requested by `teacher` through the withdrawal service, to
    `method` (a sandbox method added a day ago when not given, so no review is due)."""
    if method is None:
        method = payout_method(teacher, now=clock.now() - timedelta(days=1))
    key = key or f"test:withdrawal:{next(_numbers)}"
    return withdrawal_service.request(teacher, method.id, usd_cents, key)
