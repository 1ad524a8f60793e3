"""Buying through Stripe Checkout: sessions, the success page, and the webhook's events.

Every confirmation ends in `service.fulfil`, `fail` or `expire`, which act once
per purchase whoever calls; every refund and dispute in `reversals.report`,
which folds any number of reports, in any order, into one record each.
"""

from datetime import UTC, datetime, timedelta

from flask import current_app, url_for
from sqlalchemy import or_, select, update

from soma import clock
from soma.extensions import db
from soma.inputs import parse_id, text_fits
from soma.models import Provider, ProviderEvent, Purchase, PurchaseReversal, PurchaseStatus
from soma.payouts import stripe_events as payout_events
from soma.providers import inbox
from soma.providers import stripe as stripe_provider
from soma.purchases import reversals, service

# Stripe expires an unpaid Checkout Session after 24 hours; a pending purchase
# this much older than that is asked about.
SESSION_LIFETIME = timedelta(hours=24)
SESSION_ASK_AFTER = SESSION_LIFETIME + timedelta(hours=1)
NO_SESSION_LIMIT = timedelta(minutes=15)

SESSION_EVENTS = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
)
REFUND_EVENTS = ("charge.refund.updated", "refund.created", "refund.updated", "refund.failed")
DISPUTE_EVENTS = ("charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed")
ACTED_ON = frozenset((*SESSION_EVENTS, "charge.refunded", *REFUND_EVENTS, *DISPUTE_EVENTS))


def configured() -> bool:
    return stripe_provider.configured()


