"""The buy page, the sandbox checkout, a purchase's status page, and the purchase history."""

import secrets

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for
from flask_login import current_user

from soma import clock
from soma.auth.freeze import AccountFrozen
from soma.forms import ActionForm
from soma.inputs import parse_id
from soma.ledger.pricing import get_token_pricing
from soma.models import PricingUserType, Provider, PurchaseStatus, Role, TokenPackage
from soma.providers import daraja
from soma.providers import sandbox as sandbox_provider
from soma.providers import stripe as stripe_provider
from soma.purchases import mpesa, reversals, service, stripe_checkout
from soma.purchases.forms import CUSTOM, BuyForm
from soma.security import role_required
from soma.wallet.service import wallet_summary

bp = Blueprint("purchases", __name__, url_prefix="/buy")


def _buy_page(form: BuyForm | None = None, status: int = 200):
    quotes = service.package_quotes()
    offered = service.providers()
    form = form or BuyForm(quotes=quotes, providers=offered)
    if not form.key.data:
        form.key.data = secrets.token_urlsafe(16)
    if not form.package.data and quotes:
        form.package.data = str(quotes[1].package_id if len(quotes) > 1 else quotes[0].package_id)
    return render_template(
        "purchases/buy.html",
        form=form,
        quotes=quotes,
        providers=offered,
        kes_rate=service.kes_per_usd(),
        summary=wallet_summary(current_user),
        custom_min=service.CUSTOM_MIN,
        custom_max=service.CUSTOM_MAX,
        rate=get_token_pricing(PricingUserType.STUDENT, clock.now()),
    ), status


@bp.get("/")
@role_required(Role.STUDENT)
def buy():
    """Packages, a custom amount, and the payment methods on offer."""
    return _buy_page()


@bp.post("/")
@role_required(Role.STUDENT)
def start():
    """Record the purchase and send the student to pay."""
    form = BuyForm(quotes=service.package_quotes(), providers=service.providers())
    if not form.validate_on_submit():
        return _buy_page(form, 422)
    try:
        if form.package.data == CUSTOM:
            if form.custom_tokens.data is None:
                raise service.PurchaseRefused("Enter how many tokens to buy.", "custom_tokens")
            chosen = service.quote(custom_tokens=form.custom_tokens.data)
        else:
            chosen = service.quote(package_id=_package_or_refuse(form.package.data))
        provider = _provider_or_refuse(form.provider.data)
        phone = None
        if provider == Provider.MPESA:
            try:
                phone = daraja.normalise_phone(form.phone.data or "")
            except daraja.InvalidPhone as error:
                raise service.PurchaseRefused(str(error), "phone") from None
        purchase = service.start(current_user, chosen, provider, form.key.data, phone=phone)
    except service.PurchaseRefused as error:
        field = getattr(form, error.field or "package")
        field.errors = [*field.errors, error.message]
        return _buy_page(form, 422)
    except AccountFrozen as error:
        form.form_errors.append(error.message)
        return _buy_page(form, error.status)
    if purchase.provider == Provider.SANDBOX:
        return redirect(url_for("purchases.sandbox", purchase_id=purchase.id), 303)
    if purchase.status != PurchaseStatus.PENDING:  # a double submit of a finished purchase
        return redirect(url_for("purchases.show", purchase_id=purchase.id), 303)
    if purchase.provider == Provider.MPESA:
        if purchase.push_started_at is None:
            try:
                mpesa.start_stk(purchase)  # (a double submit finds it claimed: no second push)
            except daraja.OutcomeUnknown:
                pass  # it may reach the phone: the status page waits, and asks
            except daraja.DarajaError:
                current_app.logger.exception("mpesa: no STK push for purchase %s", purchase.id)
                service.fail(purchase.id, "mpesa:push", "M-Pesa could not be reached.")
                form.phone.errors = ["M-Pesa is not answering right now. Please try again."]
                return _buy_page(form, 503)
        return redirect(url_for("purchases.show", purchase_id=purchase.id), 303)
    try:
        checkout_url = stripe_checkout.start_checkout(purchase)
    except stripe_provider.StripeError:
        current_app.logger.exception("stripe: no checkout session for purchase %s", purchase.id)
        service.fail(purchase.id, "stripe:create", "The card payment could not be started.")
        form.provider.errors = ["Card payments are not answering right now. Please try again."]
        return _buy_page(form, 503)
    return redirect(checkout_url, 303)


def _package_or_refuse(value: str) -> int:
    package_id = parse_id(value, TokenPackage.id)
    if package_id is None:
        raise service.PurchaseRefused("That package is not on sale. Choose another.", "package")
    return package_id


