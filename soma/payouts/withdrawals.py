"""Withdrawals: a teacher's request for dollars, and its payment exactly once.

`request` holds the tokens (a WITHDRAWAL_HOLD entry keyed by the withdrawal) in
one transaction with the withdrawal and its first history row. Every later move
is a compare-and-set of the status (soma.transitions) with its history row and,
when it closes the hold, its ledger entry, all in one transaction:

    requested ──approve / automatic──▶ processing ──mark_paid──▶ paid
        │                                   │
        └──reject──▶ rejected               └──mark_failed──▶ failed
                                                (reject: a bank transfer, or a stranded sandbox one)

`mark_paid` retires the held tokens (to redemption, the fee's to fees) and
`mark_failed` / `reject` release them; their entries are keyed by the withdrawal
(`withdrawal:<id>:paid`, `withdrawal:<id>:release`) and close the one hold, so
whatever reports an outcome twice, or two admins at once, it happens once.
"""

import logging
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from soma import clock, ledger, money, transitions
from soma.admin import actions
from soma.auth import freeze
from soma.auth.freeze import refuse_if_frozen
from soma.errors import FieldRefusal, KeyReused, SomaError
from soma.extensions import db
from soma.ledger.pricing import get_token_pricing
from soma.models import (
    EntryKind,
    PayoutMethod,
    PricingUserType,
    Role,
    User,
    Wallet,
    Withdrawal,
    WithdrawalEvent,
    WithdrawalStatus,
)
from soma.notifications.service import notify
from soma.payouts import amounts, methods
from soma.payouts.rails import Outcome, rail_for
from soma.payouts.sending import claim_send, record_request_id  # noqa: F401 (the service's)
from soma.security import owned

REQUESTED = WithdrawalStatus.REQUESTED
PROCESSING = WithdrawalStatus.PROCESSING
PAID = WithdrawalStatus.PAID
FAILED = WithdrawalStatus.FAILED
REJECTED = WithdrawalStatus.REJECTED

log = logging.getLogger(__name__)


class WithdrawalRefused(FieldRefusal):
    """A withdrawal that cannot be made as asked; nothing was held."""

    title = "Cannot withdraw that"


class WithdrawalConflict(SomaError):
    """A move the withdrawal's status no longer allows (another admin, or a provider, was first)."""

    status = 409
    title = "Withdrawal already moved on"


# Preview -----------------------------------------------------------------------------------


def review_reasons(quote: amounts.WithdrawalQuote, method: PayoutMethod, now: datetime) -> str:
    """Why a withdrawal waits for an admin whatever its rail ("" when it need not).

    A new method is a reason on every rail that moves money. The sandbox moves none, so
    a new test method does not wait: a teacher trying the flow adds one and withdraws at
    once (the $500 limit still applies there, so an admin's review can be tried too).
    """
    reasons = []
    if quote.over_review_limit:
        reasons.append(f"it is over {money.usd(amounts.REVIEW_ABOVE_CENTS)}")
    if rail_for(method.kind).moves_money and methods.is_new(method, now):
        reasons.append("its payout method was added less than 24 hours ago")
    return "; ".join(reasons)


def available_tokens(user_id: int) -> int:
    return db.session.scalar(select(Wallet.available).where(Wallet.user_id == user_id)) or 0


