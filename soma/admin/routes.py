"""The admin area."""

import secrets

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from soma import money
from soma.admin.blueprint import bp
from soma.admin.confirm import confirmation, confirmed
from soma.extensions import db
from soma.forms import ActionForm
from soma.inputs import parse_id, plain_amount, query_id
from soma.models import (
    MethodKind,
    PayoutMethod,
    Purchase,
    PurchaseEvent,
    Role,
    UnmatchedPayment,
    Withdrawal,
    WithdrawalStatus,
)
from soma.models.payout import METHOD_LABELS
from soma.payouts import methods as payout_methods
from soma.payouts import withdrawals as withdrawal_service
from soma.payouts.forms import PaidWithdrawalForm, RejectWithdrawalForm
from soma.payouts.rails import rail_for
from soma.payouts.sealing import Unreadable
from soma.providers import stripe as stripe_provider
from soma.purchases import mpesa, reversals
from soma.security import role_required

PURCHASES_PER_PAGE = 50


@bp.get("/purchases")
@role_required(Role.ADMIN)
def purchase_list():
    """Every purchase, newest first, a page at a time by id."""
    before = request.args.get("before", type=query_id(Purchase.id))
    query = select(Purchase).order_by(Purchase.id.desc()).limit(PURCHASES_PER_PAGE + 1)
    if before:
        query = query.where(Purchase.id < before)
    rows = db.session.scalars(query).all()
    page = rows[:PURCHASES_PER_PAGE]
    next_before = page[-1].id if len(rows) > PURCHASES_PER_PAGE else None
    return render_template("admin/purchases.html", purchases=page, next_before=next_before)


def _purchase_page(
    purchase: Purchase, error: str | None = None, status: int = 200, key: str | None = None
):
    events = db.session.scalars(
        select(PurchaseEvent)
        .where(PurchaseEvent.purchase_id == purchase.id)
        .order_by(PurchaseEvent.id)
    ).all()
    found = reversals.reversals_of(purchase.id)
    return render_template(
        "admin/purchase.html",
        purchase=purchase,
        events=events,
        reversals=found,
        totals=reversals.totals(found),
        refundable=reversals.refundable(purchase, found),
        refund_key=key or secrets.token_urlsafe(16),
        error=error,
        form=ActionForm(),
    ), status


@bp.get("/purchases/<id(purchases):purchase_id>")
@role_required(Role.ADMIN)
def purchase_detail(purchase_id: int):
    """A purchase, its refunds and disputes, its history, and the refund form."""
    purchase = db.session.get(Purchase, purchase_id) or abort(404)
    return _purchase_page(purchase)


@bp.post("/purchases/<id(purchases):purchase_id>/refund")
@role_required(Role.ADMIN)
def refund(purchase_id: int):
    """Refund a purchase in full or in part: the money goes back first, then the tokens."""
    purchase = db.session.get(Purchase, purchase_id) or abort(404)
    if not ActionForm().validate_on_submit():
        return _purchase_page(purchase, "This form has expired. Reload the page.", 400)
    left = reversals.refundable(purchase, reversals.reversals_of(purchase.id))
    try:
        amount = _minor_units(request.form.get("amount", ""), purchase, left)
        key = request.form.get("key", "")
        if not confirmed():
            return _confirm_refund(purchase, amount, left)
        reversals.refund_by_admin(purchase.id, amount, current_user, key)
    except ValueError as error:
        return _purchase_page(purchase, str(error), 422)
    except stripe_provider.StripeError as error:
        current_app.logger.exception("stripe: refund of purchase %s failed", purchase.id)
        if stripe_provider.outcome_unknown(error):
            # It may have been made: the form keeps its key, so sending it again asks
            # Stripe for the same refund, never a second one.
            message = (
                "Stripe did not answer, so the refund may or may not have been made. "
                "Send the form again: it will not refund twice."
            )
            return _purchase_page(purchase, message, 502, key=request.form.get("key"))
        return _purchase_page(purchase, f"Stripe refused the refund: {error.user_message}", 502)
    except reversals.RefundRefused as error:
        db.session.rollback()
        return _purchase_page(purchase, error.message, 409)
    flash(
        f"Refunded {money.amount(amount, purchase.currency)} of purchase #{purchase.id}.", "success"
    )
    return redirect(url_for("admin.purchase_detail", purchase_id=purchase.id), 303)


