"""A teacher's payout methods: add, choose the default, remove.

A teacher has at most one current default (a partial unique index backs this
up). A method added less than NEW_METHOD_AGE ago is "new": a withdrawal to it
waits for an admin, whatever its rail (a stolen session adding its own account
and withdrawing at once is the fraud this stops). A removed method is kept,
hidden: the withdrawals made to it still name it.
"""

import re
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from soma import clock, inputs
from soma.errors import FieldRefusal
from soma.extensions import db
from soma.models import MethodKind, PayoutMethod, Role, User
from soma.payouts import sealing
from soma.payouts.rails import rail_for
from soma.providers import daraja, stripe_connect

NEW_METHOD_AGE = timedelta(hours=24)
# An account number as banks write them: letters and digits (an IBAN has up to 34).
_ACCOUNT_NUMBER = re.compile(r"[A-Z0-9]{4,34}")


class MethodRefused(FieldRefusal):
    """A payout method that cannot be added or changed as asked."""

    title = "Cannot use that payout method"


def is_new(method: PayoutMethod, now: datetime | None = None) -> bool:
    """Whether the method was added less than NEW_METHOD_AGE ago."""
    return method.created_at > (now or clock.now()) - NEW_METHOD_AGE


def methods_of(user: User) -> list[PayoutMethod]:
    """The teacher's current methods, the default first, then the newest."""
    return list(
        db.session.scalars(
            select(PayoutMethod)
            .where(PayoutMethod.user_id == user.id, PayoutMethod.removed_at.is_(None))
            .order_by(PayoutMethod.is_default.desc(), PayoutMethod.id.desc())
        )
    )


def method_for(user: User, method_id: int) -> PayoutMethod | None:
    """The teacher's current method `method_id`; None if it is not theirs or was removed."""
    return db.session.scalars(
        select(PayoutMethod).where(
            PayoutMethod.id == method_id,
            PayoutMethod.user_id == user.id,
            PayoutMethod.removed_at.is_(None),
        )
    ).first()


def add_sandbox(user: User, now: datetime | None = None) -> PayoutMethod:
    """A test payout method (one per teacher: adding it again returns it)."""
    existing = [m for m in methods_of(user) if m.kind == MethodKind.SANDBOX]
    if existing:
        return existing[0]
    return _add(user, PayoutMethod(kind=MethodKind.SANDBOX.value), now)


def add_mpesa(user: User, phone: str, now: datetime | None = None) -> PayoutMethod:
    """An M-Pesa number, normalised to 2547XXXXXXXX or 2541XXXXXXXX."""
    try:
        normalised = daraja.normalise_phone(phone)
    except daraja.InvalidPhone as error:
        raise MethodRefused(str(error), "phone") from None
    if any(m.kind == MethodKind.MPESA and m.phone == normalised for m in methods_of(user)):
        raise MethodRefused("This number is already one of your payout methods.", "phone")
    return _add(user, PayoutMethod(kind=MethodKind.MPESA.value, phone=normalised), now)


def stripe_method(user: User) -> PayoutMethod | None:
    """The teacher's current Stripe method (the one connected account they onboard)."""
    return next((m for m in methods_of(user) if m.kind == MethodKind.STRIPE), None)