def preview(
    teacher: User, method_id: int | None, usd_cents: int, now: datetime | None = None
) -> tuple[amounts.WithdrawalQuote, PayoutMethod, str]:
    """What withdrawing `usd_cents` to the method would hold, cost and pay, and why it
    would wait for an admin; WithdrawalRefused if it cannot be made. Writes nothing."""
    now = now or clock.now()
    if teacher.role != Role.TEACHER:
        raise WithdrawalRefused("Only teachers withdraw their earnings.")
    refuse_if_frozen(teacher.id, "withdraw your earnings")
    method = methods.method_for(teacher, method_id) if method_id else None
    if method is None:
        raise WithdrawalRefused("Choose one of your payout methods.", "method")
    rail = rail_for(method.kind)
    if not rail.offered():
        raise WithdrawalRefused(rail.unavailable, "method")
    refusal = rail.refusal(method)
    if refusal:
        raise WithdrawalRefused(refusal, "method")
    pricing = get_token_pricing(PricingUserType.TEACHER, now)
    try:
        quote = amounts.quote(usd_cents, pricing.tokens, pricing.usd_cents)
    except amounts.AmountRefused as refused:
        raise WithdrawalRefused(str(refused), "amount") from None
    too_much = rail.amount_refusal(quote.net_cents)
    if too_much:
        raise WithdrawalRefused(too_much, "amount")
    available = available_tokens(teacher.id)
    if quote.tokens > available:
        raise WithdrawalRefused(
            f"{money.usd(usd_cents)} needs {money.tokens(quote.tokens)} and you have "
            f"{money.tokens(available)} available to withdraw.",
            "amount",
        )
    return quote, method, review_reasons(quote, method, now)


def waits_for_admin(method: PayoutMethod, review_reason: str) -> bool:
    return bool(review_reason) or not rail_for(method.kind).automatic


# Request -----------------------------------------------------------------------------------


RATE_CHANGED = "The rate changed since you reviewed this withdrawal: review it again."


def request(
    teacher: User,
    method_id: int | None,
    usd_cents: int,
    key: str,
    now: datetime | None = None,
    *,
    confirmed_tokens: int | None = None,
    confirmed_kes: int | None = None,
) -> Withdrawal:
    """Record the withdrawal and hold its tokens, in one transaction; a repeated `key`
    returns the first withdrawal (KeyReused if it asked for something else).

    `confirmed_tokens` (and `confirmed_kes`, None when no shillings were shown) are what
    the confirmation page quoted: the rate may have moved since, and the teacher agreed to
    hold those tokens for those shillings, not others. A quote that differs now is refused
    and nothing is held. (Callers with no confirmation page leave them None.)

    With no admin to wait for on an automatic rail it goes straight to processing,
    and its rail is asked to send it once that has committed.
    """
    existing = _by_key(key)
    if existing is not None:
        return _repeat(existing, teacher, method_id, usd_cents)
    now = now or clock.now()
    quote, method, reason = preview(teacher, method_id, usd_cents, now)
    amount_kes = rail_for(method.kind).local_amount(quote.net_cents)
    if confirmed_tokens is not None and (confirmed_tokens, confirmed_kes) != (
        quote.tokens,
        amount_kes,
    ):
        raise WithdrawalRefused(RATE_CHANGED, "amount")
    proceeds = not waits_for_admin(method, reason)
    withdrawal = Withdrawal(
        key=key,
        user_id=teacher.id,
        method_id=method.id,
        usd_cents=quote.usd_cents,
        tokens=quote.tokens,
        fee_cents=quote.fee_cents,
        net_cents=quote.net_cents,
        fee_tokens=quote.fee_tokens,
        status=(PROCESSING if proceeds else REQUESTED).value,
        review_reason=reason[:255],
        created_at=now,
        updated_at=now,
        processing_at=now if proceeds else None,
        amount_kes=amount_kes,
    )
    db.session.add(withdrawal)
    try:
        db.session.flush()
        hold = ledger.hold(
            teacher.id,
            quote.tokens,
            key=f"withdrawal:{withdrawal.id}:hold",
            kind=EntryKind.WITHDRAWAL_HOLD,
            reference=("withdrawal", withdrawal.id),
            memo=f"Withdrawal #{withdrawal.id} of {money.usd(quote.usd_cents)}",
            now=now,
        )
        # After the hold's wallet lock (soma.auth.freeze): a freeze committing meanwhile
        # is seen here, or waits until this withdrawal has committed.
        refuse_if_frozen(teacher.id, "withdraw your earnings", lock=True)
        withdrawal.hold_entry_id = hold.id
        _history(withdrawal, None, REQUESTED, "teacher", note=_waiting_note(method, reason), at=now)
        if proceeds:
            _history(withdrawal, REQUESTED, PROCESSING, f"rail:{method.kind}", at=now)
        withdrawal_id = withdrawal.id
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        existing = _by_key(key)  # the same form, sent twice at once: the other one won
        if existing is None:
            raise
        return _repeat(existing, teacher, method_id, usd_cents)
    except ledger.InsufficientTokens as short:
        db.session.rollback()
        raise WithdrawalRefused(
            f"{money.usd(usd_cents)} needs {money.tokens(short.needed)} and you have "
            f"{money.tokens(short.available)} available to withdraw.",
            "amount",
        ) from None
    except BaseException:
        db.session.rollback()
        raise
    if proceeds:
        send(withdrawal_id)
    return fresh(withdrawal_id)


