"""Token packages: add one, retire one. A package is never edited or deleted.

A retired package leaves the buy page and can no longer be bought
(soma.purchases.service.quote refuses it); a purchase keeps its own copy of the tokens,
bonus and price it was made at, so retiring never changes a purchase already made. A
new price is a new package, with the old one retired.
"""

import re

from flask import abort, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import func, select, update
from wtforms import StringField
from wtforms.validators import DataRequired, Length, ValidationError

from soma import money
from soma.admin import actions
from soma.admin.blueprint import bp
from soma.admin.confirm import confirmation, confirmed
from soma.extensions import db
from soma.forms import ActionForm, Printable, strip
from soma.inputs import plain_amount
from soma.models import Purchase, Role, TokenPackage
from soma.security import role_required

MAX_TOKENS = 1_000_000
MAX_PRICE_CENTS = 10_000_000  # $100,000.00
MAX_SORT_ORDER = 10_000


def _count(field, least: int, most: int, what: str) -> int:
    text = (field.data or "").replace(",", "")
    if not re.fullmatch(r"[0-9]{1,9}", text) or not least <= int(text) <= most:
        raise ValidationError(f"Enter {what}: a whole number from {least} to {most:,}.")
    return int(text)


class PackageForm(FlaskForm):
    tokens = StringField(
        "Tokens",
        filters=[strip],
        validators=[DataRequired("Enter a number of tokens."), Printable(), Length(max=16)],
    )
    bonus_tokens = StringField(
        "Bonus tokens", filters=[strip], default="0", validators=[Printable(), Length(max=16)]
    )
    price = StringField(
        "Price in US dollars",
        filters=[strip],
        validators=[DataRequired("Enter a price such as 10.00."), Printable(), Length(max=32)],
    )
    sort_order = StringField(
        "Place on the buy page (lower comes first)",
        filters=[strip],
        default="0",
        validators=[Printable(), Length(max=16)],
    )

    def validate_tokens(self, field) -> None:
        self.tokens_value = _count(field, 1, MAX_TOKENS, "a number of tokens")

    def validate_bonus_tokens(self, field) -> None:
        field.data = field.data or "0"
        self.bonus_value = _count(field, 0, MAX_TOKENS, "the bonus tokens")

    def validate_sort_order(self, field) -> None:
        field.data = field.data or "0"
        self.sort_value = _count(field, 0, MAX_SORT_ORDER, "its place")

    def validate_price(self, field) -> None:
        try:
            cents = plain_amount(field.data or "") * 100
        except ValueError:
            raise ValidationError("Enter a price in US dollars, such as 10.00.") from None
        if cents != cents.to_integral_value():
            raise ValidationError("Enter the price in whole cents, such as 9.99.")
        if not 0 < cents <= MAX_PRICE_CENTS:
            raise ValidationError(
                f"Enter a price above $0.00, at most {money.usd(MAX_PRICE_CENTS)}."
            )
        self.price_cents = int(cents)


def snapshot(package: TokenPackage) -> dict:
    """A package as the action record keeps it."""
    return {
        "tokens": package.tokens,
        "bonus_tokens": package.bonus_tokens,
        "price_cents": package.price_cents,
        "sort_order": package.sort_order,
        "active": package.active,
    }


def describe(tokens: int, bonus: int, price_cents: int) -> str:
    extra = f" + {money.tokens(bonus)} bonus" if bonus else ""
    return f"{money.tokens(tokens)}{extra} for {money.usd(price_cents)}"


def _page(form: PackageForm, status: int = 200):
    counts = dict(
        db.session.execute(
            select(Purchase.package_id, func.count())
            .where(Purchase.package_id.is_not(None))
            .group_by(Purchase.package_id)
        ).all()
    )
    credited = dict(
        db.session.execute(
            select(Purchase.package_id, func.count())
            .where(Purchase.package_id.is_not(None), Purchase.credited_entry_id.is_not(None))
            .group_by(Purchase.package_id)
        ).all()
    )
    rows = db.session.scalars(
        select(TokenPackage).order_by(
            TokenPackage.active.desc(), TokenPackage.sort_order, TokenPackage.id
        )
    ).all()
    return render_template(
        "admin/packages.html",
        active=[p for p in rows if p.active],
        retired=[p for p in rows if not p.active],
        counts=counts,
        credited=credited,
        form=form,
        action=ActionForm(),
    ), status


@bp.get("/packages")
@role_required(Role.ADMIN)
def packages():
    """The packages on sale and those retired, with how many purchases each has."""
    return _page(PackageForm(formdata=None))


@bp.post("/packages")
@role_required(Role.ADMIN)
def add_package():
    """Put a new package on sale, after a confirmation."""
    form = PackageForm()
    if not form.validate_on_submit():
        return _page(form, 422)
    if not confirmed():
        return confirmation(
            "Add a package",
            [
                ("Package", describe(form.tokens_value, form.bonus_value, form.price_cents)),
                ("Place on the buy page", str(form.sort_value)),
                (
                    "Price per token",
                    f"{form.price_cents / (form.tokens_value + form.bonus_value):.2f} ¢ "
                    "with the bonus",
                ),
            ],
            "Put it on sale",
            url_for("admin.packages"),
            warning="Students see it on the buy page at once. A package is never edited: "
            "to change its price, add another and retire this one.",
        )
    package = TokenPackage(
        tokens=form.tokens_value,
        bonus_tokens=form.bonus_value,
        price_cents=form.price_cents,
        sort_order=form.sort_value,
        active=True,
    )
    db.session.add(package)
    db.session.flush()
    actions.record(current_user, "add_package", "package", package.id, None, snapshot(package))
    db.session.commit()
    flash(
        f"Package #{package.id} is on sale: "
        f"{describe(package.tokens, package.bonus_tokens, package.price_cents)}.",
        "success",
    )
    return redirect(url_for("admin.packages"), 303)


@bp.post("/packages/<id(token_packages):package_id>/retire")
@role_required(Role.ADMIN)
def retire_package(package_id: int):
    """Take a package off sale, after a confirmation; purchases already made keep theirs."""
    package = db.session.get(TokenPackage, package_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    label = describe(package.tokens, package.bonus_tokens, package.price_cents)
    if not confirmed():
        if not package.active:
            flash(f"Package #{package.id} is already retired.", "error")
            return redirect(url_for("admin.packages"), 303)
        return confirmation(
            f"Retire package #{package.id}",
            [("Package", label), ("Purchases of it", _purchases_of(package.id))],
            "Retire it",
            url_for("admin.packages"),
            warning="It leaves the buy page at once. Purchases already made, and those "
            "waiting to be paid, keep their tokens, bonus and price.",
        )
    before = snapshot(package)
    # Compare-and-set: of two retires, one changes the row and records it.
    retired = db.session.execute(
        update(TokenPackage)
        .where(TokenPackage.id == package_id, TokenPackage.active.is_(True))
        .values(active=False)
        .execution_options(synchronize_session=False)
    ).rowcount
    if retired != 1:
        db.session.rollback()
        flash(f"Package #{package_id} was already retired.", "error")
        return redirect(url_for("admin.packages"), 303)
    actions.record(
        current_user, "retire_package", "package", package_id, before, before | {"active": False}
    )
    db.session.commit()
    flash(f"Package #{package_id} ({label}) is retired: it is no longer on sale.", "success")
    return redirect(url_for("admin.packages"), 303)


def _purchases_of(package_id: int) -> str:
    count = db.session.scalar(
        select(func.count()).select_from(Purchase).where(Purchase.package_id == package_id)
    )
    return f"{count:,}"
