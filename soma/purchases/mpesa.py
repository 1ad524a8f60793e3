"""M-Pesa purchases: the STK push, its callback, and the status query that confirms it.

The callback at POST /webhooks/mpesa/<secret>/stk is trusted only as far as
the secret in its path; a payment it reports is confirmed with Daraja's STK
status query before anything is credited. Each callback (its
CheckoutRequestID and result) is handled once; a receipt credits one purchase.
"""

import time

from flask import current_app, request
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from soma.extensions import db
from soma.models import Provider, ProviderEvent, Purchase, PurchaseStatus
from soma.purchases import daraja, service

# The status page asks Daraja itself, for a purchase still pending this long
# after its push (a lost callback), at most this often.
RECHECK_AFTER, RECHECK_EVERY = 30.0, 10.0
_last_check: dict[str, float] = {}  # by CheckoutRequestID


def configured() -> bool:
    return daraja.configured() and service.kes_per_usd() is not None


def callback_url() -> str:
    base = current_app.config.get("MPESA_CALLBACK_BASE") or request.url_root
    return f"{base.rstrip('/')}/webhooks/mpesa/{current_app.config['MPESA_CALLBACK_SECRET']}/stk"


def start_stk(purchase: Purchase) -> str:
    """Ask the student's phone for their PIN; record the CheckoutRequestID. DarajaError if not."""
    push = daraja.client().stk_push(
        purchase.phone, purchase.amount_minor, f"SOMA{purchase.id}", callback_url()
    )
    db.session.execute(
        update(Purchase)
        .where(Purchase.id == purchase.id)
        .values(checkout_request_id=push.checkout_request_id)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return push.customer_message


def handle_callback(body: dict) -> None:
    """Act on one STK callback; ValueError if it is not one."""
    try:
        callback = body["Body"]["stkCallback"]
        checkout_id = str(callback["CheckoutRequestID"])
        code = str(callback["ResultCode"])
    except (KeyError, TypeError) as error:
        raise ValueError("not an STK callback") from error
    event_id = f"{checkout_id}:{code}"
    seen = db.session.scalar(
        select(ProviderEvent.id).where(
            ProviderEvent.provider == Provider.MPESA.value, ProviderEvent.event_id == event_id
        )
    )
    if seen is not None:
        return
    purchase = db.session.scalars(
        select(Purchase).where(
            Purchase.checkout_request_id == checkout_id, Purchase.provider == Provider.MPESA
        )
    ).first()
    if purchase is None:
        current_app.logger.warning("mpesa: callback for unknown request %s", checkout_id)
    elif code == "0":
        items = {
            item.get("Name"): item.get("Value")
            for item in (callback.get("CallbackMetadata") or {}).get("Item", [])
        }
        _confirm_and_fulfil(purchase, checkout_id, items)
    else:
        message = daraja.result_message(code, callback.get("ResultDesc", ""))
        service.fail(purchase.id, f"mpesa:{checkout_id}", message)
    db.session.add(ProviderEvent(provider=Provider.MPESA.value, event_id=event_id, kind="stk"))
    try:
        db.session.commit()
    except IntegrityError:  # the same callback, at the same moment, in another worker
        db.session.rollback()


def _confirm_and_fulfil(purchase: Purchase, checkout_id: str, items: dict) -> None:
    amount, receipt = items.get("Amount"), items.get("MpesaReceiptNumber")
    if amount is not None and int(float(amount)) != purchase.amount_minor:
        current_app.logger.error(
            "mpesa: %s paid KES %s for purchase %s of KES %s; not credited",
            checkout_id,
            amount,
            purchase.id,
            purchase.amount_minor,
        )
        return
    if receipt:
        owner = db.session.scalar(select(Purchase.id).where(Purchase.receipt == str(receipt)))
        if owner not in (None, purchase.id):
            current_app.logger.error(
                "mpesa: receipt %s already credited purchase %s; not %s",
                receipt,
                owner,
                purchase.id,
            )
            return
    status = daraja.client().stk_status(checkout_id)
    if not status.paid:
        current_app.logger.error(
            "mpesa: callback says %s paid, the status query says %s (%s)",
            checkout_id,
            status.result_code,
            status.result_desc,
        )
        return
    refs = {"receipt": str(receipt)} if receipt else {}
    fulfilled = service.fulfil(purchase.id, f"mpesa:{checkout_id}", **refs)
    if receipt and fulfilled.receipt is None:  # paid earlier through the status query
        db.session.execute(
            update(Purchase)
            .where(Purchase.id == purchase.id, Purchase.receipt.is_(None))
            .values(receipt=str(receipt))
            .execution_options(synchronize_session=False)
        )
        db.session.commit()


def recheck(purchase: Purchase) -> Purchase:
    """A pending purchase whose callback is late: ask Daraja (now and then) how it went."""
    if purchase.status != PurchaseStatus.PENDING or not purchase.checkout_request_id:
        return purchase
    now = time.monotonic()
    age = (service.clock.now() - purchase.created_at).total_seconds()
    checkout_id = purchase.checkout_request_id
    if age < RECHECK_AFTER or now - _last_check.get(checkout_id, 0.0) < RECHECK_EVERY:
        return purchase
    _last_check[checkout_id] = now
    try:
        status = daraja.client().stk_status(purchase.checkout_request_id)
    except daraja.DarajaError:
        return purchase
    source = f"mpesa:query:{purchase.checkout_request_id}"
    if status.paid:
        return service.fulfil(purchase.id, source)
    if status.result_code is not None:
        return service.fail(
            purchase.id, source, daraja.result_message(status.result_code, status.result_desc)
        )
    return purchase