def _waiting_note(method: PayoutMethod, reason: str) -> str:
    if reason:
        return f"Waits for an admin: {reason}."
    if not rail_for(method.kind).automatic:
        return "Waits for an admin to send the transfer."
    return ""


def _by_key(key: str) -> Withdrawal | None:
    return db.session.scalars(select(Withdrawal).where(Withdrawal.key == key)).first()


def _repeat(existing: Withdrawal, teacher: User, method_id, usd_cents: int) -> Withdrawal:
    """The first withdrawal a form's key made, if this is the same request again."""
    if existing.user_id != teacher.id:
        raise WithdrawalRefused("This form was already used. Reload the page.")
    if (existing.method_id, existing.usd_cents) != (method_id, usd_cents):
        raise KeyReused(
            "This form was already used for another withdrawal "
            f"(#{existing.id}). Reload the withdrawal page to start a new one."
        )
    return existing


# Reading -----------------------------------------------------------------------------------


def withdrawal_for(user: User, withdrawal_id: int) -> Withdrawal | None:
    """The withdrawal if it is `user`'s (or `user` is an admin); None otherwise (404)."""
    return owned(Withdrawal, user, withdrawal_id)


def withdrawals_of(user: User, limit: int = 50) -> list[Withdrawal]:
    return list(
        db.session.scalars(
            select(Withdrawal)
            .where(Withdrawal.user_id == user.id)
            .order_by(Withdrawal.id.desc())
            .limit(limit)
        )
    )


def events_of(withdrawal_ids: list[int]) -> dict[int, list[WithdrawalEvent]]:
    """Each withdrawal's history, oldest first."""
    found: dict[int, list[WithdrawalEvent]] = {wid: [] for wid in withdrawal_ids}
    if withdrawal_ids:
        for event in db.session.scalars(
            select(WithdrawalEvent)
            .where(WithdrawalEvent.withdrawal_id.in_(withdrawal_ids))
            .order_by(WithdrawalEvent.id)
        ):
            found[event.withdrawal_id].append(event)
    return found


def fresh(withdrawal_id: int) -> Withdrawal:
    return db.session.scalars(
        select(Withdrawal)
        .where(Withdrawal.id == withdrawal_id)
        .execution_options(populate_existing=True)
    ).one()


# Moves -------------------------------------------------------------------------------------


def _history(
    withdrawal: Withdrawal,
    from_status: WithdrawalStatus | None,
    to: WithdrawalStatus,
    source: str,
    actor_id: int | None = None,
    note: str = "",
    at: datetime | None = None,
) -> None:
    db.session.add(
        WithdrawalEvent(
            withdrawal_id=withdrawal.id,
            from_status=from_status.value if from_status else None,
            to_status=to.value,
            actor_id=actor_id,
            source=source[:64],
            note=note[:255],
            at=at or clock.now(),
        )
    )


