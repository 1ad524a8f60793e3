"""The alerts page: what the sweeper and the payout paths raised, and acknowledging it."""

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select, update
from sqlalchemy.orm import selectinload

from soma import clock, money
from soma.admin import actions
from soma.admin.blueprint import bp
from soma.admin.confirm import confirmation, confirmed
from soma.alert_rules import RULES
from soma.extensions import db
from soma.forms import ActionForm
from soma.inputs import query_id
from soma.models import Alert, Role, User
from soma.security import role_required

ALERTS_PER_PAGE = 50
STATUSES = {"open": "Open", "acknowledged": "Acknowledged", "all": "All"}


@bp.app_context_processor
def open_alerts():
    """Give templates `open_alerts()`: the count for an admin's navigation (one indexed
    count, made only when the navigation asks), 0 for anyone else."""

    def count() -> int:
        if not (current_user.is_authenticated and current_user.is_admin):
            return 0
        return open_alert_count()

    return {"open_alerts": count}


def open_alert_count() -> int:
    return db.session.scalar(
        select(func.count()).select_from(Alert).where(Alert.acknowledged_at.is_(None))
    )


def rule_label(rule: str) -> str:
    return RULES.get(rule, rule.replace("-", " ").capitalize())


def alert_links(alert: Alert) -> dict[str, str | None]:
    """Where an alert's user and object are seen: the user, the purchase, the withdrawal..."""
    user = _user_url(alert.user_id) if alert.user_id else None
    target = None
    if alert.object_type == "purchase" and alert.object_id:
        target = url_for("admin.purchase_detail", purchase_id=alert.object_id)
    elif alert.object_type == "withdrawal" and alert.object_id:
        target = url_for("admin.withdrawal_detail", withdrawal_id=alert.object_id)
    elif alert.object_type == "unmatched_payment":
        target = url_for("admin.unmatched_payments")
    elif alert.object_type == "user" and alert.object_id:
        target = _user_url(alert.object_id)
    return {"user": user, "object": target}


def _user_url(user_id: int) -> str:
    # The user's own page where the console has one (issue 13's user page), else the list.
    if "admin.user_detail" in current_app.view_functions:
        return url_for("admin.user_detail", user_id=user_id)
    return url_for("admin.users")


def _object_label(alert: Alert) -> str | None:
    labels = {
        "purchase": f"Purchase #{alert.object_id}",
        "withdrawal": f"Withdrawal #{alert.object_id}",
        "unmatched_payment": "Unmatched payments",
        "user": None,  # (the user link says it)
    }
    return labels.get(alert.object_type)


def _page(status: str, rule: str | None, part: str, before: int | None):
    """One page of alerts: open ones first (newest first), then acknowledged ones, each part
    paged by id; returns the rows and the (part, before) of the next page, if any."""
    parts = ["open", "acknowledged"] if status == "all" else [status]
    if part not in parts:
        part, before = parts[0], None
    rows: list[Alert] = []
    following = None
    for index in range(parts.index(part), len(parts)):
        current = parts[index]
        query = (
            select(Alert)
            .options(selectinload(Alert.user), selectinload(Alert.acknowledged_by))
            .order_by(Alert.id.desc())
            .limit(ALERTS_PER_PAGE - len(rows) + 1)
        )
        query = query.where(_in_part(current))
        if rule:
            query = query.where(Alert.rule == rule)
        if before and current == part:
            query = query.where(Alert.id < before)
        found = db.session.scalars(query).all()
        room = ALERTS_PER_PAGE - len(rows)
        rows.extend(found[:room])
        if len(found) > room:
            following = (current, rows[-1].id)
            break
        if len(rows) == ALERTS_PER_PAGE and index + 1 < len(parts):
            if _any(parts[index + 1], rule):
                following = (parts[index + 1], None)
            break
    return rows, following


def _in_part(part: str):
    return Alert.acknowledged_at.is_(None) if part == "open" else Alert.acknowledged_at.is_not(None)


def _any(part: str, rule: str | None) -> bool:
    query = select(Alert.id).where(_in_part(part))
    if rule:
        query = query.where(Alert.rule == rule)
    return db.session.scalar(query.limit(1)) is not None


@bp.get("/alerts")
@role_required(Role.ADMIN)
def alerts():
    """The alerts, open ones first, newest first; by status and rule, a page at a time."""
    status = request.args.get("status") or "open"
    status = status if status in STATUSES else "open"
    rule = request.args.get("rule") or None
    rule = rule if rule in RULES else None
    part = request.args.get("part") or ""
    before = request.args.get("before", type=query_id(Alert.id))
    rows, following = _page(status, rule, part, before)
    next_url = None
    if following:
        next_url = url_for(
            "admin.alerts", status=status, rule=rule, part=following[0], before=following[1]
        )
    return render_template(
        "admin/alerts.html",
        alerts=[(alert, alert_links(alert), _object_label(alert)) for alert in rows],
        status=status,
        statuses=STATUSES,
        rule=rule,
        rules=RULES,
        rule_label=rule_label,
        next_url=next_url,
        form=ActionForm(),
    )


@bp.post("/alerts/<id(alerts):alert_id>/acknowledge")
@role_required(Role.ADMIN)
def acknowledge_alert(alert_id: int):
    """Acknowledge an open alert, after a confirmation: once, whoever else tries at once."""
    alert = db.session.get(Alert, alert_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    back = url_for("admin.alerts")
    if alert.acknowledged_at is not None:
        flash(_already(alert), "error")
        return redirect(back, 303)
    if not confirmed():
        return confirmation(
            "Acknowledge this alert?",
            facts=[
                ("Alert", f"#{alert.id}: {rule_label(alert.rule)}"),
                ("Raised", money.when(alert.raised_at)),
                ("What", alert.message),
            ],
            button="Acknowledge",
            cancel_url=back,
            warning="It leaves the open alerts; it stays on the list of acknowledged ones.",
        )
    if not acknowledge(alert.id, current_user):
        alert = db.session.get(Alert, alert_id, populate_existing=True)
        flash(_already(alert), "error")
        return redirect(back, 303)
    flash(f"Alert #{alert_id} acknowledged.", "success")
    return redirect(back, 303)


def acknowledge(alert_id: int, admin: User) -> bool:
    """Acknowledge an open alert as `admin`, with the record of it, in one transaction;
    False (and nothing written) when it was acknowledged already.

    A compare-and-set: of two admins acknowledging at once, one does it, and only that
    one's action is recorded.
    """
    now = clock.now()
    moved = db.session.execute(
        update(Alert)
        .where(Alert.id == alert_id, Alert.acknowledged_at.is_(None))
        .values(acknowledged_at=now, acknowledged_by_id=admin.id)
        .execution_options(synchronize_session=False)
    ).rowcount
    if moved != 1:
        db.session.rollback()
        return False
    actions.record(
        admin,
        "acknowledge_alert",
        "alert",
        alert_id,
        {"acknowledged_at": None, "acknowledged_by_id": None},
        {"acknowledged_at": now, "acknowledged_by_id": admin.id},
    )
    db.session.commit()
    return True


def _already(alert: Alert) -> str:
    who = alert.acknowledged_by.display_name if alert.acknowledged_by else "another admin"
    return f"Alert #{alert.id} was already acknowledged by {who}. Nothing more was done."
