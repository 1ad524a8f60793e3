"""Pricing: the versions in force, those scheduled, their history, and publishing a new one.

A new version is a new row (token_pricing is append-only); it takes effect in the future
(soma.ledger.pricing.publish_pricing refuses anything else), and the confirmation step
shows what it does to a one-hour class and to a $10 withdrawal before it is published.
"""

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased
from wtforms import SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, InputRequired, Length, ValidationError

from soma import clock, money, timezones
from soma.admin import actions
from soma.admin.blueprint import bp
from soma.admin.confirm import confirmation, confirmed
from soma.extensions import db
from soma.forms import Printable, strip
from soma.inputs import plain_amount
from soma.ledger.pricing import (
    PricingMissing,
    PricingRefused,
    class_cost_at,
    get_token_pricing,
    publish_pricing,
    tokens_to_cents,
)
from soma.models import PricingUserType, Role, TokenPricing, User
from soma.payouts import amounts
from soma.security import role_required

# Bounds a version's numbers are held to before anything is read or written.
MAX_TOKENS = 1_000_000
MAX_PRICE_CENTS = 10_000_000  # $100,000.00 for a block of tokens
MAX_CLASS_TOKENS_PER_HOUR = 1_000_000
FURTHEST = timedelta(days=5 * 366)  # a version takes effect within five years
HISTORY_LIMIT = 200
WHEN_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M")

USER_TYPE_LABELS = {
    PricingUserType.STUDENT: "Students (what tokens cost)",
    PricingUserType.TEACHER: "Teachers (what tokens pay out)",
}


def _whole(field, most: int, what: str) -> int:
    text = (field.data or "").replace(",", "")
    if not re.fullmatch(r"[0-9]{1,9}", text) or not 0 < int(text) <= most:
        raise ValidationError(f"Enter {what}: a whole number from 1 to {most:,}.")
    return int(text)


class PricingForm(FlaskForm):
    user_type = SelectField(
        "For",
        choices=[SelectChoice(kind.value, label) for kind, label in USER_TYPE_LABELS.items()],
        validators=[InputRequired("Choose students or teachers.")],
    )
    tokens = StringField(
        "Tokens",
        filters=[strip],
        validators=[DataRequired("Enter a number of tokens."), Printable(), Length(max=16)],
    )
    price = StringField(
        "Price of those tokens in US dollars",
        filters=[strip],
        validators=[DataRequired("Enter a price such as 1.20."), Printable(), Length(max=32)],
    )
    class_tokens_per_hour = StringField(
        "Class tokens per hour (students; a teacher version keeps the one in force)",
        filters=[strip],
        validators=[Printable(), Length(max=16)],
    )
    effective_at = StringField(
        "Takes effect at (your time zone)",
        filters=[strip],
        validators=[
            DataRequired("Choose when it takes effect."),
            Printable(),
            Length(max=32),
        ],
        render_kw={"type": "datetime-local"},
    )

    def validate_tokens(self, field) -> None:
        self.tokens_value = _whole(field, MAX_TOKENS, "a number of tokens")

    def validate_price(self, field) -> None:
        try:
            cents = plain_amount(field.data or "") * 100
        except ValueError:
            raise ValidationError("Enter a price in US dollars, such as 1.20.") from None
        if cents != cents.to_integral_value():
            raise ValidationError("Enter the price in whole cents, such as 1.25.")
        if not 0 < cents <= MAX_PRICE_CENTS:
            raise ValidationError(
                f"Enter a price above $0.00, at most {money.usd(MAX_PRICE_CENTS)}."
            )
        self.price_cents = int(cents)

    def validate_class_tokens_per_hour(self, field) -> None:
        self.class_rate = None
        if self.user_type.data == PricingUserType.STUDENT.value:
            if not field.data:
                raise ValidationError("Enter how many tokens an hour of class costs.")
            self.class_rate = _whole(field, MAX_CLASS_TOKENS_PER_HOUR, "tokens per hour")

    def validate_effective_at(self, field) -> None:
        for layout in WHEN_FORMATS:
            try:
                # A wall-clock time in the admin's zone, made UTC below.
                wall = datetime.strptime(field.data or "", layout)  # noqa: DTZ007
                break
            except ValueError:
                continue
        else:
            raise ValidationError("Enter a date and time such as 2026-12-31T09:00.")
        try:  # the admin's own wall-clock time, as every page shows them
            moment = timezones.to_utc(wall, timezones.viewer_zone())
        except timezones.LocalTimeProblem as problem:
            raise ValidationError(problem.message) from None
        now = clock.now()
        if moment <= now:
            raise ValidationError(
                "That time has passed: a new price takes effect in the future. Old prices are "
                "never changed."
            )
        if moment > now + FURTHEST:
            raise ValidationError("Choose a time within the next five years.")
        self.moment = moment