def _move(
    withdrawal: Withdrawal,
    to: WithdrawalStatus,
    source: str,
    actor_id: int | None = None,
    note: str = "",
    **values,
) -> datetime:
    """Compare-and-set the withdrawal (as read, locked) to `to` with its history row;
    transitions.Stale if it changed meanwhile. Returns the time of the move."""
    now = clock.now()
    transitions.change(
        withdrawal,
        {"status": to.value, "updated_at": now, **values},
        WithdrawalEvent(
            withdrawal_id=withdrawal.id,
            from_status=withdrawal.status,
            to_status=to.value,
            actor_id=actor_id,
            source=source[:64],
            note=note[:255],
            at=now,
        ),
    )
    return now


def _locked(withdrawal_id: int) -> Withdrawal:
    return transitions.locked(Withdrawal, withdrawal_id)


def proceed(
    withdrawal_id: int,
    source: str,
    actor_id: int | None = None,
    note: str = "",
    admin: User | None = None,
) -> bool:
    """Move a requested withdrawal to processing (an admin's approval); True if this call
    moved it, and then its rail is asked to send it. WithdrawalConflict if it is past that.
    With `admin`, the action record is written in the same transaction as the move."""

    def work() -> bool:
        withdrawal = _locked(withdrawal_id)
        if withdrawal.status != REQUESTED:
            raise WithdrawalConflict(
                f"Withdrawal #{withdrawal_id} is already {withdrawal.status_label.lower()}: "
                "someone else acted on it first. Nothing more was done."
            )
        rail = rail_for(withdrawal.method.kind)
        if not rail.offered():
            raise WithdrawalConflict(
                f"Withdrawal #{withdrawal_id} cannot be sent: {rail.unavailable} "
                "Reject it instead; its tokens go back to the teacher."
            )
        # Asked for before a freeze: a frozen teacher's money does not leave, whoever
        # approves. (Share-locked: a freeze committing now is seen, or waits for this.)
        if freeze.is_frozen(withdrawal.user_id, lock=True):
            raise WithdrawalConflict(
                f"The teacher's account is frozen, so withdrawal #{withdrawal_id} cannot be "
                "approved. Reject it (its tokens go back to the teacher), or unfreeze the "
                "account first."
            )
        before = withdrawal.status
        _move(withdrawal, PROCESSING, source, actor_id, note, processing_at=clock.now())
        if admin is not None:
            actions.record(
                admin,
                "approve_withdrawal",
                "withdrawal",
                withdrawal_id,
                {"status": before},
                {"status": PROCESSING.value},
            )
        return True

    moved = transitions.retrying(work, "This withdrawal")
    send(withdrawal_id)
    return moved


def approve(withdrawal_id: int, admin: User) -> bool:
    """An admin lets a requested withdrawal go on to its rail."""
    return proceed(withdrawal_id, f"admin:{admin.id}", admin.id, "Approved", admin=admin)


def send(withdrawal_id: int) -> None:
    """Ask the withdrawal's rail to send it (it just moved to processing), and apply
    what the rail already knows. Called after the move has committed."""
    withdrawal = _detached(fresh(withdrawal_id))
    db.session.rollback()  # no transaction open while a provider is called
    if withdrawal.status != PROCESSING:
        return
    kind = withdrawal.method.kind
    outcome = rail_for(kind).send(withdrawal)
    if outcome is not None:
        apply(withdrawal_id, outcome, f"rail:{kind}")


def _detached(withdrawal: Withdrawal) -> Withdrawal:
    """The withdrawal and its method as read now, apart from the session: a rail reads
    them with no transaction open, and nothing it does to them is written.

    Several withdrawals may share one method (the sweeper reads them together): the first
    detaches it, and the others keep the same detached method rather than expunging it
    twice (which raises, before the sweeper's commit, on every pass).
    """
    method = withdrawal.method
    for instance in (withdrawal, method):
        if instance in db.session:
            db.session.expunge(instance)
    return withdrawal


def by_request_id(provider_request_id: str) -> Withdrawal | None:
    """The withdrawal a provider's callback is about, by the id its request was given."""
    return db.session.scalars(
        select(Withdrawal).where(Withdrawal.provider_request_id == provider_request_id)
    ).first()


