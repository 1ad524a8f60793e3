"""Accounts, for the operator: find one, see all of its money in one place, freeze it.

The list searches by email or display name and pages by id (newest first); the search
and the role filter ride along in the next page's link.

How the search stays indexed: a search is a case-insensitive substring of the email or
the display name (an operator pastes "otieno" from a bank statement, or the part of an
email before the @), so a prefix index (text_pattern_ops) would miss most of what is
typed. On PostgreSQL migration 0018 adds two trigram indexes (pg_trgm, GIN) on
lower(email) and lower(display_name): `LIKE '%…%'` on each is a bitmap scan of its
index, OR-ed, whatever the table's size. Trigrams need three characters, so a shorter
search is refused with a message (an all-digit search also finds the account with
that id). SQLite scans; it is for development.
"""

import re

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import func, or_, select
from wtforms import StringField
from wtforms.validators import DataRequired

from soma.admin.blueprint import bp
from soma.admin.confirm import confirmation, confirmed
from soma.auth import freeze as freezing
from soma.extensions import db
from soma.forms import bounded, strip
from soma.inputs import parse_id, query_id
from soma.models import (
    AdminAction,
    Alert,
    ClassSession,
    Purchase,
    Role,
    User,
    Withdrawal,
    WithdrawalStatus,
)
from soma.models.classes import OCCUPYING_STATUSES
from soma.payouts import withdrawals as withdrawal_service
from soma.security import role_required
from soma.wallet import history
from soma.wallet.service import wallet_summary

USERS_PER_PAGE = 50
# What the account page shows of each list: the newest this many.
RECENT = 20
# Trigrams are three characters: a shorter search could not use the index.
SEARCH_MIN = 3


class UserSearchForm(FlaskForm):
    """The search box of /admin/users (a GET: no CSRF token)."""

    class Meta:
        csrf = False

    q = StringField(
        "Email or name",
        filters=[strip],
        validators=bounded(User.email, "the search"),
    )


def _reason_field(label: str, missing: str) -> StringField:
    return StringField(
        label,
        filters=[strip],
        validators=[DataRequired(missing), *bounded(User.frozen_reason, "the reason")],
    )


class FreezeForm(FlaskForm):
    reason = _reason_field(
        "Why freeze it? (kept in the admin record; the user is not shown it)",
        "Say why the account is frozen.",
    )


class UnfreezeForm(FlaskForm):
    reason = _reason_field(
        "Why unfreeze it? (kept in the admin record)", "Say why the account is unfrozen."
    )


def _like(text: str) -> str:
    """`text` as a LIKE pattern matching it anywhere, its wildcards taken literally."""
    return "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"


def _search(query, text: str):
    pattern = _like(text.lower())
    found = or_(
        func.lower(User.email).like(pattern, escape="\\"),
        func.lower(User.display_name).like(pattern, escape="\\"),
    )
    number = parse_id(text, User.id)
    return query.where(or_(found, User.id == number) if number else found)


@bp.get("/users")
@role_required(Role.ADMIN)
def users():
    """Accounts, newest first, a page at a time by id: all, or one role's, or a search's."""
    form = UserSearchForm(request.args)
    role = request.args.get("role") or None
    role = role if role in {r.value for r in Role} else None
    before = request.args.get("before", type=query_id(User.id))
    status = 200
    q = None
    if form.validate() and form.q.data:
        q = form.q.data
        if len(q) < SEARCH_MIN and parse_id(q, User.id) is None:
            form.q.errors = [f"Type at least {SEARCH_MIN} characters of an email or a name."]
            status, q = 400, None
    elif form.q.errors:
        status = 400
    query = select(User).order_by(User.id.desc()).limit(USERS_PER_PAGE + 1)
    if role:
        query = query.where(User.role == role)
    if q:
        query = _search(query, q)
    if before:
        query = query.where(User.id < before)
    rows = [] if status != 200 else db.session.scalars(query).all()
    page, more = rows[:USERS_PER_PAGE], len(rows) > USERS_PER_PAGE
    return render_template(
        "admin/users.html",
        users=page,
        form=form,
        q=q,
        role=role,
        roles=list(Role),
        next_before=page[-1].id if more else None,
    ), status


def _user_or_404(user_id: int) -> User:
    return db.session.get(User, user_id) or abort(404)


def _newest(model, *conditions, order=()):
    return db.session.scalars(
        select(model).where(*conditions).order_by(*(order or (model.id.desc(),))).limit(RECENT)
    ).all()