@dataclass(frozen=True)
class Effect:
    """What one pricing does to a one-hour class and to a $10 withdrawal."""

    student: TokenPricing | None
    teacher: TokenPricing | None

    @property
    def class_tokens(self) -> int | None:
        return class_cost_at(60, self.student) if self.student else None

    def class_cost(self) -> str:
        if self.student is None:
            return "no student pricing"
        tokens = self.class_tokens
        return f"{money.tokens(tokens)} ({money.usd(tokens_to_cents(tokens, self.student))})"

    def teacher_gets(self) -> str:
        if self.student is None or self.teacher is None:
            return "no pricing"
        tokens = self.class_tokens
        return f"{money.tokens(tokens)} (worth {money.usd(tokens_to_cents(tokens, self.teacher))})"

    def withdrawal(self) -> str:
        if self.teacher is None:
            return "no teacher pricing"
        quote = amounts.quote(amounts.MINIMUM_CENTS, self.teacher.tokens, self.teacher.usd_cents)
        return (
            f"{money.tokens(quote.tokens)} held, fee {money.usd(quote.fee_cents)}, "
            f"net {money.usd(quote.net_cents)}"
        )


def rate(pricing: TokenPricing | None) -> str:
    if pricing is None:
        return "none"
    return f"{money.tokens(pricing.tokens)} = {money.usd(pricing.usd_cents)}"


def in_force(user_type: PricingUserType, at: datetime) -> TokenPricing | None:
    try:
        return get_token_pricing(user_type, at)
    except PricingMissing:
        return None


def snapshot(pricing: TokenPricing | None) -> dict | None:
    """A version as the action record keeps it."""
    if pricing is None:
        return None
    return {
        "user_type": str(pricing.user_type),
        "version": pricing.version,
        "tokens": pricing.tokens,
        "usd_cents": pricing.usd_cents,
        "class_tokens_per_hour": pricing.class_tokens_per_hour,
        "effective_at": pricing.effective_at,
    }


def _proposed(form: PricingForm, kind: PricingUserType, before: TokenPricing | None):
    """The version the form asks for, as an unsaved row (never added to the session)."""
    rate_per_hour = form.class_rate
    if rate_per_hour is None:
        rate_per_hour = before.class_tokens_per_hour if before else 10
    return TokenPricing(
        user_type=kind.value,
        version=(before.version + 1) if before else 1,
        tokens=form.tokens_value,
        usd_cents=form.price_cents,
        class_tokens_per_hour=rate_per_hour,
        effective_at=form.moment,
    )