def apply(withdrawal_id: int, outcome: Outcome, source: str) -> Withdrawal:
    """Apply a rail's outcome through the one paid path or the one failed path."""
    if outcome.paid:
        return mark_paid(withdrawal_id, source, outcome.reference)
    return mark_failed(withdrawal_id, source, outcome.reason)


def mark_paid(
    withdrawal_id: int,
    source: str,
    reference: str,
    actor_id: int | None = None,
    note: str = "",
    admin: User | None = None,
) -> Withdrawal:
    """The money reached the teacher: retire the held tokens (fee to fees, the rest to
    redemption), once. A repeat finds it paid and does nothing; WithdrawalConflict if it
    was failed or rejected (its tokens are back with the teacher) or never approved.
    With `admin` (marked paid by hand), the action record joins the same transaction."""

    def work() -> None:
        withdrawal = _locked(withdrawal_id)
        if withdrawal.status == PAID:
            return
        if withdrawal.status != PROCESSING:
            raise WithdrawalConflict(
                f"Withdrawal #{withdrawal_id} is {withdrawal.status_label.lower()}, "
                "so it cannot be marked paid."
            )
        now = _move(
            withdrawal,
            PAID,
            source,
            actor_id,
            note or (f"Reference {reference}" if reference else ""),
            provider_reference=reference[:255] or None,
            finished_at=clock.now(),
        )
        entry = ledger.retire(
            withdrawal.hold_entry_id,
            withdrawal.fee_tokens,
            key=f"withdrawal:{withdrawal_id}:paid",
            holder_id=withdrawal.user_id,
            held=withdrawal.tokens,
            reference=("withdrawal", withdrawal_id),
            memo=f"Withdrawal #{withdrawal_id}: {money.usd(withdrawal.net_cents)} paid out",
            actor_id=actor_id,
            now=now,
        )
        _closed_by(withdrawal_id, entry.id)
        if admin is not None:
            actions.record(
                admin,
                "pay_withdrawal",
                "withdrawal",
                withdrawal_id,
                {"status": PROCESSING.value, "provider_reference": None},
                {"status": PAID.value, "provider_reference": reference[:255] or None},
            )
        notify(
            withdrawal.user_id,
            "withdrawal_paid",
            f"Your withdrawal #{withdrawal_id} was paid: {money.usd(withdrawal.net_cents)} "
            f"sent ({money.usd(withdrawal.fee_cents)} fee).",
            link=f"/withdrawals/{withdrawal_id}",
        )

    transitions.retrying(work, "This withdrawal")
    return fresh(withdrawal_id)


def mark_failed(
    withdrawal_id: int, source: str, reason: str, actor_id: int | None = None
) -> Withdrawal:
    """The payout definitely did not happen: give the tokens back, once. Never call it
    for an outcome that is unknown (a time-out): ask the provider first."""
    return _close_by_release(withdrawal_id, (PROCESSING,), FAILED, source, reason, actor_id)


def rejectable_while_processing(method_kind: str) -> bool:
    """Whether an admin may reject a processing withdrawal to a method of this kind.

    A bank transfer is sent by hand, so until it is marked paid it may be rejected. An
    automatic rail that moves no money (the sandbox) pays only while it is offered: once it
    is not (SOMA_ENV became production) nothing would ever close it, and nothing can have
    left, so an admin may. Never a processing Stripe or M-Pesa one: it may have been sent,
    and only the provider's answer closes it (mark_paid / mark_failed).
    """
    rail = rail_for(method_kind)
    if rail.manual:
        return True
    return rail.automatic and not rail.moves_money and not rail.offered()


def rejectable(withdrawal: Withdrawal) -> bool:
    """Whether an admin may reject the withdrawal now (what the admin page offers)."""
    if withdrawal.status == REQUESTED.value:
        return True
    return withdrawal.status == PROCESSING.value and rejectable_while_processing(
        withdrawal.method.kind
    )


