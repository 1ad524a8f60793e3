"""Buying through M-Pesa: the STK push, its callback, the status query, unmatched payments.

The callback at POST /webhooks/mpesa/<secret>/stk is trusted only as far as
the secret in its path; a payment it reports is confirmed with Daraja's STK
status query before anything is credited. Each callback (its
CheckoutRequestID and result) is recorded once; a receipt credits one purchase.

A push whose answer never came (a time-out) may still reach the phone, and the
student may pay: the purchase stays pending, and a paid callback for a request
we do not know is kept as an unmatched payment, never discarded, until
`reconcile` (`flask soma reconcile-mpesa`, or an admin) matches it
to its purchase and credits it through the same `service.fulfil`.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from flask import current_app, request
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from soma import clock
from soma.admin import actions
from soma.errors import SomaError
from soma.extensions import db
from soma.inputs import column_length, control_characters, text_fits
from soma.models import Provider, Purchase, PurchaseStatus, UnmatchedPayment, User
from soma.providers import daraja, inbox
from soma.purchases import service

# The status page asks Daraja itself, for a purchase still pending this long
# after its push (a lost callback), at most this often.
RECHECK_AFTER, RECHECK_EVERY = 30.0, 10.0
_last_check: dict[str, float] = {}  # by CheckoutRequestID
# An unmatched payment is matched to a purchase of its phone and amount made
# at most this long before it was paid.
MATCH_WINDOW = timedelta(hours=24)
NAIROBI = daraja.NAIROBI


class MatchRefused(SomaError):
    title = "Cannot match that payment"


def configured() -> bool:
    return service.mpesa_offered()


def callback_url() -> str:
    base = current_app.config.get("MPESA_CALLBACK_BASE") or request.url_root
    return f"{base.rstrip('/')}/webhooks/mpesa/{current_app.config['MPESA_CALLBACK_SECRET']}/stk"


def start_stk(purchase: Purchase) -> bool:
    """Ask the student's phone for their PIN, once per purchase; record Daraja's ids.

    Returns False if another request (a double submit) already pushed it.
    DarajaError if Daraja refused or was never reached (the purchase fails);
    OutcomeUnknown if the push may have gone out (the purchase stays pending).
    """
    claimed = db.session.execute(
        update(Purchase)
        .where(Purchase.id == purchase.id, Purchase.push_started_at.is_(None))
        .values(push_started_at=clock.now())
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    if claimed != 1:
        return False
    try:
        push = daraja.client().stk_push(
            purchase.phone, purchase.amount_minor, f"SOMA{purchase.id}", callback_url()
        )
    except daraja.OutcomeUnknown:
        current_app.logger.warning(
            "mpesa: no answer to the STK push of purchase %s; it stays pending, and a payment "
            "that comes is kept as unmatched and reconciled",
            purchase.id,
        )
        raise
    db.session.execute(
        update(Purchase)
        .where(Purchase.id == purchase.id, Purchase.checkout_request_id.is_(None))
        .values(
            checkout_request_id=push.checkout_request_id[:255],
            merchant_request_id=push.merchant_request_id[:255] or None,
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return True


@dataclass(frozen=True)
class StkCallback:
    """An STK callback as read, every value checked against what it meets."""

    checkout_id: str
    code: str
    desc: str
    items: dict


def handle_callback(body, raw: bytes | str) -> inbox.Answer:
    """Classify, record and act on one STK callback (`body` is the parsed JSON, if any).

    A malformed callback is kept as ignored with the reason, and answered 400: it is
    never acted on. If it was about a real payment, the purchase stays pending and the
    status query (the page's, or the sweeper's) credits it all the same.
    """
    try:
        callback = read_callback(body)
    except inbox.Malformed as malformed:
        claimed = _claimed_id(body)
        return inbox.refuse("mpesa", raw, str(malformed), claimed)
    return inbox.receive(
        "mpesa",
        f"{callback.checkout_id}:{callback.code}",
        "stk",
        raw,
        lambda: _act(callback.checkout_id, callback.code, callback.desc, callback.items),
    )


def _claimed_id(body):
    try:
        return body["Body"]["stkCallback"]["CheckoutRequestID"]
    except (KeyError, TypeError, IndexError):
        return None


def read_callback(body) -> StkCallback:
    """The STK callback in `body`; inbox.Malformed, with what is wrong, if it is not one."""
    callback = body.get("Body") if isinstance(body, dict) else None
    callback = callback.get("stkCallback") if isinstance(callback, dict) else None
    if not isinstance(callback, dict):
        raise inbox.Malformed("no Body.stkCallback")
    checkout_id = callback.get("CheckoutRequestID")
    if not text_fits(checkout_id, UnmatchedPayment.checkout_request_id):
        limit = column_length(UnmatchedPayment.checkout_request_id)
        raise inbox.Malformed(f"no CheckoutRequestID of 1 to {limit} printable characters")
    code = callback.get("ResultCode")
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code < 10**9:
        code = str(code)
    if not isinstance(code, str) or not (code.isascii() and code.isdigit()) or len(code) > 9:
        raise inbox.Malformed("no ResultCode")
    desc = callback.get("ResultDesc") or ""
    if not isinstance(desc, str) or control_characters(desc, multiline=True):
        raise inbox.Malformed("a ResultDesc that is not text")
    items = _items(callback.get("CallbackMetadata"))
    return StkCallback(checkout_id, code, " ".join(desc.split())[:200], items)


def _items(metadata) -> dict:
    """CallbackMetadata's items by name, the ones we use checked; Malformed if unreadable."""
    if metadata is None:
        return {}  # (a callback of a failed payment has none)
    items = metadata.get("Item") if isinstance(metadata, dict) else None
    if not isinstance(items, list) or not all(
        isinstance(item, dict) and isinstance(item.get("Name"), str) for item in items
    ):
        raise inbox.Malformed("CallbackMetadata.Item is not a list of named items")
    found = {item["Name"]: item.get("Value") for item in items}
    if found.get("Amount") is not None and _amount(found["Amount"]) is None:
        raise inbox.Malformed("an Amount that is not a positive whole number")
    receipt = found.get("MpesaReceiptNumber")
    if receipt is not None and not text_fits(receipt, UnmatchedPayment.receipt):
        raise inbox.Malformed("an MpesaReceiptNumber that is not a receipt")
    return found