def _provider_or_refuse(value: str) -> Provider:
    try:
        return Provider(value)
    except ValueError:
        raise service.PurchaseRefused(
            "Choose one of the payment methods offered.", "provider"
        ) from None


def _own_purchase(purchase_id: int):
    purchase = service.purchase_for(current_user, purchase_id)
    if purchase is None:
        abort(404)
    return purchase


# The sandbox checkout ------------------------------------------------------------------------


def _sandbox_purchase(purchase_id: int):
    if not sandbox_provider.allowed():
        abort(404)
    purchase = _own_purchase(purchase_id)
    if purchase.provider != Provider.SANDBOX or purchase.user_id != current_user.id:
        abort(404)
    return purchase


@bp.get("/sandbox/<id(purchases):purchase_id>")
@role_required(Role.STUDENT)
def sandbox(purchase_id: int):
    """A local checkout page, clearly a test: no money moves, only test tokens."""
    purchase = _sandbox_purchase(purchase_id)
    if purchase.status != PurchaseStatus.PENDING:
        return redirect(url_for("purchases.show", purchase_id=purchase.id), 303)
    return render_template("purchases/sandbox.html", purchase=purchase, form=ActionForm())


@bp.post("/sandbox/<id(purchases):purchase_id>/<outcome>")
@role_required(Role.STUDENT)
def sandbox_outcome(purchase_id: int, outcome: str):
    """Pay or Fail: the same fulfilment path as a real provider's confirmation."""
    purchase = _sandbox_purchase(purchase_id)
    if outcome not in ("pay", "fail") or not ActionForm().validate_on_submit():
        abort(400)
    if outcome == "pay":
        service.fulfil(purchase.id, "sandbox", receipt=f"SANDBOX-{purchase.id}")
    else:
        service.fail(purchase.id, "sandbox", "The test payment was declined.")
    return redirect(url_for("purchases.show", purchase_id=purchase.id), 303)


# Status and history ----------------------------------------------------------------------------


@bp.get("/purchases/<id(purchases):purchase_id>")
@role_required(Role.STUDENT, Role.ADMIN)
def show(purchase_id: int):
    """A purchase's status; while it is processing, the status polls itself."""
    purchase = _own_purchase(purchase_id)
    if purchase.provider == Provider.STRIPE and request.args.get("session_id"):
        purchase = stripe_checkout.check_session(purchase)  # back from Stripe: ask it
    reversed_ = reversals.totals(reversals.reversals_of(purchase.id))
    return render_template(
        "purchases/show.html",
        purchase=purchase,
        reversed=reversed_,
        standing=reversals.standing(purchase, reversed_),
        summary=wallet_summary(purchase.user),
        cancelled=bool(request.args.get("cancelled")),
    )


@bp.get("/purchases/<id(purchases):purchase_id>/status")
@role_required(Role.STUDENT, Role.ADMIN)
def status(purchase_id: int):
    """The status fragment; once the purchase is settled it stops polling and refreshes."""
    purchase = _own_purchase(purchase_id)
    if purchase.provider == Provider.MPESA:
        purchase = mpesa.recheck(purchase)  # a late callback: ask Daraja now and then
    headers = {}
    if purchase.status != PurchaseStatus.PENDING and request.args.get("seen") == "pending":
        headers["HX-Trigger"] = "purchase-settled"
    reversed_ = reversals.totals(reversals.reversals_of(purchase.id))
    return (
        render_template(
            "purchases/_status.html",
            purchase=purchase,
            reversed=reversed_,
            standing=reversals.standing(purchase, reversed_),
        ),
        200,
        headers,
    )


@bp.get("/purchases/<id(purchases):purchase_id>/receipt")
@role_required(Role.STUDENT, Role.ADMIN)
def receipt(purchase_id: int):
    """A printable receipt of a paid purchase: 404 for another student's, or an unpaid one."""
    purchase = _own_purchase(purchase_id)
    if not purchase.credited:
        abort(404)
    found = reversals.reversals_of(purchase.id)
    reversed_ = reversals.totals(found)
    return render_template(
        "purchases/receipt.html",
        purchase=purchase,
        paid_at=service.paid_at(purchase.id),
        reversals=found,
        reversed=reversed_,
        standing=reversals.standing(purchase, reversed_),
    )


@bp.get("/purchases")
@role_required(Role.STUDENT)
def history():
    """The student's purchases: status, amount, refunds and disputes, provider and receipt."""
    purchases = service.history(current_user)
    reversed_ = reversals.totals_of([p.id for p in purchases])
    return render_template(
        "purchases/history.html",
        rows=[(p, reversed_[p.id], reversals.standing(p, reversed_[p.id])) for p in purchases],
    )