def reject(withdrawal_id: int, admin: User, reason: str) -> Withdrawal:
    """An admin refuses a withdrawal: a requested one, a bank transfer approved but not
    sent, or a processing one stranded on a rail no longer offered that moves no money
    (rejectable_while_processing). Its tokens go back to the teacher, once."""
    reason = reason.strip()
    if not reason:
        raise WithdrawalRefused("Say why the withdrawal is rejected.", "reason")
    withdrawal = fresh(withdrawal_id)
    allowed = [REQUESTED]
    if rejectable_while_processing(withdrawal.method.kind):
        allowed.append(PROCESSING)
    return _close_by_release(
        withdrawal_id, tuple(allowed), REJECTED, f"admin:{admin.id}", reason, admin.id, admin
    )


def _close_by_release(
    withdrawal_id: int,
    allowed: tuple[WithdrawalStatus, ...],
    to: WithdrawalStatus,
    source: str,
    reason: str,
    actor_id: int | None,
    admin: User | None = None,
) -> Withdrawal:
    def work() -> None:
        withdrawal = _locked(withdrawal_id)
        if withdrawal.status == to:
            return
        if withdrawal.status not in allowed:
            raise WithdrawalConflict(
                f"Withdrawal #{withdrawal_id} is {withdrawal.status_label.lower()}, "
                f"so it cannot be marked {to.value}."
            )
        before = withdrawal.status
        now = _move(
            withdrawal,
            to,
            source,
            actor_id,
            reason,
            failure_reason=reason[:255],
            finished_at=clock.now(),
        )
        entry = ledger.release(
            withdrawal.hold_entry_id,
            key=f"withdrawal:{withdrawal_id}:release",
            kind=EntryKind.WITHDRAWAL_RELEASE,
            holder_id=withdrawal.user_id,
            held=withdrawal.tokens,
            reference=("withdrawal", withdrawal_id),
            memo=f"Withdrawal #{withdrawal_id} {to.value}: tokens returned",
            actor_id=actor_id,
            now=now,
        )
        _closed_by(withdrawal_id, entry.id)
        if admin is not None:
            actions.record(
                admin,
                "reject_withdrawal" if to == REJECTED else f"{to.value}_withdrawal",
                "withdrawal",
                withdrawal_id,
                {"status": before},
                {"status": to.value},
                reason=reason[:500],
            )
        what = "was rejected" if to == REJECTED else "failed"
        notify(
            withdrawal.user_id,
            f"withdrawal_{to.value}",
            f"Your withdrawal #{withdrawal_id} {what}: {reason[:200]} "
            f"{money.tokens(withdrawal.tokens)} are back in your wallet.",
            link=f"/withdrawals/{withdrawal_id}",
        )

    transitions.retrying(work, "This withdrawal")
    return fresh(withdrawal_id)


def _closed_by(withdrawal_id: int, entry_id: int) -> None:
    db.session.execute(
        update(Withdrawal)
        .where(Withdrawal.id == withdrawal_id)
        .values(closed_entry_id=entry_id)
        .execution_options(synchronize_session=False)
    )


