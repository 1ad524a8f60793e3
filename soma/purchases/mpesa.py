"""M-Pesa purchases: the STK push, its callback, and the status query that confirms it.

The callback at POST /webhooks/mpesa/<secret>/stk is trusted only as far as
the secret in its path; a payment it reports is confirmed with Daraja's STK
status query before anything is credited. Each callback (its
CheckoutRequestID and result) is handled once; a receipt credits one purchase.
"""

import secrets
import time
from decimal import Decimal

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


def start_stk(purchase: Purchase) -> bool:
    """Ask the student's phone for their PIN, once per purchase; record the CheckoutRequestID.

    Returns False if another request (a double submit) is already pushing it.
    DarajaError if Daraja refuses or cannot be reached.
    """
    claim = f"claim:{secrets.token_hex(8)}"
    claimed = db.session.execute(
        update(Purchase)
        .where(Purchase.id == purchase.id, Purchase.checkout_request_id.is_(None))
        .values(checkout_request_id=claim)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    if claimed != 1:
        return False
    try:
        push = daraja.client().stk_push(
            purchase.phone, purchase.amount_minor, f"SOMA{purchase.id}", callback_url()
        )
    except daraja.DarajaError:
        # Daraja may have sent the prompt even so (a time-out after it accepted):
        # logged for an admin to reconcile with Safaricom's statement.
        current_app.logger.error(
            "mpesa: STK push for purchase %s failed; if the student paid anyway, reconcile by hand",
            purchase.id,
        )
        raise
    db.session.execute(
        update(Purchase)
        .where(Purchase.id == purchase.id, Purchase.checkout_request_id == claim)
        .values(checkout_request_id=push.checkout_request_id)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return True


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
        if not _confirm_and_fulfil(purchase, checkout_id, items):
            return  # not confirmed yet: not recorded, so a repeat (or the sweeper) tries again
    else:
        message = daraja.result_message(code, callback.get("ResultDesc", ""))
        service.fail(purchase.id, f"mpesa:{checkout_id}", message)
    db.session.add(ProviderEvent(provider=Provider.MPESA.value, event_id=event_id, kind="stk"))
    try:
        db.session.commit()
    except IntegrityError:  # the same callback, at the same moment, in another worker
        db.session.rollback()


def _confirm_and_fulfil(purchase: Purchase, checkout_id: str, items: dict) -> bool:
    """Credit a payment the callback reports, once the status query confirms it.

    Returns whether the callback is settled (credited, or refused for good);
    False when Daraja could not confirm it yet.
    """
    amount, receipt = items.get("Amount"), items.get("MpesaReceiptNumber")
    if amount is not None and Decimal(str(amount)) != purchase.amount_minor:
        current_app.logger.error(
            "mpesa: %s paid KES %s for purchase %s of KES %s; not credited",
            checkout_id,
            amount,
            purchase.id,
            purchase.amount_minor,
        )
        return True
    if receipt:
        owner = db.session.scalar(select(Purchase.id).where(Purchase.receipt == str(receipt)))
        if owner not in (None, purchase.id):
            current_app.logger.error(
                "mpesa: receipt %s already credited purchase %s; not %s",
                receipt,
                owner,
                purchase.id,
            )
            return True
    try:
        status = daraja.client().stk_status(checkout_id)
    except daraja.DarajaError:
        current_app.logger.warning("mpesa: could not confirm %s yet", checkout_id)
        return False
    if not status.paid:
        if status.final:
            current_app.logger.error(
                "mpesa: callback says %s paid, the status query says %s (%s)",
                checkout_id,
                status.result_code,
                status.result_desc,
            )
        return status.final
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
    return True


def recheck(purchase: Purchase) -> Purchase:
    """A pending purchase whose callback is late: ask Daraja (now and then) how it went."""
    checkout_id = purchase.checkout_request_id
    if (
        purchase.status != PurchaseStatus.PENDING
        or not checkout_id
        or checkout_id.startswith("claim:")
    ):
        return purchase
    now = time.monotonic()
    age = (service.clock.now() - purchase.created_at).total_seconds()
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
    if status.final:
        return service.fail(
            purchase.id, source, daraja.result_message(status.result_code, status.result_desc)
        )
    return purchase


def recheck_pending(limit: int = 100) -> int:
    """The sweeper's pass: ask Daraja about pending M-Pesa purchases whose callback is late,
    so a payment is credited even when nobody keeps the status page open. How many settled."""
    if not configured():
        return 0
    pending = db.session.scalars(
        select(Purchase)
        .where(Purchase.provider == Provider.MPESA, Purchase.status == PurchaseStatus.PENDING)
        .where(Purchase.checkout_request_id.is_not(None))
        .order_by(Purchase.id)
        .limit(limit)
    ).all()
    settled = 0
    for purchase in pending:
        if recheck(purchase).status != PurchaseStatus.PENDING:
            settled += 1
    return settled
