"""Stripe Checkout through the official `stripe` SDK: sessions, the webhook, the success page.

Configured by STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET and STRIPE_API_BASE (tests
point the last at a fake Stripe server). Every confirmation ends in
`service.fulfil`, `fail` or `expire`, which act once per purchase whoever calls.
"""

import stripe
from flask import current_app, url_for
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from soma.extensions import db
from soma.models import Provider, ProviderEvent, Purchase, PurchaseStatus
from soma.purchases import service


def configured() -> bool:
    config = current_app.config
    return bool(config.get("STRIPE_SECRET_KEY") and config.get("STRIPE_WEBHOOK_SECRET"))


def client() -> stripe.StripeClient:
    """The app's Stripe client, made once per app."""
    clients = current_app.extensions.setdefault("soma_stripe", {})
    if "client" not in clients:
        config = current_app.config
        base = config.get("STRIPE_API_BASE") or None
        clients["client"] = stripe.StripeClient(
            config["STRIPE_SECRET_KEY"],
            base_addresses={"api": base} if base else None,
            max_network_retries=2,
        )
    return clients["client"]


def start_checkout(purchase: Purchase) -> str:
    """Create the purchase's Checkout Session (once: keyed by the purchase); return its URL."""
    name = f"{purchase.tokens:,} Soma tokens"
    if purchase.bonus_tokens:
        name += f" + {purchase.bonus_tokens:,} bonus"
    ours = {"purchase_id": str(purchase.id)}
    session = client().v1.checkout.sessions.create(
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
        session = client().v1.checkout.sessions.retrieve(purchase.checkout_session_id)
    except stripe.StripeError:
        current_app.logger.warning("stripe: could not retrieve %s", purchase.checkout_session_id)
        return purchase
    return _apply_session(purchase, session.to_dict(), "stripe:success-page") or purchase


def handle_webhook(payload: bytes, signature: str | None) -> tuple[dict, int]:
    """Verify, record and act on one webhook event; return the JSON answer and status."""
    try:
        event = client().construct_event(
            payload, signature, current_app.config["STRIPE_WEBHOOK_SECRET"]
        )
    except (ValueError, stripe.SignatureVerificationError):
        return {"error": "invalid payload or signature"}, 400
    seen = db.session.scalar(
        select(ProviderEvent.id).where(
            ProviderEvent.provider == Provider.STRIPE.value, ProviderEvent.event_id == event.id
        )
    )
    if seen is not None:
        return {"received": True, "duplicate": True}, 200
    try:
        _act(event)
    except RetryLater as later:
        db.session.rollback()
        current_app.logger.info("stripe: %s; asking Stripe to send %s again", later, event.id)
        return {"received": True, "retry": True}, 503
    db.session.add(
        ProviderEvent(provider=Provider.STRIPE.value, event_id=event.id, kind=event.type)
    )
    try:
        db.session.commit()
    except IntegrityError:  # the same event, handled at the same moment by another worker
        db.session.rollback()
    return {"received": True}, 200


def _act(event) -> None:
    obj = event.data.object.to_dict()
    source = f"stripe:{event.id}"
    if event.type in (
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
        "checkout.session.expired",
    ):
        purchase = _purchase_of_session(obj)
        if purchase is None:
            current_app.logger.warning("stripe: %s for unknown session %s", event.type, obj["id"])
            return
        if event.type == "checkout.session.async_payment_failed":
            service.fail(purchase.id, source, "The payment was declined.")
        elif event.type == "checkout.session.expired":
            service.expire(purchase.id, source)
        else:
            _apply_session(purchase, obj, source)
        return
    if event.type in ("charge.refunded", "charge.dispute.created", "charge.dispute.closed"):
        purchase = _purchase_of_intent(obj.get("payment_intent"))
        if purchase is None:
            current_app.logger.warning(
                "stripe: %s for unknown payment %s", event.type, obj.get("payment_intent")
            )
            return
        if purchase.status not in service.CREDITED:
            # Its payment is not credited yet (the completed event is still on
            # its way): answer so that Stripe sends this again later.
            raise RetryLater(f"{event.type} before purchase {purchase.id} was credited")
        if event.type == "charge.refunded":
            service.refund(purchase.id, int(obj.get("amount_refunded") or 0), source)
        elif event.type == "charge.dispute.created":
            service.dispute_opened(purchase.id, obj["id"], int(obj.get("amount") or 0), source)
        else:
            # warning_closed: an inquiry that never became a chargeback; no money left.
            won = obj.get("status") in ("won", "warning_closed")
            service.dispute_closed(purchase.id, obj["id"], won, source)
        return
    current_app.logger.info("stripe: %s acknowledged; nothing to do", event.type)


class RetryLater(Exception):
    """An event that cannot be acted on yet; it is not recorded, and Stripe sends it again."""


def _purchase_of_intent(payment_intent: str | None) -> Purchase | None:
    """The purchase a payment intent paid: by the stored id, else by the intent's metadata."""
    if not payment_intent:
        return None
    purchase = db.session.scalars(
        select(Purchase).where(
            Purchase.payment_intent_id == payment_intent, Purchase.provider == Provider.STRIPE
        )
    ).first()
    if purchase is not None:
        return purchase
    try:
        intent = client().v1.payment_intents.retrieve(payment_intent)
    except stripe.StripeError as error:
        raise RetryLater(f"cannot read payment intent {payment_intent}") from error
    reference = (intent.to_dict().get("metadata") or {}).get("purchase_id")
    if not reference or not str(reference).isdigit():
        return None
    found = db.session.get(Purchase, int(reference))
    return found if found is not None and found.provider == Provider.STRIPE else None


def refund_payment(purchase: Purchase, refunded_total_minor: int) -> None:
    """Ask Stripe to refund up to `refunded_total_minor` in all (an admin's refund).

    The refund is keyed by the purchase and the total, so asking twice refunds once.
    """
    amount = refunded_total_minor - purchase.refunded_minor
    if amount <= 0 or not purchase.payment_intent_id:
        return
    # Keyed by where this refund starts: two admins refunding the same purchase at
    # once send the same key with different amounts, and Stripe refuses the second.
    client().v1.refunds.create(
        params={"payment_intent": purchase.payment_intent_id, "amount": amount},
        options={"idempotency_key": f"soma-refund-{purchase.id}-from-{purchase.refunded_minor}"},
    )


def _purchase_of_session(session: dict) -> Purchase | None:
    metadata = session.get("metadata") or {}
    reference = metadata.get("purchase_id") or session.get("client_reference_id")
    if not reference or not str(reference).isdigit():
        return None
    purchase = db.session.get(Purchase, int(reference))
    if purchase is None or purchase.provider != Provider.STRIPE:
        return None
    if purchase.checkout_session_id not in (None, session["id"]):
        return None  # another session's event: never ours to credit
    return purchase


def _apply_session(purchase: Purchase, session: dict, source: str) -> Purchase | None:
    """Fulfil the purchase if the session is paid, in full, in its currency."""
    if session.get("payment_status") != "paid":
        return None  # paid later by an async method, or never: its own event says
    amount, currency = session.get("amount_total"), (session.get("currency") or "").upper()
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
    return service.fulfil(
        purchase.id,
        source,
        checkout_session_id=session["id"],
        payment_intent_id=session.get("payment_intent"),
    )