def _confirm_refund(purchase: Purchase, amount: int, left: int):
    shown = money.amount(amount, purchase.currency)
    typed = f"{amount // 100}.{amount % 100:02d}" if purchase.currency == "USD" else str(amount)
    return confirmation(
        f"Refund purchase #{purchase.id}",
        [
            ("Student", f"{purchase.user.display_name} ({purchase.user.email})"),
            ("Paid", money.amount(purchase.amount_minor, purchase.currency)),
            ("Tokens bought", money.tokens(purchase.total_tokens)),
            ("Refund", shown),
            ("Left to refund after", money.amount(left - amount, purchase.currency)),
        ],
        f"Refund {shown}",
        url_for("admin.purchase_detail", purchase_id=purchase.id),
        warning="The money goes back to the student first, then the tokens it bought are "
        "taken back; tokens already spent are recorded as owed.",
        settle={"amount": typed},
    )


def _minor_units(text: str, purchase: Purchase, left: int) -> int:
    """The refund asked for, in the purchase's minor units; ValueError with the reason."""
    if left <= 0:
        raise ValueError("Nothing is left to refund on this purchase.")
    text = text.strip()
    if not text:
        return left  # the rest, in full
    try:
        amount = plain_amount(text)  # never NaN, an infinity or an exponent
    except ValueError:
        raise ValueError("Enter the amount to refund, such as 5.00.") from None
    minor = amount * 100 if purchase.currency == "USD" else amount
    if minor != minor.to_integral_value() or minor <= 0:
        raise ValueError("Enter a positive amount in whole cents, such as 5.00.")
    if minor > left:
        raise ValueError(f"At most {money.amount(left, purchase.currency)} is left to refund.")
    return int(minor)


# Unmatched M-Pesa payments ---------------------------------------------------------------


@bp.get("/payments/unmatched")
@role_required(Role.ADMIN)
def unmatched_payments():
    """M-Pesa payments for requests we did not know, with the purchases each may have paid."""
    payments = mpesa.unmatched()
    return render_template(
        "admin/unmatched.html",
        payments=[(payment, mpesa.candidates(payment)) for payment in payments],
        form=ActionForm(),
    )


