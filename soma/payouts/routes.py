"""A teacher's payout methods and withdrawals: add a method, withdraw, follow each one."""

import secrets

import stripe
from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user

from soma import clock
from soma.auth.freeze import AccountFrozen
from soma.forms import EXPIRED, ActionForm
from soma.ledger.pricing import tokens_to_cents
from soma.models import MethodKind, Role
from soma.payouts import amounts, methods, rails, withdrawals
from soma.payouts.forms import (
    AddMethodForm,
    ConfirmWithdrawalForm,
    WithdrawForm,
    method_kind,
)
from soma.security import role_required
from soma.wallet.service import wallet_summary

bp = Blueprint("payouts", __name__)


# Payout methods ------------------------------------------------------------------------------


RETYPE_NUMBER = "Type the account number again: it is never shown back."


def _forget_account_number(form: AddMethodForm) -> None:
    """Empty the account number a refused form carries, so the page never echoes it back
    (in its HTML, a cache or a screenshot); the teacher types it again, and is told so."""
    field = form.account_number
    typed = (field.raw_data and field.raw_data[0]) or field.data
    if typed and not field.errors:
        field.errors = [RETYPE_NUMBER]
    field.raw_data, field.data = [], ""


def _methods_page(form: AddMethodForm | None = None, status: int = 200):
    offered = rails.offered_kinds()
    if form is None:
        form = AddMethodForm(kinds=offered)
    else:  # (every re-render of a sent form comes through here: a 422, Stripe's 503)
        _forget_account_number(form)
    unavailable = [rail.unavailable for kind, rail in rails.RAILS.items() if kind not in offered]
    own = methods.methods_of(current_user)
    return render_template(
        "payouts/methods.html",
        methods=own,
        # (a Stripe method whose account Stripe never made still needs its country)
        has_stripe=any(m.kind == MethodKind.STRIPE and m.stripe_account_id for m in own),
        form=form,
        offered=offered,
        unavailable=unavailable,
        action=ActionForm(),
        now=clock.now(),
        is_new=methods.is_new,
    ), status


@bp.get("/payout-methods")
@role_required(Role.TEACHER)
def payout_methods():
    """The teacher's payout methods, and the form that adds one."""
    return _methods_page()


@bp.post("/payout-methods")
@role_required(Role.TEACHER)
def add_method():
    """Add a payout method of a kind on offer."""
    form = AddMethodForm(kinds=rails.offered_kinds())
    if not form.validate_on_submit():
        return _methods_page(form, 422)
    kind = method_kind(form.kind.data)
    try:
        if kind == MethodKind.SANDBOX:
            methods.add_sandbox(current_user)
        elif kind == MethodKind.BANK:
            methods.add_bank(
                current_user,
                form.account_holder.data or "",
                form.bank_name.data or "",
                form.account_number.data or "",
            )
        elif kind == MethodKind.MPESA:
            methods.add_mpesa(current_user, form.phone.data or "")
        elif kind == MethodKind.STRIPE:
            return _to_stripe(form, form.country.data)
        else:
            unavailable = rails.RAILS[kind].unavailable if kind else None
            raise methods.MethodRefused(unavailable or "Choose a kind of method.", "kind")
    except methods.MethodRefused as error:
        field = getattr(form, error.field or "kind")
        field.errors = [*field.errors, error.message]
        return _methods_page(form, 422)
    flash("Payout method added.", "success")
    return redirect(url_for("payouts.payout_methods"), 303)


def _to_stripe(form: AddMethodForm | None = None, country: str | None = None):
    """Redirect to Stripe's onboarding of the teacher's connected account (made first if
    need be); if Stripe cannot be reached, say so on the methods page."""
    try:
        url = methods.connect_stripe(
            current_user,
            refresh_url=url_for("payouts.stripe_refresh", _external=True),
            return_url=url_for("payouts.stripe_return", _external=True),
            country=country,
        )
    except methods.MethodRefused as error:
        form = form or AddMethodForm(kinds=rails.offered_kinds(), formdata=None)
        form.kind.data = MethodKind.STRIPE.value
        field = getattr(form, error.field or "kind")
        field.errors = [*field.errors, error.message]
        return _methods_page(form, 422)
    except stripe.StripeError:
        current_app.logger.exception("stripe: could not start onboarding")
        form = form or AddMethodForm(kinds=rails.offered_kinds())
        form.kind.errors = [
            *form.kind.errors,
            "Stripe could not be reached, so your account was not set up. Try again in a minute.",
        ]
        return _methods_page(form, 503)
    return redirect(url, 303)


