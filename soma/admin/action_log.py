"""The action log: every admin action, newest first, filtered and paged by id."""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from flask import render_template, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from soma import money
from soma.admin import actions
from soma.admin.blueprint import bp
from soma.extensions import db
from soma.inputs import parse_id, query_id
from soma.models import AdminAction, Role, User
from soma.money import is_whole
from soma.security import role_required

PER_PAGE = 50

# What the log says for each action; an action not named here shows its own name.
LABELS = {
    "refund": "Refunded a purchase",
    "match_payment": "Matched an unmatched payment",
    "approve_withdrawal": "Approved a withdrawal",
    "reject_withdrawal": "Rejected a withdrawal",
    "pay_withdrawal": "Marked a withdrawal paid",
    "publish_pricing": "Published pricing",
    "add_package": "Added a package",
    "retire_package": "Retired a package",
    "freeze": "Froze an account",
    "unfreeze": "Unfroze an account",
    "acknowledge_alert": "Acknowledged an alert",
    "run_audit": "Ran the audit",
    "abort_class": "Aborted a class",
    "cancel_class": "Cancelled a class",
}

OBJECT_LABELS = {
    "user": "User",
    "purchase": "Purchase",
    "withdrawal": "Withdrawal",
    "alert": "Alert",
    "pricing": "Pricing",
    "package": "Package",
    "unmatched_payment": "Unmatched payment",
    "audit_run": "Audit run",
    "class": "Class",
}

EARLIEST, LATEST = date(2000, 1, 1), date(2100, 12, 31)


def object_url(object_type: str, object_id: int | None) -> str | None:
    """Where an action's object is shown (plain paths for pages other parts may add)."""
    if object_id is None:
        return None
    if object_type == "purchase":
        return url_for("admin.purchase_detail", purchase_id=object_id)
    if object_type == "withdrawal":
        return url_for("admin.withdrawal_detail", withdrawal_id=object_id)
    if object_type == "user":
        return url_for("admin.user_detail", user_id=object_id)
    if object_type == "class":
        return url_for("classes.show", class_id=object_id)
    if object_type == "alert":
        return url_for("admin.alerts", status="all")
    return {
        "pricing": "/admin/pricing",
        "package": "/admin/packages",
        "unmatched_payment": "/admin/payments/unmatched",
        "audit_run": "/admin/audit",
    }.get(object_type)


def _shown(name: str, value, currency: str = "USD") -> str:
    """A recorded value as people read it: money formatted, times as the site shows them."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if is_whole(value) and name.endswith("_cents"):
        return money.usd(value)
    if is_whole(value) and name.endswith("_minor") and currency in ("USD", "KES"):
        return money.amount(value, currency)
    # Only the fields that are times: a reason an admin typed may look like one.
    if isinstance(value, str) and name.endswith("_at"):
        try:
            return money.when(datetime.fromisoformat(value).astimezone(UTC))
        except (ValueError, OverflowError):
            return value
    return str(value)


def changes(before_text: str | None, after_text: str | None) -> list[tuple[str, str, str]]:
    """(field, old, new) for each field the action changed; every field it set if it
    made something new (no before)."""
    before, after = actions.values(before_text), actions.values(after_text)
    currency = after.get("currency") or before.get("currency") or "USD"
    pairs = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if before and after and old == new:
            continue
        label = name.removesuffix("_cents").removesuffix("_minor").replace("_", " ")
        pairs.append((label, _shown(name, old, currency), _shown(name, new, currency)))
    return pairs


@dataclass
class Filters:
    admin: int | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: int | None = None
    start: date | None = None
    end: date | None = None

    def args(self) -> dict:
        found = {
            "admin": self.admin,
            "action": self.action,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
        }
        return {name: value for name, value in found.items() if value is not None}


def _day(text: str, what: str, errors: list[str]) -> date | None:
    if not text:
        return None
    try:
        day = date.fromisoformat(text) if len(text) == 10 else None
    except ValueError:
        day = None
    if day is None or not EARLIEST <= day <= LATEST:
        errors.append(f"Enter the {what} date as YYYY-MM-DD, such as 2026-12-01.")
        return None
    return day


def read_filters() -> tuple[Filters, list[str]]:
    """The filters asked for, each bounded; a value that is not one is an error to show."""
    errors: list[str] = []
    args = request.args
    found = Filters()
    if args.get("admin"):
        found.admin = parse_id(args["admin"], User.id)
        if found.admin is None:
            errors.append("Choose one of the admins.")
    action = args.get("action") or None
    if action is not None and action not in LABELS:
        errors.append("Choose one of the actions.")
    found.action = action if action in LABELS else None
    kind = args.get("object_type") or None
    if kind is not None and kind not in OBJECT_LABELS:
        errors.append("Choose one of the kinds of object.")
    found.object_type = kind if kind in OBJECT_LABELS else None
    if args.get("object_id"):
        found.object_id = parse_id(args["object_id"].strip().lstrip("#"), AdminAction.object_id)
        if found.object_id is None:
            errors.append("Enter the object's number, such as 42.")
    found.start = _day(args.get("start", "").strip(), "first", errors)
    found.end = _day(args.get("end", "").strip(), "last", errors)
    if found.start and found.end and found.start > found.end:
        errors.append("The first date comes after the last one.")
    return found, errors


@bp.get("/actions")
@role_required(Role.ADMIN)
def action_log():
    """Every admin action, newest first, by admin, action, object and date."""
    filters, errors = read_filters()
    before = request.args.get("before", type=query_id(AdminAction.id))
    rows, next_before = [], None
    if not errors:
        query = (
            select(AdminAction)
            .options(selectinload(AdminAction.admin))
            .order_by(AdminAction.id.desc())
            .limit(PER_PAGE + 1)
        )
        if filters.admin:
            query = query.where(AdminAction.admin_id == filters.admin)
        if filters.action:
            query = query.where(AdminAction.action == filters.action)
        if filters.object_type:
            query = query.where(AdminAction.object_type == filters.object_type)
        if filters.object_id:
            query = query.where(AdminAction.object_id == filters.object_id)
        if filters.start:
            query = query.where(
                AdminAction.created_at >= datetime.combine(filters.start, time(), UTC)
            )
        if filters.end:
            end = datetime.combine(filters.end + timedelta(days=1), time(), UTC)
            query = query.where(AdminAction.created_at < end)
        if before:
            query = query.where(AdminAction.id < before)
        found = db.session.scalars(query).all()
        rows = found[:PER_PAGE]
        next_before = rows[-1].id if len(found) > PER_PAGE else None
    admins = db.session.scalars(
        select(User).where(User.role == Role.ADMIN.value).order_by(User.id).limit(200)
    ).all()
    return render_template(
        "admin/actions.html",
        rows=[
            (row, changes(row.before, row.after), object_url(row.object_type, row.object_id))
            for row in rows
        ],
        filters=filters,
        errors=errors,
        admins=admins,
        labels=LABELS,
        object_labels=OBJECT_LABELS,
        next_before=next_before,
    ), (400 if errors else 200)