def _act(checkout_id: str, code: str, desc: str, items: dict) -> None:
    purchase = db.session.scalars(
        select(Purchase).where(
            Purchase.checkout_request_id == checkout_id, Purchase.provider == Provider.MPESA
        )
    ).first()
    if purchase is None:
        if code != "0":
            raise inbox.Ignore(f"request {checkout_id} is not ours, and nothing was paid")
        _keep_unmatched(checkout_id, items)
        return
    if code != "0":
        service.fail(purchase.id, f"mpesa:{checkout_id}", daraja.result_message(code, desc))
        return
    _confirm_and_fulfil(purchase, checkout_id, items)


def _amount(value) -> int | None:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount != amount.to_integral_value() or not 0 < amount < 10**12:
        return None
    return int(amount)


def _paid_at(value) -> datetime:
    """M-Pesa's TransactionDate (20261124093012, Nairobi time) as UTC; now if unreadable."""
    try:
        local = datetime.strptime(str(value), "%Y%m%d%H%M%S").replace(tzinfo=NAIROBI)
    except ValueError:
        return clock.now()
    return local.astimezone(UTC)


def _keep_unmatched(checkout_id: str, items: dict) -> None:
    """A payment for a request we do not know: keep it for matching, never discard it."""
    receipt, amount = items.get("MpesaReceiptNumber"), _amount(items.get("Amount"))
    if not isinstance(receipt, str) or not 0 < len(receipt) <= 64 or amount is None:
        raise inbox.Ignore(f"a payment for unknown request {checkout_id} without receipt/amount")
    phone = str(items.get("PhoneNumber") or "")
    exists = db.session.scalar(
        select(UnmatchedPayment.id).where(UnmatchedPayment.receipt == receipt)
    )
    if exists is not None:
        return
    db.session.add(
        UnmatchedPayment(
            provider=Provider.MPESA.value,
            receipt=receipt,
            checkout_request_id=checkout_id,
            phone=phone[:16] if phone.isascii() and phone.isdigit() else None,
            amount_minor=amount,
            currency="KES",
            paid_at=_paid_at(items.get("TransactionDate")),
            received_at=clock.now(),
        )
    )
    db.session.commit()
    current_app.logger.warning(
        "mpesa: payment %s of KES %s for unknown request %s kept as unmatched",
        receipt,
        amount,
        checkout_id,
    )