@bp.post("/payments/unmatched/<id(unmatched_payments):payment_id>/match")
@role_required(Role.ADMIN)
def match_payment(payment_id: int):
    """Match an unmatched payment to the purchase it paid, and credit that purchase."""
    payment = db.session.get(UnmatchedPayment, payment_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    purchase_id = parse_id(request.form.get("purchase_id", "").strip().lstrip("#"), Purchase.id)
    if purchase_id is None:
        flash("Enter the number of the purchase this payment paid.", "error")
        return redirect(url_for("admin.unmatched_payments"), 303)
    if not confirmed():
        purchase = db.session.get(Purchase, purchase_id)
        if purchase is None:
            flash(f"There is no purchase #{purchase_id}.", "error")
            return redirect(url_for("admin.unmatched_payments"), 303)
        return confirmation(
            f"Match payment {payment.receipt}",
            [
                ("Payment", f"{money.kes(payment.amount_minor)}, receipt {payment.receipt}"),
                ("Purchase", f"#{purchase.id}: {money.tokens(purchase.total_tokens)}"),
                ("Student", f"{purchase.user.display_name} ({purchase.user.email})"),
                ("Purchase price", money.amount(purchase.amount_minor, purchase.currency)),
                ("Purchase status", purchase.status),
            ],
            f"Credit purchase #{purchase.id}",
            url_for("admin.unmatched_payments"),
            warning="M-Pesa is asked to confirm the payment; then the purchase's tokens are "
            "credited to the student. A match is not undone.",
        )
    try:
        purchase = mpesa.match(
            payment.id, purchase_id, f"admin:{current_user.id}", admin=current_user
        )
    except mpesa.MatchRefused as error:
        db.session.rollback()
        flash(error.message, "error")
        return redirect(url_for("admin.unmatched_payments"), 303)
    flash(f"Payment {payment.receipt} credited purchase #{purchase.id}.", "success")
    return redirect(url_for("admin.purchase_detail", purchase_id=purchase.id), 303)


# Withdrawals -------------------------------------------------------------------------------

WITHDRAWALS_PER_PAGE = 50


@bp.get("/withdrawals")
@role_required(Role.ADMIN)
def withdrawal_list():
    """The withdrawal queue: newest first, by status and method kind, a page at a time by id.

    Without a status filter, those waiting for an admin come first on their own list.
    """
    status = request.args.get("status") or None
    kind = request.args.get("method") or None
    before = request.args.get("before", type=query_id(Withdrawal.id))
    status = status if status in {s.value for s in WithdrawalStatus} else None
    kind = kind if kind in {k.value for k in MethodKind} else None
    query = (
        select(Withdrawal)
        .options(selectinload(Withdrawal.method), selectinload(Withdrawal.user))
        .order_by(Withdrawal.id.desc())
        .limit(WITHDRAWALS_PER_PAGE + 1)
    )
    if status:
        query = query.where(Withdrawal.status == status)
    if kind:
        query = query.join(PayoutMethod, PayoutMethod.id == Withdrawal.method_id).where(
            PayoutMethod.kind == kind
        )
    if before:
        query = query.where(Withdrawal.id < before)
    rows = db.session.scalars(query).all()
    page = rows[:WITHDRAWALS_PER_PAGE]
    next_before = page[-1].id if len(rows) > WITHDRAWALS_PER_PAGE else None
    return render_template(
        "admin/withdrawals.html",
        withdrawals=page,
        status=status,
        kind=kind,
        statuses=list(WithdrawalStatus),
        kinds=list(MethodKind),
        method_labels=METHOD_LABELS,
        next_before=next_before,
    )


def _withdrawal_page(withdrawal: Withdrawal, status: int = 200, reject=None, paid=None):
    rail = rail_for(withdrawal.method.kind)
    number = None
    if withdrawal.method.kind == MethodKind.BANK and withdrawal.is_open:
        try:
            number = payout_methods.account_number(withdrawal.method)
        except Unreadable:
            number = None  # (the page says it cannot be read; the number is never logged)
    return render_template(
        "admin/withdrawal.html",
        withdrawal=withdrawal,
        events=withdrawal_service.events_of([withdrawal.id])[withdrawal.id],
        rail=rail,
        rejectable=withdrawal_service.rejectable(withdrawal),
        account_number=number,
        action=ActionForm(),
        reject_form=reject or RejectWithdrawalForm(formdata=None),
        paid_form=paid or PaidWithdrawalForm(formdata=None),
    ), status


def _withdrawal_or_404(withdrawal_id: int) -> Withdrawal:
    withdrawal = withdrawal_service.withdrawal_for(current_user, withdrawal_id)
    if withdrawal is None:
        abort(404)
    return withdrawal


@bp.get("/withdrawals/<id(withdrawals):withdrawal_id>")
@role_required(Role.ADMIN)
def withdrawal_detail(withdrawal_id: int):
    """A withdrawal, its history, and the forms that approve, reject or mark it paid."""
    return _withdrawal_page(_withdrawal_or_404(withdrawal_id))


def _acted(withdrawal_id: int, message: str):
    flash(message, "success")
    return redirect(url_for("admin.withdrawal_detail", withdrawal_id=withdrawal_id), 303)


def _confirm_withdrawal(withdrawal: Withdrawal, title: str, button: str, warning: str, *extra):
    return confirmation(
        title,
        [
            ("Teacher", f"{withdrawal.user.display_name} ({withdrawal.user.email})"),
            ("Asked for", money.usd(withdrawal.usd_cents)),
            ("Fee", money.usd(withdrawal.fee_cents)),
            ("To send", money.usd(withdrawal.net_cents)),
            ("Tokens held", money.tokens(withdrawal.tokens)),
            ("Method", withdrawal.method.describe),
            ("Status now", withdrawal.status_label),
            *extra,
        ],
        button,
        url_for("admin.withdrawal_detail", withdrawal_id=withdrawal.id),
        warning=warning,
    )


def _withdrawal_page_with_error(withdrawal_id: int, message: str):
    flash(message, "error")
    return _withdrawal_page(_withdrawal_or_404(withdrawal_id), 409)


@bp.post("/withdrawals/<id(withdrawals):withdrawal_id>/approve")
@role_required(Role.ADMIN)
def approve_withdrawal(withdrawal_id: int):
    """Let a requested withdrawal go on to its rail (a bank transfer: to be sent by hand)."""
    withdrawal = _withdrawal_or_404(withdrawal_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    if not confirmed():
        if withdrawal.status != WithdrawalStatus.REQUESTED.value:
            return _withdrawal_page_with_error(
                withdrawal_id,
                f"Withdrawal #{withdrawal_id} is already {withdrawal.status_label.lower()}: "
                "someone else acted on it first. Nothing more was done.",
            )
        if withdrawal.user.is_frozen:
            return _withdrawal_page_with_error(
                withdrawal_id,
                f"The teacher's account is frozen, so withdrawal #{withdrawal_id} cannot be "
                "approved. Reject it (its tokens go back to the teacher), or unfreeze the "
                "account first.",
            )
        manual = rail_for(withdrawal.method.kind).manual
        return _confirm_withdrawal(
            withdrawal,
            f"Approve withdrawal #{withdrawal_id}",
            f"Approve withdrawal #{withdrawal_id}",
            f"You will send {money.usd(withdrawal.net_cents)} by bank transfer, then mark it paid."
            if manual
            else f"{money.usd(withdrawal.net_cents)} is sent to {withdrawal.method.describe} "
            "at once.",
        )
    try:
        withdrawal_service.approve(withdrawal_id, current_user)
    except withdrawal_service.WithdrawalConflict as error:
        return _withdrawal_page_with_error(withdrawal_id, error.message)
    return _acted(withdrawal_id, f"Withdrawal #{withdrawal_id} approved.")


@bp.post("/withdrawals/<id(withdrawals):withdrawal_id>/reject")
@role_required(Role.ADMIN)
def reject_withdrawal(withdrawal_id: int):
    """Reject a withdrawal, with the reason the teacher reads; its tokens go back."""
    withdrawal = _withdrawal_or_404(withdrawal_id)
    form = RejectWithdrawalForm()
    if not form.validate_on_submit():
        return _withdrawal_page(withdrawal, 422, reject=form)
    if not confirmed():
        if not withdrawal_service.rejectable(withdrawal):
            return _withdrawal_page_with_error(
                withdrawal_id,
                f"Withdrawal #{withdrawal_id} is {withdrawal.status_label.lower()}, so it "
                "cannot be rejected. Nothing was done.",
            )
        return _confirm_withdrawal(
            withdrawal,
            f"Reject withdrawal #{withdrawal_id}",
            f"Reject withdrawal #{withdrawal_id}",
            f"Nothing is sent; the {money.tokens(withdrawal.tokens)} go back to the teacher, "
            "who reads your reason.",
            ("Reason", form.reason.data),
        )
    try:
        withdrawal_service.reject(withdrawal_id, current_user, form.reason.data)
    except withdrawal_service.WithdrawalConflict as error:
        return _withdrawal_page_with_error(withdrawal_id, error.message)
    return _acted(withdrawal_id, f"Withdrawal #{withdrawal_id} rejected; its tokens went back.")


@bp.post("/withdrawals/<id(withdrawals):withdrawal_id>/paid")
@role_required(Role.ADMIN)
def pay_withdrawal(withdrawal_id: int):
    """Mark a bank transfer paid, with the bank's reference."""
    withdrawal = _withdrawal_or_404(withdrawal_id)
    form = PaidWithdrawalForm()
    if not form.validate_on_submit():
        return _withdrawal_page(withdrawal, 422, paid=form)
    if not confirmed():
        if withdrawal.status != WithdrawalStatus.PROCESSING.value:
            return _withdrawal_page_with_error(
                withdrawal_id,
                f"Withdrawal #{withdrawal_id} is {withdrawal.status_label.lower()}, so it "
                "cannot be marked paid. Nothing was done.",
            )
        return _confirm_withdrawal(
            withdrawal,
            f"Mark withdrawal #{withdrawal_id} paid",
            f"Mark withdrawal #{withdrawal_id} paid",
            f"Only once the bank has sent {money.usd(withdrawal.net_cents)}: this retires its "
            "tokens and tells the teacher. It is not undone.",
            ("Bank reference", form.reference.data),
        )
    try:
        withdrawal_service.pay_by_admin(withdrawal_id, current_user, form.reference.data)
    except withdrawal_service.WithdrawalConflict as error:
        return _withdrawal_page_with_error(withdrawal_id, error.message)
    return _acted(withdrawal_id, f"Withdrawal #{withdrawal_id} marked paid.")