def reverse_paid(withdrawal_id: int, reversal_key: str, source: str, note: str) -> bool:
    """A paid withdrawal's money came back whole (Stripe reversed its transfer): its tokens
    return to the teacher's available balance (the fee's from fees, the rest from
    redemption), in one entry keyed by the reversal, once. The status stays paid (the
    paid entry stands; this entry undoes it) and `reversed_at` says it came back.

    True if this call gave them back; False if it was already reversed.
    WithdrawalConflict if it is not paid (nothing was retired, nothing to give back).
    """

    def work() -> bool:
        withdrawal = _locked(withdrawal_id)
        if withdrawal.reversed_at is not None:
            return False
        if withdrawal.status != PAID:
            raise WithdrawalConflict(
                f"Withdrawal #{withdrawal_id} is {withdrawal.status_label.lower()}, "
                "so there is no payout to reverse."
            )
        now = _move(withdrawal, PAID, source, note=note, reversed_at=clock.now())
        ledger.unretire(
            withdrawal.user_id,
            withdrawal.tokens,
            withdrawal.fee_tokens,
            key=f"withdrawal:{withdrawal_id}:reversal:{reversal_key}"[:200],
            retired_entry_id=withdrawal.closed_entry_id,
            reference=("withdrawal", withdrawal_id),
            memo=f"Withdrawal #{withdrawal_id} reversed: tokens returned",
            now=now,
        )
        notify(
            withdrawal.user_id,
            "withdrawal_reversed",
            f"The payout of your withdrawal #{withdrawal_id} was reversed: the money did not "
            f"stay with you, so its {money.tokens(withdrawal.tokens)} are back in your wallet.",
            link=f"/withdrawals/{withdrawal_id}",
        )
        return True

    return transitions.retrying(work, "This withdrawal")


def pay_by_admin(withdrawal_id: int, admin: User, reference: str) -> Withdrawal:
    """An admin marks a bank transfer paid, with the bank's reference."""
    reference = reference.strip()
    if not reference:
        raise WithdrawalRefused("Enter the bank's reference for the transfer.", "reference")
    withdrawal = fresh(withdrawal_id)
    if not rail_for(withdrawal.method.kind).manual:
        raise WithdrawalConflict(
            f"Withdrawal #{withdrawal_id} is paid by its provider, not by hand."
        )
    return mark_paid(withdrawal_id, f"admin:{admin.id}", reference, admin.id, admin=admin)


# The sweeper -------------------------------------------------------------------------------


def sweep(now: datetime | None = None, limit: int = 200) -> int:
    """Ask each processing withdrawal's rail about it, the least recently asked first, and
    apply what it says (the sandbox pays its own here). Returns how many were finished.

    Each withdrawal is on its own: one whose rail or outcome raises is logged and skipped,
    never starving the others. Its `checked_at` has advanced with the rest, so it goes to
    the back of the queue and is asked again on a later pass, after the others.
    """
    now = now or clock.now()
    found = list(
        db.session.scalars(
            select(Withdrawal)
            .where(Withdrawal.status == PROCESSING.value)
            .order_by(Withdrawal.checked_at.asc().nulls_first(), Withdrawal.id)
            .limit(limit)
            .options(selectinload(Withdrawal.method))
        )
    )
    if found:
        db.session.execute(
            update(Withdrawal)
            .where(Withdrawal.id.in_([withdrawal.id for withdrawal in found]))
            .values(checked_at=now)
            .execution_options(synchronize_session=False)
        )
    detached = [_detached(withdrawal) for withdrawal in found]
    db.session.commit()  # no transaction open while a provider is asked
    finished = 0
    for withdrawal in detached:
        kind = withdrawal.method.kind
        try:
            outcome = rail_for(kind).check(withdrawal, now)
            if outcome is not None:
                apply(withdrawal.id, outcome, f"sweeper:{kind}")
                finished += 1
        except Exception:
            db.session.rollback()  # whatever it left half done; the next one starts clean
            log.exception("Sweeper: withdrawal %s (%s) skipped this pass", withdrawal.id, kind)
    return finished


def processing_too_long(now: datetime | None = None) -> list[Withdrawal]:
    """Withdrawals processing for longer than WITHDRAWAL_PROCESSING_ALERT_MINUTES."""
    now = now or clock.now()
    limit = timedelta(minutes=current_app.config["WITHDRAWAL_PROCESSING_ALERT_MINUTES"])
    return list(
        db.session.scalars(
            select(Withdrawal)
            .where(
                Withdrawal.status == PROCESSING.value,
                Withdrawal.processing_at <= now - limit,
            )
            .order_by(Withdrawal.id)
        )
    )