def _confirm_and_fulfil(purchase: Purchase, checkout_id: str, items: dict) -> None:
    """Credit a payment the callback reports, once the status query confirms it.

    inbox.RetryLater when Daraja could not confirm it yet; inbox.Ignore when it is refused.
    """
    amount, receipt = items.get("Amount"), items.get("MpesaReceiptNumber")
    if amount is not None and _amount(amount) != purchase.amount_minor:
        # Money arrived, but not the price: never credited as the purchase (which fails,
        # so no status query credits it either), never lost: kept for an admin.
        _keep_unmatched(checkout_id, items)
        paid = f"KES {str(amount)[:20]}"
        service.fail(
            purchase.id,
            f"mpesa:{checkout_id}",
            f"M-Pesa reported {paid} paid, not the price; our staff will sort it out with you.",
        )
        raise inbox.Ignore(
            f"{checkout_id} paid {paid} for purchase {purchase.id} of "
            f"KES {purchase.amount_minor}; kept as an unmatched payment"
        )
    receipt = str(receipt)[:64] if receipt else None
    if receipt:
        owner = db.session.scalar(select(Purchase.id).where(Purchase.receipt == receipt))
        if owner not in (None, purchase.id):
            raise inbox.Ignore(f"receipt {receipt} already credited purchase {owner}")
    try:
        status = daraja.client().stk_status(checkout_id)
    except daraja.DarajaError as error:
        raise inbox.RetryLater(f"could not confirm {checkout_id} yet") from error
    if not status.paid:
        if status.final:
            raise inbox.Ignore(
                f"the callback says {checkout_id} paid; the status query says "
                f"{status.result_code} ({status.result_desc[:80]})"
            )
        raise inbox.RetryLater(f"{checkout_id} is still being processed")
    refs = {"receipt": receipt} if receipt else {}
    fulfilled = service.fulfil(purchase.id, f"mpesa:{checkout_id}", **refs)
    if receipt and fulfilled.receipt is None:  # paid earlier through the status query
        db.session.execute(
            update(Purchase)
            .where(Purchase.id == purchase.id, Purchase.receipt.is_(None))
            .values(receipt=receipt)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()


def recheck(purchase: Purchase) -> Purchase:
    """A pending purchase whose callback is late: ask Daraja (now and then) how it went."""
    checkout_id = purchase.checkout_request_id
    if purchase.status != PurchaseStatus.PENDING or not checkout_id:
        return purchase
    now = time.monotonic()
    age = (clock.now() - purchase.created_at).total_seconds()
    if age < RECHECK_AFTER or now - _last_check.get(checkout_id, 0.0) < RECHECK_EVERY:
        return purchase
    _last_check[checkout_id] = now
    try:
        status = daraja.client().stk_status(checkout_id)
    except daraja.DarajaError:
        return purchase
    source = f"mpesa:query:{checkout_id}"
    if status.paid:
        return service.fulfil(purchase.id, source)
    if status.final:
        return service.fail(
            purchase.id, source, daraja.result_message(status.result_code, status.result_desc)
        )
    return purchase


def recheck_pending(limit: int = 100) -> int:
    """The sweeper's pass: ask Daraja about pending M-Pesa purchases whose callback is late,
    so a payment is credited even when nobody keeps the status page open. How many settled.

    Only purchases Daraja gave an id for are asked about (the others expire, see
    `service.expire_abandoned`), the least recently asked first, so a pile of
    purchases Daraja cannot answer for never hides a newer one.
    """
    if not configured():
        return 0
    pending = service.least_recently_checked(
        Provider.MPESA, limit, Purchase.checkout_request_id.is_not(None)
    )
    settled = 0
    for purchase in pending:
        if recheck(purchase).status != PurchaseStatus.PENDING:
            settled += 1
    return settled


# Unmatched payments ------------------------------------------------------------------------


def unmatched(limit: int = 100) -> list[UnmatchedPayment]:
    return list(
        db.session.scalars(
            select(UnmatchedPayment)
            .where(UnmatchedPayment.purchase_id.is_(None))
            .order_by(UnmatchedPayment.id)
            .limit(limit)
        )
    )


def candidates(payment: UnmatchedPayment) -> list[Purchase]:
    """The purchases `payment` may have paid: M-Pesa, not credited, of its phone and amount,
    pushed but with no Daraja id of their own, made in the day before it reached us."""
    return list(
        db.session.scalars(
            select(Purchase)
            .where(
                Purchase.provider == Provider.MPESA.value,
                Purchase.status.in_(service.PAYABLE),
                Purchase.checkout_request_id.is_(None),
                Purchase.push_started_at.is_not(None),  # a push went out, or may have
                Purchase.receipt.is_(None),
                Purchase.phone == payment.phone,
                Purchase.amount_minor == payment.amount_minor,
                # (by when it reached us: the phone's own clock may be off)
                Purchase.created_at <= payment.received_at,
                Purchase.created_at >= payment.received_at - MATCH_WINDOW,
            )
            .order_by(Purchase.id)
            .limit(10)
        )
    )


def match(payment_id: int, purchase_id: int, by: str, admin: User | None = None) -> Purchase:
    """Match an unmatched payment to the purchase it paid, and credit that purchase, in one
    transaction: one purchase per receipt, one receipt per purchase. MatchRefused if not.
    With `admin`, the action record is written in that same transaction."""
    payment = db.session.get(UnmatchedPayment, payment_id)
    purchase = db.session.get(Purchase, purchase_id)
    if payment is None or purchase is None:
        raise MatchRefused("No such payment or purchase.")
    if payment.purchase_id is not None:
        raise MatchRefused(f"Payment {payment.receipt} is already matched.")
    if purchase.provider != Provider.MPESA or purchase.status not in service.PAYABLE:
        raise MatchRefused(f"Purchase #{purchase.id} is not an M-Pesa purchase waiting to be paid.")
    if purchase.checkout_request_id not in (None, payment.checkout_request_id):
        raise MatchRefused(f"Purchase #{purchase.id} belongs to another M-Pesa request.")
    owner = _owner(payment)
    if owner is not None and owner != purchase.id:
        raise MatchRefused(
            f"Payment {payment.receipt} answers purchase #{owner}'s M-Pesa request; "
            "sort it out with that purchase."
        )
    if purchase.amount_minor != payment.amount_minor:
        raise MatchRefused(
            f"Purchase #{purchase.id} costs KES {purchase.amount_minor:,}; the payment was "
            f"KES {payment.amount_minor:,}."
        )
    try:
        confirmed = daraja.client().stk_status(payment.checkout_request_id)
    except daraja.DarajaError:
        raise MatchRefused("M-Pesa cannot confirm the payment right now; try again.") from None
    if not confirmed.paid:
        raise MatchRefused(
            f"M-Pesa does not confirm request {payment.checkout_request_id} as paid."
        )
    status_before = purchase.status

    def claim():
        taken = db.session.execute(
            update(UnmatchedPayment)
            .where(UnmatchedPayment.id == payment_id, UnmatchedPayment.purchase_id.is_(None))
            .values(purchase_id=purchase_id, matched_at=clock.now(), matched_by=by[:64])
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken != 1:
            raise MatchRefused(f"Payment {payment.receipt} is already matched.")
        if admin is not None:
            actions.record(
                admin,
                "match_payment",
                "unmatched_payment",
                payment_id,
                {"purchase_id": None, "purchase_status": status_before},
                {"purchase_id": purchase_id, "purchase_status": PurchaseStatus.PAID.value},
            )

    fulfilled = service.fulfil(
        purchase_id,
        f"mpesa:match:{by}"[:64],
        claim=claim,
        receipt=payment.receipt,
        checkout_request_id=payment.checkout_request_id,
    )
    if fulfilled.receipt != payment.receipt:
        raise MatchRefused(f"Purchase #{purchase_id} was paid meanwhile by another payment.")
    return fulfilled


def _owner(payment: UnmatchedPayment) -> int | None:
    """The purchase whose own M-Pesa request the payment answers, if one has it."""
    return db.session.scalar(
        select(Purchase.id).where(Purchase.checkout_request_id == payment.checkout_request_id)
    )


def reconcile(by: str = "reconcile") -> list[tuple[UnmatchedPayment, Purchase | None, str]]:
    """Match every unmatched payment that has exactly one candidate purchase; return what
    was done with each: (payment, purchase or None, what happened)."""
    done = []
    for payment in unmatched():
        owner = _owner(payment)
        if owner is not None:
            # It answers a request we know after all: a callback that came before the
            # push's answer (the purchase is then credited by its own status query), or
            # a payment of the wrong amount (that purchase failed; an admin decides).
            done.append((payment, None, f"answers purchase #{owner}'s request; match by hand"))
            continue
        found = candidates(payment)
        if len(found) != 1:
            why = "no purchase fits" if not found else f"{len(found)} purchases fit; match by hand"
            done.append((payment, None, why))
            continue
        try:
            done.append((payment, match(payment.id, found[0].id, by), "matched and credited"))
        except MatchRefused as refused:
            db.session.rollback()
            done.append((payment, None, refused.message))
        except IntegrityError:  # its receipt or request is another purchase's meanwhile
            db.session.rollback()
            done.append((payment, None, "its receipt or request is another purchase's"))
    return done