def _user_page(user: User, freeze_form=None, unfreeze_form=None, status: int = 200):
    summary = wallet_summary(user)
    if user.role == Role.TEACHER:
        withdrawals = withdrawal_service.withdrawals_of(user, RECENT)
    else:
        withdrawals = []
    mine = or_(ClassSession.student_id == user.id, ClassSession.teacher_id == user.id)
    records = _newest(
        AdminAction,
        AdminAction.object_type == freezing.OBJECT_TYPE,
        AdminAction.object_id == user.id,
    )
    return render_template(
        "admin/user.html",
        user=user,
        summary=summary,
        entries=history.history_page(summary.wallet_id, limit=RECENT).rows,
        rate_type="teacher" if user.role == Role.TEACHER else "student",
        purchases=_newest(Purchase, Purchase.user_id == user.id),
        classes=_newest(
            ClassSession,
            mine,
            order=(ClassSession.scheduled_start.desc(), ClassSession.id.desc()),
        ),
        withdrawals=withdrawals,
        alerts=_newest(Alert, Alert.user_id == user.id),
        records=records,
        frozen_by=freezing.latest_freeze(user.id) if user.is_frozen else None,
        can_freeze=user.role != Role.ADMIN,
        freeze_form=freeze_form or FreezeForm(formdata=None),
        unfreeze_form=unfreeze_form or UnfreezeForm(formdata=None),
    ), status


@bp.get("/users/<id(users):user_id>")
@role_required(Role.ADMIN)
def user_detail(user_id: int):
    """One account: its wallet, history, purchases, classes, withdrawals, flags, alerts,
    the admin actions on it, and the freeze or unfreeze form."""
    return _user_page(_user_or_404(user_id))


def _open_items(user: User) -> str | None:
    """What a freeze leaves running, for the confirmation page to say."""
    classes = db.session.scalar(
        select(func.count())
        .select_from(ClassSession)
        .where(
            or_(ClassSession.student_id == user.id, ClassSession.teacher_id == user.id),
            ClassSession.status.in_([s.value for s in OCCUPYING_STATUSES]),
        )
    )
    waiting = db.session.scalar(
        select(func.count())
        .select_from(Withdrawal)
        .where(Withdrawal.user_id == user.id, Withdrawal.status == WithdrawalStatus.REQUESTED)
    )
    parts = []
    if classes:
        parts.append(
            f"{classes} class{'es' if classes != 1 else ''} booked or under way (one under way "
            "still settles; booked ones cannot start while the account is frozen)"
        )
    if waiting:
        parts.append(
            f"{waiting} withdrawal{'s' if waiting != 1 else ''} waiting for an admin "
            "(reject them on their pages if they should not be paid)"
        )
    return "This account has " + " and ".join(parts) + "." if parts else None


def _refused(user: User, error):
    """The account's page, saying why nothing was done (nothing was written)."""
    flash(error.message, "error")
    return _user_page(user, status=error.status)


@bp.post("/users/<id(users):user_id>/freeze")
@role_required(Role.ADMIN)
def freeze_user(user_id: int):
    """Freeze the account (after the confirmation step): it is logged out everywhere and
    can no longer buy, gift, book, start a class or withdraw."""
    user = _user_or_404(user_id)
    form = FreezeForm()
    if not form.validate_on_submit():
        return _user_page(user, freeze_form=form, status=422)
    try:
        freezing.check_freeze(current_user, user)
    except freezing.FreezeRefused as error:
        return _refused(user, error)
    if not confirmed():
        return confirmation(
            f"Freeze {user.display_name}'s account?",
            facts=[
                ("Account", f"{user.display_name} ({user.email}), {user.role}"),
                ("Reason", form.reason.data),
                (
                    "What happens",
                    "They are logged out everywhere, and cannot buy, give or withdraw tokens, "
                    "book classes or start them until unfrozen. Classes under way and "
                    "payments already made still go through. They get a notification.",
                ),
            ],
            button="Freeze the account",
            cancel_url=url_for("admin.user_detail", user_id=user.id),
            warning=_open_items(user),
        )
    try:
        freezing.freeze(current_user, user.id, form.reason.data)
    except freezing.FreezeRefused as error:
        return _refused(_user_or_404(user_id), error)
    flash(f"{user.display_name}'s account is frozen, and their sessions are ended.", "success")
    return redirect(url_for("admin.user_detail", user_id=user_id), 303)


@bp.post("/users/<id(users):user_id>/unfreeze")
@role_required(Role.ADMIN)
def unfreeze_user(user_id: int):
    """Unfreeze the account (after the confirmation step)."""
    user = _user_or_404(user_id)
    form = UnfreezeForm()
    if not form.validate_on_submit():
        return _user_page(user, unfreeze_form=form, status=422)
    try:
        freezing.check_unfreeze(current_user, user)
    except freezing.FreezeRefused as error:
        return _refused(user, error)
    if not confirmed():
        return confirmation(
            f"Unfreeze {user.display_name}'s account?",
            facts=[
                ("Account", f"{user.display_name} ({user.email}), {user.role}"),
                ("Frozen", user.frozen_reason or "not frozen"),
                ("Reason to unfreeze", form.reason.data),
            ],
            button="Unfreeze the account",
            cancel_url=url_for("admin.user_detail", user_id=user.id),
        )
    try:
        freezing.unfreeze(current_user, user.id, form.reason.data)
    except freezing.FreezeRefused as error:
        return _refused(_user_or_404(user_id), error)
    flash(f"{user.display_name}'s account is unfrozen.", "success")
    return redirect(url_for("admin.user_detail", user_id=user_id), 303)
