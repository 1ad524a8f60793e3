"""Stripe Connect's events about payouts: a connected account's readiness, its failed
payouts to its bank (the Connect endpoint), and reversed transfers (the platform's own
endpoint, dispatched here from soma.purchases.stripe_checkout).

Every event goes through the inbox (once per event id; an authentic body Soma cannot read
is kept as ignored and answered 400). Readiness comes only from Stripe (an event, or
the account as retrieved), never from the teacher's return from onboarding.
"""

from datetime import UTC, datetime

from flask import current_app
from sqlalchemy import select, update

from soma import money
from soma.alerts import payout_problem
from soma.extensions import db
from soma.inputs import parse_id
from soma.models import MethodKind, PayoutMethod, Withdrawal
from soma.notifications.service import notify
from soma.payouts import withdrawals
from soma.providers import inbox, stripe_connect
from soma.providers import stripe as stripe_provider

PROVIDER = "stripe-connect"
CONNECT_EVENTS = ("account.updated", "payout.failed")
TRANSFER_EVENTS = ("transfer.reversed",)


# The Connect endpoint ------------------------------------------------------------------


def handle_connect_webhook(payload: bytes, signature: str | None) -> tuple[dict, int]:
    """Verify (with the Connect endpoint's own secret), classify, record once and act."""
    try:
        event = stripe_connect.verified_connect_event(payload, signature)
    except stripe_provider.BadSignature:
        return {"error": "invalid payload or signature"}, 400
    except stripe_provider.Unreadable:
        return _refused(payload, "not JSON")
    try:
        envelope = stripe_connect.read_event(event, connect=True)
        if envelope.type == "account.updated":
            found = stripe_connect.read_account_updated(event)
        elif envelope.type == "payout.failed":
            found = stripe_connect.read_payout_failed(event)
        else:
            found = None
    except Malformed as problem:
        return _refused(payload, str(problem), event.get("id") if isinstance(event, dict) else None)

    def act() -> None:
        if envelope.livemode != stripe_connect.livemode_expected():
            raise inbox.Ignore("an event of the other mode (live or test)")
        if envelope.type == "account.updated":
            account_updated(found, envelope.created, envelope.object.get("metadata"))
        elif envelope.type == "payout.failed":
            payout_failed(found, envelope.created)
        else:
            raise inbox.Ignore(f"{envelope.type}: nothing to do")

    answer = inbox.receive(PROVIDER, envelope.id, envelope.type, payload, act)
    reply = {"received": True, "status": answer.value}
    if answer is inbox.Answer.DUPLICATE:
        reply["duplicate"] = True
    return reply, answer.http_status


Malformed = inbox.Malformed


def _refused(payload: bytes, problem: str, claimed_id=None) -> tuple[dict, int]:
    answer = inbox.refuse(PROVIDER, payload, problem, claimed_id)
    return {"error": f"malformed event: {problem}", "status": answer.value}, answer.http_status


def _method_of(account_id: str) -> PayoutMethod | None:
    return db.session.scalars(
        select(PayoutMethod).where(
            PayoutMethod.kind == MethodKind.STRIPE.value,
            PayoutMethod.stripe_account_id == account_id,
        )
    ).first()


def _at(created: int) -> datetime:
    return datetime.fromtimestamp(created, UTC)


def account_updated(
    readiness: stripe_connect.ConnectReadiness, created: int, metadata=None
) -> None:
    """Store the account's readiness on its method, unless a newer one is stored already
    (an event older than the stored one arrived late: it would undo what is known).

    An account made for one of our methods that has not stored its id yet (the event
    came before `connect_stripe` finished) is asked for again later, not dropped."""
    method = _method_of(readiness.account_id)
    if method is None:
        claimed = (metadata or {}).get("payout_method_id") if isinstance(metadata, dict) else None
        waiting = db.session.get(PayoutMethod, parse_id(claimed, PayoutMethod.id) or 0)
        if (
            waiting is not None
            and waiting.kind == MethodKind.STRIPE
            and not (waiting.stripe_account_id)
        ):
            raise inbox.RetryLater(f"method {waiting.id} has not stored its account yet")
        raise inbox.Ignore(f"account {readiness.account_id} is not one of our payout methods")
    if not store(method.id, readiness, _at(created)):
        raise inbox.Ignore("stale: a newer readiness of this account is stored")