def effect_facts(kind: PricingUserType, new: TokenPricing) -> list[tuple[str, str]]:
    """The confirmation's facts: the rate, a one-hour class and a $10 withdrawal, before and
    after, all at the time the new version takes effect."""
    at = new.effective_at
    now_student, now_teacher = (
        in_force(PricingUserType.STUDENT, at),
        in_force(PricingUserType.TEACHER, at),
    )
    before = Effect(now_student, now_teacher)
    after = Effect(
        new if kind == PricingUserType.STUDENT else now_student,
        new if kind == PricingUserType.TEACHER else now_teacher,
    )
    old = now_student if kind == PricingUserType.STUDENT else now_teacher
    facts = [
        ("For", USER_TYPE_LABELS[kind]),
        ("Takes effect", money.when(at)),
        ("Rate", f"{rate(old)} → {rate(new)}"),
    ]
    if kind == PricingUserType.STUDENT:
        facts.append(
            (
                "Class tokens per hour",
                f"{old.class_tokens_per_hour if old else 'none'} → {new.class_tokens_per_hour}",
            )
        )
    facts += [
        ("A one-hour class costs the student", f"{before.class_cost()} → {after.class_cost()}"),
        ("The teacher gets for it", f"{before.teacher_gets()} → {after.teacher_gets()}"),
        ("A $10.00 withdrawal", f"{before.withdrawal()} → {after.withdrawal()}"),
    ]
    return facts


def _page(form: PricingForm, status: int = 200):
    now = clock.now()
    publisher = aliased(User)
    rows = db.session.execute(
        select(TokenPricing, publisher.display_name)
        .outerjoin(publisher, publisher.id == TokenPricing.created_by_id)
        .order_by(TokenPricing.user_type, TokenPricing.version.desc())
        .limit(HISTORY_LIMIT)
    ).all()
    kinds = []
    for kind in PricingUserType:
        current = in_force(kind, now)
        versions = [(row, name) for row, name in rows if row.user_type == kind.value]
        kinds.append(
            {
                "kind": kind,
                "label": USER_TYPE_LABELS[kind],
                "current": current,
                "effect": Effect(
                    in_force(PricingUserType.STUDENT, now), in_force(PricingUserType.TEACHER, now)
                ),
                "scheduled": sorted(
                    (row for row, _ in versions if row.effective_at > now),
                    key=lambda row: row.effective_at,
                ),
                "history": versions,
            }
        )
    zone_label = timezones.label(timezones.viewer_zone(), now)
    page = render_template(
        "admin/pricing.html", kinds=kinds, form=form, now=now, rate=rate, zone_label=zone_label
    )
    return page, status


@bp.get("/pricing")
@role_required(Role.ADMIN)
def pricing():
    """The pricing in force for students and teachers, what is scheduled, and the history."""
    return _page(PricingForm(formdata=None))


@bp.post("/pricing")
@role_required(Role.ADMIN)
def publish():
    """Publish a new pricing version, after a confirmation that shows what it changes."""
    form = PricingForm()
    if not form.validate_on_submit():
        return _page(form, 422)
    kind = PricingUserType(form.user_type.data)
    before = in_force(kind, form.moment)
    if not confirmed():
        new = _proposed(form, kind, before)
        return confirmation(
            f"Publish {kind.value} pricing",
            effect_facts(kind, new),
            "Publish this price",
            url_for("admin.pricing"),
            warning="A published version is never edited: to change it, publish another.",
        )
    try:
        new = publish_pricing(
            kind,
            form.tokens_value,
            form.price_cents,
            _proposed(form, kind, before).class_tokens_per_hour,
            form.moment,
            created_by_id=current_user.id,
        )
        actions.record(
            current_user, "publish_pricing", "pricing", new.id, snapshot(before), snapshot(new)
        )
        db.session.commit()
    except PricingRefused as refused:
        db.session.rollback()
        form.effective_at.errors = [refused.message]
        return _page(form, 422)
    except IntegrityError:
        db.session.rollback()
        form.effective_at.errors = [
            "Another version was published at the same moment. Look at the history and "
            "send the form again."
        ]
        return _page(form, 409)
    flash(
        f"Published {kind.value} pricing version {new.version}, in force from "
        f"{money.when(new.effective_at)}.",
        "success",
    )
    return redirect(url_for("admin.pricing"), 303)