def start_checkout(purchase: Purchase) -> str:
    """Create the purchase's Checkout Session (once: keyed by the purchase); return its URL."""
    name = f"{purchase.tokens:,} Soma tokens"
    if purchase.bonus_tokens:
        name += f" + {purchase.bonus_tokens:,} bonus"
    ours = {"purchase_id": str(purchase.id)}
    session = stripe_provider.client().v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": purchase.currency.lower(),
                        "unit_amount": purchase.amount_minor,
                        "product_data": {"name": name},
                    },
                }
            ],
            "client_reference_id": str(purchase.id),
            "customer_email": purchase.user.email,
            "metadata": ours,
            "payment_intent_data": {"metadata": ours},
            "success_url": url_for("purchases.show", purchase_id=purchase.id, _external=True)
            + "?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": url_for(
                "purchases.show", purchase_id=purchase.id, cancelled=1, _external=True
            ),
        },
        options={"idempotency_key": f"soma-purchase-{purchase.id}"},
    )
    db.session.execute(
        update(Purchase)
        .where(Purchase.id == purchase.id)
        .values(checkout_session_id=session.id)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return session.url


def check_session(purchase: Purchase) -> Purchase:
    """The success page's check: ask Stripe about the session; fulfil if it is paid."""
    if purchase.status != PurchaseStatus.PENDING or not purchase.checkout_session_id:
        return purchase
    try:
        session = stripe_provider.client().v1.checkout.sessions.retrieve(
            purchase.checkout_session_id
        )
    except stripe_provider.StripeError:
        current_app.logger.warning("stripe: could not retrieve %s", purchase.checkout_session_id)
        return purchase
    return _apply_session(purchase, session.to_dict(), "stripe:success-page") or purchase


def handle_webhook(payload: bytes, signature: str | None) -> tuple[dict, int]:
    """Verify, classify, record once and act on one webhook event; the JSON answer and status.

    A bad signature is refused and kept nowhere. A signed event that is malformed (see
    `malformed`) is kept as ignored with the reason, and answered 400, before anything acts.
    """
    try:
        event = stripe_provider.verified_event(payload, signature, "STRIPE_WEBHOOK_SECRET")
    except stripe_provider.BadSignature:
        return {"error": "invalid payload or signature"}, 400
    except stripe_provider.Unreadable:
        return _refused(payload, "not JSON")
    problem = malformed(event)
    if problem is not None:
        return _refused(payload, problem, event.get("id") if isinstance(event, dict) else None)
    event_id, kind, obj = event["id"], event["type"], event["data"]["object"]
    answer = inbox.receive("stripe", event_id, kind, payload, lambda: _act(event_id, kind, obj))
    reply = {"received": True, "status": answer.value}
    if answer is inbox.Answer.DUPLICATE:
        reply["duplicate"] = True
    return reply, answer.http_status


def _refused(payload: bytes, problem: str, claimed_id=None) -> tuple[dict, int]:
    """Keep a signed but malformed body as ignored, with the problem; the 400 answer."""
    answer = inbox.refuse("stripe", payload, problem, claimed_id)
    return {"error": f"malformed event: {problem}", "status": answer.value}, answer.http_status


def malformed(event) -> str | None:
    """What makes a signed event unreadable, or None when Soma can act on it.

    Every value the handlers look up or store is checked here, against the column it
    meets: the event's id and type, its object's id, the payment intent, the purchase
    id in the metadata (an id the purchases table can hold), a refund's id and amount.
    """
    if not isinstance(event, dict):
        return "not a JSON object"
    if not inbox.storable_id(event.get("id")):
        return "no event id that fits (printable, not too long)"
    if not text_fits(event.get("type"), ProviderEvent.kind):
        return "no event type"
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        return "no data.object"
    if event["type"] in payout_events.TRANSFER_EVENTS:
        return payout_events.transfer_problem(obj)
    if event["type"] not in ACTED_ON:
        return None  # read no further: nothing is done with it (and a balance has no id)
    if not text_fits(obj.get("id"), Purchase.checkout_session_id):
        return "the object has no id"
    intent = obj.get("payment_intent")
    if intent is not None and not text_fits(intent, Purchase.payment_intent_id):
        return "a payment_intent that is not an id"
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return "metadata that is not an object"
    reference = (metadata or {}).get("purchase_id")
    if reference is not None and not isinstance(reference, str):
        return "a purchase_id in the metadata that is not text"
    if reference and reference.isascii() and reference.isdigit() and not _an_id(reference):
        return "a purchase id out of range"
    # (Other metadata and client references, such as another integration's on the same
    # Stripe account, are read as "not one of our purchases": ignored, answered 200.)
    if event["type"] == "charge.refunded" and not _listed_refunds_readable(obj):
        return "a refund without an id"
    if event["type"] in REFUND_EVENTS and not _refund_readable(obj):
        return "a refund without an id"
    return None


def _an_id(reference: str) -> bool:
    return parse_id(reference, Purchase.id) is not None


def _listed_refunds_readable(charge: dict) -> bool:
    """The refunds a charge lists (when it lists them) are each readable (see below)."""
    listed = charge.get("refunds")
    refunds = listed.get("data") if isinstance(listed, dict) else None
    return refunds is None or (isinstance(refunds, list) and all(map(_refund_readable, refunds)))


def _refund_readable(refund) -> bool:
    """A refund with an id its record can hold, and a whole amount if it has one."""
    amount = refund.get("amount") if isinstance(refund, dict) else None
    return (
        isinstance(refund, dict)
        and text_fits(refund.get("id"), PurchaseReversal.provider_ref)
        and (amount is None or (isinstance(amount, int) and not isinstance(amount, bool)))
    )


def _act(event_id: str, kind: str, obj: dict) -> None:
    source = f"stripe:{event_id}"
    if kind in SESSION_EVENTS:
        purchase = _purchase_of_session(obj)
        if purchase is None:
            raise inbox.Ignore(f"session {obj['id']} is not one of our purchases")
        if kind == "checkout.session.async_payment_failed":
            service.fail(purchase.id, source, "The payment was declined.")
        elif kind == "checkout.session.expired":
            service.expire(purchase.id, source)
        elif _apply_session(purchase, obj, source) is None:
            raise inbox.Ignore(f"session {obj['id']} is not paid in full")
        return
    if kind == "charge.refunded":
        purchase = _purchase_of_intent(obj.get("payment_intent"))
        listed = obj.get("refunds")
        refunds = listed.get("data") if isinstance(listed, dict) else None
        if refunds is None:  # not sent with the charge: ask Stripe for them
            refunds = _refunds_of(obj.get("payment_intent"))
        for refund in refunds if isinstance(refunds, list) else []:
            if isinstance(refund, dict) and isinstance(refund.get("id"), str):
                _report_refund(purchase, refund, source)
        return
    if kind in REFUND_EVENTS:
        _report_refund(_purchase_of_intent(obj.get("payment_intent")), obj, source)
        return
    if kind in DISPUTE_EVENTS:
        purchase = _purchase_of_intent(obj.get("payment_intent"))
        status = reversals.stripe_dispute_status(obj.get("status"))
        _report(purchase, obj["id"], status, obj.get("amount"), source)
        return
    if kind in payout_events.TRANSFER_EVENTS:  # a withdrawal's transfer (soma.payouts)
        payout_events.transfer_event(kind, obj, source)
        return
    raise inbox.Ignore(f"{kind}: nothing to do")


def _report_refund(purchase: Purchase, refund: dict, source: str) -> None:
    status = reversals.stripe_refund_status(refund.get("status"))
    created = refund.get("created")
    made_at = None
    if isinstance(created, int) and not isinstance(created, bool) and 0 < created < 2**33:
        made_at = datetime.fromtimestamp(created, UTC)
    _report(purchase, str(refund["id"]), status, refund.get("amount"), source, made_at)


def _report(purchase: Purchase, ref: str, status, amount, source: str, made_at=None) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount < 2**62:
        raise inbox.Ignore(f"{ref} has no amount")
    if not 0 < len(ref) <= 255:
        raise inbox.Ignore("a reference of 1 to 255 characters")
    try:
        reversals.report(purchase.id, ref, status, amount, source, made_at)
    except reversals.NotCreditedYet as error:
        # Its payment is not credited yet (the completed event is still on its
        # way): answer so that Stripe sends this again later.
        raise inbox.RetryLater(str(error)) from None
    except reversals.RefundRefused as refused:  # an id that is another purchase's
        raise inbox.Ignore(refused.message) from None


def _refunds_of(payment_intent: str | None) -> list[dict]:
    try:
        listed = stripe_provider.client().v1.refunds.list(
            params={"payment_intent": payment_intent, "limit": 100}
        )
    except stripe_provider.StripeError as error:
        raise inbox.RetryLater(f"cannot list the refunds of {payment_intent}") from error
    return [refund.to_dict() for refund in listed.data]


def _purchase_of_intent(payment_intent) -> Purchase:
    """The purchase a payment intent paid: by the stored id, else by the intent's metadata.

    inbox.Ignore if it is none of ours; RetryLater if Stripe cannot be asked now.
    """
    if not isinstance(payment_intent, str) or not payment_intent:
        raise inbox.Ignore("no payment intent")
    purchase = db.session.scalars(
        select(Purchase).where(
            Purchase.payment_intent_id == payment_intent, Purchase.provider == Provider.STRIPE
        )
    ).first()
    if purchase is not None:
        return purchase
    try:
        intent = stripe_provider.client().v1.payment_intents.retrieve(payment_intent)
    except stripe_provider.StripeError as error:
        raise inbox.RetryLater(f"cannot read payment intent {payment_intent}") from error
    found = _ours(intent.to_dict().get("metadata"))
    if found is None:
        raise inbox.Ignore(f"payment {payment_intent} is not one of our purchases")
    return found


def _ours(metadata, fallback=None) -> Purchase | None:
    reference = (metadata if isinstance(metadata, dict) else {}).get("purchase_id") or fallback
    purchase_id = parse_id(reference, Purchase.id)
    if purchase_id is None:
        return None
    found = db.session.get(Purchase, purchase_id)
    return found if found is not None and found.provider == Provider.STRIPE else None


def _purchase_of_session(session: dict) -> Purchase | None:
    purchase = _ours(session.get("metadata"), session.get("client_reference_id"))
    if purchase is None:
        return None
    if purchase.checkout_session_id not in (None, session["id"]):
        return None  # another session's event: never ours to credit
    return purchase


def _apply_session(purchase: Purchase, session: dict, source: str) -> Purchase | None:
    """Fulfil the purchase if the session is paid, in full, in its currency."""
    if session.get("payment_status") != "paid":
        return None  # paid later by an async method, or never: its own event says
    amount, currency = session.get("amount_total"), str(session.get("currency") or "").upper()
    if (amount, currency) != (purchase.amount_minor, purchase.currency):
        current_app.logger.error(
            "stripe: session %s paid %s %s for purchase %s of %s %s; not credited",
            session["id"],
            amount,
            currency,
            purchase.id,
            purchase.amount_minor,
            purchase.currency,
        )
        return None
    intent = session.get("payment_intent")
    return service.fulfil(
        purchase.id,
        source,
        checkout_session_id=session["id"],
        payment_intent_id=intent if isinstance(intent, str) else None,
    )


def recheck_stale(now: datetime | None = None, limit: int = 100) -> int:
    """The sweeper's pass: a pending Stripe purchase whose session should have expired is
    asked about (paid: credited; expired: expired); one whose session was never made
    expires. How many were settled."""
    if not configured():
        return 0
    now = now or clock.now()
    due = or_(
        Purchase.checkout_session_id.is_(None) & (Purchase.created_at <= now - NO_SESSION_LIMIT),
        Purchase.created_at <= now - SESSION_ASK_AFTER,
    )
    settled = 0
    for purchase in service.least_recently_checked(Provider.STRIPE, limit, due):
        if purchase.checkout_session_id is None:
            service.expire(purchase.id, "sweeper", "The card checkout was never opened.")
            settled += 1
            continue
        try:
            session = stripe_provider.client().v1.checkout.sessions.retrieve(
                purchase.checkout_session_id
            )
        except stripe_provider.StripeError:
            continue
        session = session.to_dict()
        if session.get("status") == "expired":
            service.expire(purchase.id, "stripe:sweeper")
            settled += 1
        elif _apply_session(purchase, session, "stripe:sweeper") is not None:
            settled += 1
    return settled