@bp.post("/payout-methods/stripe/onboarding")
@role_required(Role.TEACHER)
def stripe_onboarding():
    """Continue Stripe's onboarding of the teacher's connected account."""
    if not ActionForm().validate_on_submit():
        abort(400)
    if not rails.RAILS[MethodKind.STRIPE].offered() or methods.stripe_method(current_user) is None:
        abort(404)
    return _to_stripe()


@bp.get("/payout-methods/stripe/refresh")
@role_required(Role.TEACHER)
def stripe_refresh():
    """Where Stripe sends a used or expired onboarding link: a new one, for an account the
    teacher already has (never a new account on a GET)."""
    method = methods.stripe_method(current_user)
    if not rails.RAILS[MethodKind.STRIPE].offered() or method is None:
        return redirect(url_for("payouts.payout_methods"), 303)
    if not method.stripe_account_id:
        return redirect(url_for("payouts.payout_methods"), 303)
    return _to_stripe()


@bp.get("/payout-methods/stripe/return")
@role_required(Role.TEACHER)
def stripe_return():
    """Back from Stripe's onboarding. This proves nothing about the account: what it can
    do is what Stripe's events say, shown on the methods page."""
    flash(
        "Back from Stripe. Stripe tells Soma when your account can receive transfers; "
        "this page shows it (it can take a minute).",
        "info",
    )
    return redirect(url_for("payouts.payout_methods"), 303)


def _own_method(method_id: int):
    method = methods.method_for(current_user, method_id)
    if method is None:
        abort(404)
    return method