def connect_stripe(
    user: User,
    refresh_url: str,
    return_url: str,
    now: datetime | None = None,
    country: str | None = None,
) -> str:
    """The URL of Stripe's onboarding for the teacher's connected account: their Stripe
    method (added now, with no account yet, if they have none) gets its Express account
    first, made once per method (the idempotency key is the method's), then a fresh
    single-use onboarding link. Stripe's errors are raised as they are (StripeError).

    Returning from the link proves nothing: readiness comes from `account.updated`.
    `country` (ISO code) is the new account's; an account already made keeps its own.
    """
    existing = stripe_method(user)
    if (existing is None or not existing.stripe_account_id) and (
        country not in stripe_connect.CONNECT_COUNTRIES
    ):
        # Stripe makes the account in this country, for good: it is asked before one is made.
        raise MethodRefused(
            "Choose the country of your bank account. Stripe pays teachers in the United "
            "States, the United Kingdom, the EEA, Canada and Switzerland; in Kenya, add "
            "M-Pesa or a bank transfer instead.",
            "country",
        )
    method = existing or _add(user, PayoutMethod(kind=MethodKind.STRIPE.value), now)
    method_id = method.id
    account_id = method.stripe_account_id
    db.session.rollback()  # no transaction open while Stripe is called
    if not account_id:
        account_id = stripe_connect.create_account(
            idempotency_key=f"soma-payout-method:{method_id}:account",
            email=user.email,
            country=country,
            metadata={"teacher_id": str(user.id), "payout_method_id": str(method_id)},
        )
        db.session.execute(
            update(PayoutMethod)
            .where(PayoutMethod.id == method_id, PayoutMethod.stripe_account_id.is_(None))
            .values(stripe_account_id=account_id)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
    link = stripe_connect.onboarding_link(
        account_id, refresh_url=refresh_url, return_url=return_url
    )
    return link.url


def normalise_account_number(text: str) -> str:
    """The account number without spaces or dashes, in capitals; MethodRefused if it is not one."""
    number = re.sub(r"[\s\-]", "", text or "").upper()
    if not _ACCOUNT_NUMBER.fullmatch(number):
        raise MethodRefused(
            "Enter the account number: 4 to 34 letters and digits (spaces are fine).",
            "account_number",
        )
    return number


def add_bank(
    user: User, holder: str, bank_name: str, account_number: str, now: datetime | None = None
) -> PayoutMethod:
    """A bank account; its number is sealed (encrypted) and only its last four kept in clear."""
    holder, bank_name = (holder or "").strip(), (bank_name or "").strip()
    if not inputs.text_fits(holder, PayoutMethod.account_holder):
        raise MethodRefused("Enter the account holder's name as the bank has it.", "account_holder")
    if not inputs.text_fits(bank_name, PayoutMethod.bank_name):
        raise MethodRefused("Enter the bank's name.", "bank_name")
    number = normalise_account_number(account_number)
    for method in methods_of(user):
        same_tail = method.kind == MethodKind.BANK and method.account_last4 == number[-4:]
        if same_tail and method.bank_name == bank_name and _number_of(method) == number:
            raise MethodRefused("This account is already one of your payout methods.")
    method = PayoutMethod(
        kind=MethodKind.BANK.value,
        account_holder=holder,
        bank_name=bank_name,
        account_number_sealed=sealing.seal(number),
        account_last4=number[-4:],
    )
    return _add(user, method, now)


def _number_of(method: PayoutMethod) -> str | None:
    try:
        return sealing.unseal(method.account_number_sealed)
    except sealing.Unreadable:
        return None


def account_number(method: PayoutMethod) -> str:
    """The bank account number in clear, for the admin who sends the transfer."""
    if method.kind != MethodKind.BANK or not method.account_number_sealed:
        raise ValueError("only a bank method has an account number")
    return sealing.unseal(method.account_number_sealed)


def _add(user: User, method: PayoutMethod, now: datetime | None) -> PayoutMethod:
    """Save a new method of `user`; the first one becomes the default.

    Two requests adding at once (a double click): the database keeps one current
    Stripe or sandbox method per teacher and one of each M-Pesa number, so the second
    gets the method the first made (Stripe, sandbox) or is refused (M-Pesa); and of two
    first methods, only one becomes the default.
    """
    if user.role != Role.TEACHER:
        raise MethodRefused("Only teachers have payout methods.")
    rail = rail_for(method.kind)
    if not rail.offered():
        raise MethodRefused(rail.unavailable, "kind")
    method.user_id = user.id
    method.created_at = now or clock.now()
    for attempt in range(2):
        method.is_default = attempt == 0 and not methods_of(user)
        db.session.add(method)
        try:
            db.session.commit()
            return method
        except IntegrityError:
            db.session.rollback()
        twin = _current_twin(user, method)
        if twin is not None:
            if method.kind == MethodKind.MPESA:
                raise MethodRefused("This number is already one of your payout methods.", "phone")
            return twin
    raise MethodRefused("Your payout methods changed at the same moment. Try again.", "kind")


def _current_twin(user: User, method: PayoutMethod) -> PayoutMethod | None:
    """The current method of `user` that `method` would duplicate, if any."""
    for other in methods_of(user):
        if other.kind != method.kind or other.id == method.id:
            continue
        if method.kind in (MethodKind.STRIPE, MethodKind.SANDBOX):
            return other
        if method.kind == MethodKind.MPESA and other.phone == method.phone:
            return other
    return None


def make_default(user: User, method_id: int) -> PayoutMethod:
    """Make the teacher's method `method_id` their default (and no other)."""
    method = method_for(user, method_id)
    if method is None:
        raise MethodRefused("That payout method is not one of yours.")
    db.session.execute(
        update(PayoutMethod)
        .where(PayoutMethod.user_id == user.id, PayoutMethod.id != method.id)
        .values(is_default=False)
        .execution_options(synchronize_session=False)
    )
    method.is_default = True
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise MethodRefused(
            "Your methods changed at the same time. Reload and try again."
        ) from None
    return method


def remove(user: User, method_id: int, now: datetime | None = None) -> None:
    """Hide the method from new withdrawals; the newest other method becomes the default.

    Withdrawals already made to it go on: it is kept, marked removed.
    """
    method = method_for(user, method_id)
    if method is None:
        raise MethodRefused("That payout method is not one of yours.")
    was_default = method.is_default
    method.removed_at = now or clock.now()
    method.is_default = False
    db.session.flush()
    if was_default:
        successor = db.session.scalars(
            select(PayoutMethod)
            .where(PayoutMethod.user_id == user.id, PayoutMethod.removed_at.is_(None))
            .order_by(PayoutMethod.id.desc())
            .limit(1)
        ).first()
        if successor is not None:
            successor.is_default = True
    db.session.commit()


def default_of(user: User) -> PayoutMethod | None:
    return next((m for m in methods_of(user) if m.is_default), None)