def store(method_id: int, readiness: stripe_connect.ConnectReadiness, at: datetime) -> bool:
    """Write `readiness` as of `at` on the method if nothing newer is stored; commits.
    True if written (a compare on the stored time, in the UPDATE itself)."""
    written = db.session.execute(
        update(PayoutMethod)
        .where(
            PayoutMethod.id == method_id,
            (PayoutMethod.stripe_event_at.is_(None)) | (PayoutMethod.stripe_event_at <= at),
        )
        .values(
            transfers_active=readiness.transfers_active,
            payouts_enabled=readiness.payouts_enabled,
            requirements="; ".join(readiness.requirements)[:1000],
            stripe_event_at=at,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return written == 1


def payout_failed(failure: stripe_connect.PayoutFailure, created: int) -> None:
    """Show the teacher that their Stripe account's payout to their bank failed. The money
    is back in their Stripe balance (Stripe pays it out again once their bank details are
    fixed): no withdrawal or ledger change on our side."""
    method = _method_of(failure.account_id)
    if method is None:
        raise inbox.Ignore(f"account {failure.account_id} is not one of our payout methods")
    amount = (
        money.usd(failure.amount)
        if failure.currency == "usd"
        else f"{failure.amount} {failure.currency.upper()} (minor units)"
    )
    why = failure.failure_message or failure.failure_code or "no reason given"
    text = (
        f"Stripe could not pay {amount} out to your bank on {_at(created):%Y-%m-%d}: {why} "
        "The money is still in your Stripe balance: update your bank details with Stripe."
    )[:300]
    db.session.execute(
        update(PayoutMethod)
        .where(PayoutMethod.id == method.id)
        .values(payout_failure=text)
        .execution_options(synchronize_session=False)
    )
    notify(method.user_id, "stripe_payout_failed", text[:500], link="/payout-methods")
    db.session.commit()


# The platform endpoint: transfers ------------------------------------------------------


def transfer_problem(obj: dict) -> str | None:
    """What makes a transfer event's object unreadable, or None."""
    try:
        stripe_connect.read_transfer(obj)
    except Malformed as problem:
        return str(problem)
    return None


def transfer_event(kind: str, obj: dict, source: str) -> None:
    """`transfer.reversed`: a paid withdrawal's transfer came back whole -> its tokens are
    returned (`withdrawals.reverse_paid`), once. A partial reversal is left for an admin
    (logged as an alert): what part of the tokens it stands for is theirs to decide."""
    transfer = stripe_connect.read_transfer(obj)
    withdrawal = withdrawals.by_request_id(transfer.id)
    if withdrawal is None:
        claimed = parse_id(transfer.metadata.get("withdrawal_id"), Withdrawal.id)
        pending = db.session.get(Withdrawal, claimed) if claimed else None
        if pending is not None and pending.is_open and pending.method.kind == "stripe":
            # Its transfer is not recorded yet (the sweeper will): ask again later.
            raise inbox.RetryLater(f"withdrawal {pending.id} has not recorded {transfer.id}")
        raise inbox.Ignore(f"transfer {transfer.id} is not one of our withdrawals")
    if not transfer.reversed:
        current_app.logger.error(
            "PAYOUT ALERT: transfer %s of withdrawal %s was partly reversed (%s of %s cents): "
            "for an admin",
            transfer.id, withdrawal.id, transfer.amount_reversed, transfer.amount,
        )  # fmt: skip
        payout_problem(  # (committed with the event's record)
            withdrawal,
            f"stripe-partial-reversal:{transfer.id}:{transfer.amount_reversed}",
            f"Transfer {transfer.id} of withdrawal #{withdrawal.id} was partly reversed "
            f"({money.usd(transfer.amount_reversed)} of {money.usd(transfer.amount)}): "
            "decide what part of the tokens it stands for.",
        )
        raise inbox.Ignore(f"a partial reversal of {transfer.id}: left for an admin")
    try:
        withdrawals.reverse_paid(
            withdrawal.id,
            transfer.id,
            source,
            f"Stripe reversed transfer {transfer.id}: tokens returned",
        )
    except withdrawals.WithdrawalConflict as conflict:
        raise inbox.Ignore(str(conflict)) from None