@bp.post("/payout-methods/<id(payout_methods):method_id>/default")
@role_required(Role.TEACHER)
def make_default(method_id: int):
    """Make this method the one withdrawals go to unless the teacher chooses another."""
    _own_method(method_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    methods.make_default(current_user, method_id)
    flash("Default payout method changed.", "success")
    return redirect(url_for("payouts.payout_methods"), 303)


@bp.get("/payout-methods/<id(payout_methods):method_id>/remove")
@role_required(Role.TEACHER)
def confirm_remove(method_id: int):
    """Ask before removing a method."""
    return render_template(
        "payouts/remove_method.html", method=_own_method(method_id), form=ActionForm()
    )


@bp.post("/payout-methods/<id(payout_methods):method_id>/remove")
@role_required(Role.TEACHER)
def remove_method(method_id: int):
    """Remove the method from new withdrawals (those under way still go to it)."""
    _own_method(method_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    methods.remove(current_user, method_id)
    flash("Payout method removed.", "success")
    return redirect(url_for("payouts.payout_methods"), 303)


# Withdrawals ---------------------------------------------------------------------------------


def _new_page(form: WithdrawForm | None = None, status: int = 200):
    own = methods.methods_of(current_user)
    form = form or WithdrawForm(methods=own)
    if form.method.data is None and not form.is_submitted():
        default = methods.default_of(current_user)
        form.method.data = default.id if default else None
    summary = wallet_summary(current_user)
    return render_template(
        "payouts/new.html",
        form=form,
        methods=own,
        summary=summary,
        available_cents=tokens_to_cents(summary.available, summary.pricing, "down"),
        minimum=amounts.MINIMUM_CENTS,
        fee_percent=amounts.FEE_PERCENT,
        fee_minimum=amounts.FEE_MINIMUM_CENTS,
        review_above=amounts.REVIEW_ABOVE_CENTS,
    ), status


def _refuse(form, error: withdrawals.WithdrawalRefused | AccountFrozen):
    if isinstance(error, AccountFrozen):  # (above the form: no field is at fault)
        form.form_errors.append(error.message)
        return _new_page(form, error.status)
    field = getattr(form, error.field or "amount")
    field.errors = [*field.errors, error.message]
    return _new_page(form, 422)


@bp.get("/withdrawals/new")
@role_required(Role.TEACHER)
def new_withdrawal():
    """How much, and to which method."""
    return _new_page()


@bp.post("/withdrawals/review")
@role_required(Role.TEACHER)
def review_withdrawal():
    """The confirmation step: tokens, fee and net, and whether it waits for an admin."""
    form = WithdrawForm(methods=methods.methods_of(current_user))
    if not form.validate_on_submit():
        return _new_page(form, 422)
    try:
        cents = amounts.parse_usd(form.amount.data)
        quote, method, reason = withdrawals.preview(current_user, form.method.data, cents)
    except amounts.AmountRefused as error:
        return _refuse(form, withdrawals.WithdrawalRefused(str(error), "amount"))
    except (withdrawals.WithdrawalRefused, AccountFrozen) as error:
        return _refuse(form, error)
    shillings = rails.rail_for(method.kind).local_amount(quote.net_cents)
    confirm = ConfirmWithdrawalForm(
        formdata=None,
        methods=[method],
        amount=form.amount.data,
        method=method.id,
        key=secrets.token_urlsafe(16),
        tokens=quote.tokens,
        shillings=shillings,
    )
    return render_template(
        "payouts/confirm.html",
        form=confirm,
        quote=quote,
        method=method,
        review_reason=reason,
        waits=withdrawals.waits_for_admin(method, reason),
        shillings=shillings,
        kes_rate=rails.kes_per_usd(),
        summary=wallet_summary(current_user),
    )


@bp.post("/withdrawals")
@role_required(Role.TEACHER)
def create_withdrawal():
    """Confirm: hold the tokens and record the withdrawal (a double submit is one)."""
    form = ConfirmWithdrawalForm(methods=methods.methods_of(current_user))
    if not form.validate_on_submit():
        if form.expired:  # (its hidden fields are not on the form page: say it on the amount)
            form.amount.errors = [*form.amount.errors, EXPIRED]
        return _new_page(form, 422)
    try:
        cents = amounts.parse_usd(form.amount.data)
        withdrawal = withdrawals.request(
            current_user,
            form.method.data,
            cents,
            form.key.data,
            confirmed_tokens=form.tokens.data,
            confirmed_kes=form.shillings.data,
        )
    except amounts.AmountRefused as error:
        return _refuse(form, withdrawals.WithdrawalRefused(str(error), "amount"))
    except (withdrawals.WithdrawalRefused, AccountFrozen) as error:
        return _refuse(form, error)
    return redirect(url_for("payouts.show_withdrawal", withdrawal_id=withdrawal.id), 303)


@bp.get("/withdrawals")
@role_required(Role.TEACHER)
def withdrawal_list():
    """The teacher's withdrawals, newest first, each with its history."""
    found = withdrawals.withdrawals_of(current_user)
    return render_template(
        "payouts/list.html",
        withdrawals=found,
        events=withdrawals.events_of([w.id for w in found]),
        summary=wallet_summary(current_user),
    )


@bp.get("/withdrawals/<id(withdrawals):withdrawal_id>")
@role_required(Role.TEACHER)
def show_withdrawal(withdrawal_id: int):
    """One withdrawal: its amounts, its method, where it stands, and its history."""
    return _own_withdrawal("payouts/show.html", withdrawal_id)


@bp.get("/withdrawals/<id(withdrawals):withdrawal_id>/status")
@role_required(Role.TEACHER)
def withdrawal_status(withdrawal_id: int):
    """The withdrawal's status fragment; it stops polling once the withdrawal is finished."""
    return _own_withdrawal("payouts/_withdrawal.html", withdrawal_id)


def _own_withdrawal(template: str, withdrawal_id: int):
    """`template` for the teacher's own withdrawal and its history; 404 for anyone else's."""
    withdrawal = withdrawals.withdrawal_for(current_user, withdrawal_id)
    if withdrawal is None:
        abort(404)
    return render_template(
        template,
        withdrawal=withdrawal,
        events=withdrawals.events_of([withdrawal.id])[withdrawal.id],
        summary=wallet_summary(current_user),
    )
