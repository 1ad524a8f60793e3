"""The notifications page."""

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from soma.inputs import query_id
from soma.models import Notification
from soma.notifications import service

bp = Blueprint("notifications", __name__, url_prefix="/notifications")


@bp.app_context_processor
def unread_notifications():
    """Give templates `unread_notifications()`, counted only when the navigation asks."""

    def count() -> int:
        return service.unread_count(current_user.id) if current_user.is_authenticated else 0

    return {"unread_notifications": count}


@bp.get("/unread")
def unread():
    """The navigation's notifications link with its unread count, for htmx to swap in
    when a class changes (a class that ends notifies both sides). Logged out: nothing
    (204, which htmx does not swap), never the log-in page inside the navigation."""
    if not current_user.is_authenticated:
        return "", 204
    count = service.unread_count(current_user.id)
    # (and the closed phone menu's count, out of band)
    return render_template("notifications/_unread.html", unread=count, oob=True)


@bp.get("/")
@login_required
def index():
    """The user's notifications, newest first, unread ones marked."""
    before = request.args.get("before", type=query_id(Notification.id))
    notifications, next_before = service.notifications_page(current_user.id, before)
    return render_template(
        "notifications/index.html", notifications=notifications, next_before=next_before
    )


@bp.post("/read")
@login_required
def mark_read():
    """Mark every notification the user has seen as read."""
    up_to = request.form.get("up_to", type=query_id(Notification.id))
    if up_to is None:
        flash("Nothing was marked: reload the page and try again.", "error")
        return redirect(url_for("notifications.index"))
    service.mark_all_read(current_user.id, up_to)
    flash("Notifications marked as read.", "success")
    return redirect(url_for("notifications.index"))
