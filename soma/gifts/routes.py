"""Give tokens: the form, the confirmation step, then the gift."""

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_login import current_user

from soma.auth.freeze import AccountFrozen
from soma.extensions import limiter
from soma.gifts import service
from soma.gifts.forms import ConfirmGiftForm, GiftForm
from soma.ledger import IdempotencyConflict, InsufficientTokens
from soma.models import Role
from soma.security import role_required
from soma.wallet.service import wallet_summary

bp = Blueprint("gifts", __name__, url_prefix="/gifts")

# The review step says whether an email belongs to a student; a limit per
# student keeps it from being used to list the site's accounts. Confirming is
# under the same limit, per student, and under one per address; and it takes only
# a nonce its review issued, for the gift reviewed, so it tells nothing the
# review (and its limit) did not.
REVIEW_RATE_LIMIT = "30 per hour"
ADDRESS_RATE_LIMIT = "120 per hour"
NOT_REVIEWED = "This confirmation is not one Soma gave you for this gift. Review the gift again."


def _per_user() -> str:
    return f"user:{current_user.get_id()}"


def _form_page(form, status=200):
    return render_template(
        "gifts/new.html", form=form, summary=wallet_summary(current_user)
    ), status


def _refuse(form, error: service.GiftRefused | InsufficientTokens | AccountFrozen):
    """Show the form again with the reason on the field at fault (a frozen account's
    refusal above the form)."""
    if isinstance(error, AccountFrozen):
        form.form_errors.append(error.message)
        return _form_page(form, error.status)
    field = getattr(error, "field", None) or "tokens"
    getattr(form, field).errors = [*getattr(form, field).errors, error.message]
    return _form_page(form, 422)


@bp.get("/new")
@role_required(Role.STUDENT)
def new():
    """The gift form."""
    return _form_page(GiftForm())


@bp.post("/review")
@role_required(Role.STUDENT)
@limiter.limit(REVIEW_RATE_LIMIT, key_func=_per_user)
@limiter.limit(ADDRESS_RATE_LIMIT)
def review():
    """Check the gift and ask the student to confirm it."""
    form = GiftForm()
    if not form.validate_on_submit():
        return _form_page(form, 422)
    try:
        preview = service.preview_gift(
            current_user, form.email.data, form.tokens.data, form.note.data or ""
        )
    except (service.GiftRefused, AccountFrozen) as error:
        return _refuse(form, error)
    confirm = ConfirmGiftForm(
        formdata=None,
        email=form.email.data,
        tokens=form.tokens.data,
        note=form.note.data or "",
        nonce=service.issue_nonce(
            current_user.id, form.email.data, form.tokens.data, form.note.data or ""
        ),
    )
    return render_template("gifts/confirm.html", form=confirm, preview=preview)


@bp.post("/confirm")
@role_required(Role.STUDENT)
@limiter.limit(REVIEW_RATE_LIMIT, key_func=_per_user)
@limiter.limit(ADDRESS_RATE_LIMIT)
def confirm():
    """Give the gift reviewed; a second submit of the same confirmation changes nothing."""
    form = ConfirmGiftForm()
    if not form.validate_on_submit():
        return _form_page(form, 422)
    reviewed = service.nonce_is_issued(
        form.nonce.data, current_user.id, form.email.data, form.tokens.data, form.note.data or ""
    )
    if not reviewed:
        form.form_errors.append(NOT_REVIEWED)
        return _form_page(form, 422)
    try:
        gift, created = service.give_gift(
            current_user,
            form.email.data,
            form.tokens.data,
            form.note.data or "",
            form.nonce.data,
            link=url_for("wallet.transactions", kind="gift"),
        )
    except (service.GiftRefused, InsufficientTokens, AccountFrozen) as error:
        return _refuse(form, error)
    except IdempotencyConflict as error:
        flash(error.message, "error")
        return redirect(url_for("gifts.new"))
    if created:
        flash(
            f"You gave {gift.tokens} token{'s' if gift.tokens != 1 else ''} "
            f"to {gift.recipient.display_name}.",
            "success",
        )
    else:
        flash("That gift was already sent; it was not sent twice.", "info")
    return redirect(url_for("wallet.index"))
