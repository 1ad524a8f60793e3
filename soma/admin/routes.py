"""The admin area."""

from decimal import Decimal, InvalidOperation

import stripe
from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select

from soma import money
from soma.extensions import db
from soma.forms import ActionForm
from soma.models import Provider, Purchase, PurchaseEvent, Role, User
from soma.purchases import service as purchases
from soma.purchases import stripe_checkout
from soma.security import role_required

bp = Blueprint("admin", __name__, url_prefix="/admin")

USERS_PER_PAGE = 50


@bp.get("/")
@role_required(Role.ADMIN)
def index():
    """Overview of accounts by role."""
    counts = dict(db.session.execute(select(User.role, func.count()).group_by(User.role)).all())
    return render_template(
        "admin/index.html", counts={r.value: counts.get(r.value, 0) for r in Role}
    )


@bp.get("/users")
@role_required(Role.ADMIN)
def users():
    """List accounts, newest first, optionally of one role, a page at a time by id."""
    role = request.args.get("role") or None
    before = request.args.get("before", type=int)
    query = select(User).order_by(User.id.desc()).limit(USERS_PER_PAGE + 1)
    if role in {r.value for r in Role}:
        query = query.where(User.role == role)
    else:
        role = None
    if before:
        query = query.where(User.id < before)
    rows = db.session.scalars(query).all()
    page, more = rows[:USERS_PER_PAGE], len(rows) > USERS_PER_PAGE
    next_before = page[-1].id if more else None
    return render_template(
        "admin/users.html", users=page, role=role, roles=list(Role), next_before=next_before
    )


PURCHASES_PER_PAGE = 50


@bp.get("/purchases")
@role_required(Role.ADMIN)
def purchase_list():
    """Every purchase, newest first, a page at a time by id."""
    before = request.args.get("before", type=int)
    query = select(Purchase).order_by(Purchase.id.desc()).limit(PURCHASES_PER_PAGE + 1)
    if before:
        query = query.where(Purchase.id < before)
    rows = db.session.scalars(query).all()
    page = rows[:PURCHASES_PER_PAGE]
    next_before = page[-1].id if len(rows) > PURCHASES_PER_PAGE else None
    return render_template("admin/purchases.html", purchases=page, next_before=next_before)


def _purchase_page(purchase: Purchase, error: str | None = None, status: int = 200):
    events = db.session.scalars(
        select(PurchaseEvent)
        .where(PurchaseEvent.purchase_id == purchase.id)
        .order_by(PurchaseEvent.id)
    ).all()
    return render_template(
        "admin/purchase.html", purchase=purchase, events=events, error=error, form=ActionForm()
    ), status


@bp.get("/purchases/<int:purchase_id>")
@role_required(Role.ADMIN)
def purchase_detail(purchase_id: int):
    """A purchase, its history, and the refund form."""
    purchase = db.session.get(Purchase, purchase_id) or abort(404)
    return _purchase_page(purchase)


@bp.post("/purchases/<int:purchase_id>/refund")
@role_required(Role.ADMIN)
def refund(purchase_id: int):
    """Refund a purchase in full or in part: the provider first, then the tokens."""
    purchase = db.session.get(Purchase, purchase_id) or abort(404)
    if not ActionForm().validate_on_submit():
        return _purchase_page(purchase, "This form has expired. Reload the page.", 400)
    try:
        amount = _minor_units(request.form.get("amount", ""), purchase)
    except ValueError as error:
        return _purchase_page(purchase, str(error), 422)
    total = purchase.refunded_minor + amount
    source = f"admin:{current_user.id}"
    try:
        if purchase.provider == Provider.STRIPE:
            stripe_checkout.refund_payment(purchase, total)
        purchases.refund(purchase.id, total, source)
    except stripe.StripeError as error:
        current_app.logger.exception("stripe: refund of purchase %s failed", purchase.id)
        return _purchase_page(purchase, f"Stripe refused the refund: {error.user_message}", 502)
    except purchases.PurchaseRefused as error:
        return _purchase_page(purchase, error.message, 409)
    message = f"Refunded {money.amount(amount, purchase.currency)} of purchase #{purchase.id}."
    if purchase.provider == Provider.MPESA:
        message += (
            " The tokens are taken back; send the shillings back through M-Pesa yourself"
            " (Soma does not move M-Pesa money back)."
        )
    flash(message, "success")
    return redirect(url_for("admin.purchase_detail", purchase_id=purchase.id), 303)


def _minor_units(text: str, purchase: Purchase) -> int:
    """The refund asked for, in the purchase's minor units; ValueError with the reason."""
    left = purchase.amount_minor - purchase.refunded_minor
    if left <= 0:
        raise ValueError("This purchase is refunded in full; nothing is left to refund.")
    if not text.strip():
        return left  # the rest, in full
    try:
        amount = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        raise ValueError("Enter the amount to refund, such as 5.00.") from None
    minor = amount * 100 if purchase.currency == "USD" else amount
    if minor != minor.to_integral_value() or minor <= 0:
        raise ValueError("Enter a positive amount in whole cents, such as 5.00.")
    if minor > left:
        raise ValueError(f"At most {money.amount(left, purchase.currency)} is left to refund.")
    return int(minor)
