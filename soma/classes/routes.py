"""Booking, the live class tracker, its timer fragment, and the teacher's controls.

The tracker page holds two htmx regions:
- `#timer` polls GET /classes/<id>/timer every second while the class is not
  final. The fragment carries the status it shows (`seen`); when the server's
  differs, the answer fires `class-changed`. A final class's fragment has no
  trigger, so the polling stops.
- `#panel` (the controls and the viewer's balance) reloads on `class-changed`.
The controls are forms: htmx posts them and swaps the panel (and the timer,
out of band); without JavaScript they post and the page reloads.
"""

import secrets
import zlib
from dataclasses import dataclass

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required

from soma import clock, timezones
from soma.admin.confirm import confirmation, confirmed
from soma.auth.freeze import AccountFrozen
from soma.classes import service, tracker
from soma.classes.forms import BookingForm, MeetingLinkForm
from soma.classes.machine import Action, InvalidMove
from soma.classes.poll_limit import poll_limited
from soma.errors import SomaError
from soma.extensions import db, limiter
from soma.forms import ActionForm
from soma.inputs import query_id
from soma.ledger import InsufficientTokens, get_token_pricing
from soma.ledger.pricing import class_cost_at
from soma.models import PricingUserType, Role, User
from soma.models.classes import DURATIONS, ClassSession
from soma.security import SESSION_USER_ENDPOINTS, refuse_ended_session, role_required

bp = Blueprint("classes", __name__, url_prefix="/classes")
SESSION_USER_ENDPOINTS.add("classes.timer")

ACTIONS = {
    "start": Action.START,
    "pause": Action.PAUSE,
    "resume": Action.RESUME,
    "end": Action.END_EARLY,
    "abort": Action.ABORT,
    "cancel": Action.CANCEL,
}


def _is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def _class_or_404(class_id: int) -> ClassSession:
    session = service.class_for(current_user, class_id)
    if session is None:
        abort(404)
    return session


# Booking ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quote:
    minutes: int
    cost: int
    affordable: int  # how many such classes the tokens not promised to booked classes cover
    short: int  # tokens missing for one


def _quotes(free: int) -> list[Quote]:
    pricing = get_token_pricing(PricingUserType.STUDENT, clock.now())
    quotes = []
    for minutes in DURATIONS:
        cost = class_cost_at(minutes, pricing)
        quotes.append(Quote(minutes, cost, free // cost, max(0, cost - free)))
    return quotes


def _booking_page(form: BookingForm, status: int = 200):
    budget = service.budget_of(current_user.id)
    if not form.key.data:
        form.key.data = secrets.token_urlsafe(16)
    zone = timezones.zone_of(current_user)
    return render_template(
        "classes/new.html",
        form=form,
        quotes=_quotes(budget.free),
        budget=budget,
        zone_label=timezones.label(zone, clock.now()),
    ), status


@bp.get("/new")
@role_required(Role.STUDENT)
def new():
    """The booking form, with what each duration costs and what the student can afford."""
    form = BookingForm(teachers=service.teachers())
    chosen = request.args.get("teacher", type=query_id(User.id))
    if chosen:
        form.teacher.data = chosen
    return _booking_page(form)


@bp.post("/new")
@role_required(Role.STUDENT)
def create():
    """Book the class; a double submit finds the first booking."""
    form = BookingForm(teachers=service.teachers())
    if not form.validate_on_submit():
        return _booking_page(form, 422)
    try:  # the student's wall-clock time, in their zone; stored as UTC
        start = timezones.to_utc(form.start.data, timezones.zone_of(current_user))
    except timezones.LocalTimeProblem as problem:
        form.start.errors = [*form.start.errors, problem.message]
        return _booking_page(form, 422)
    try:
        session = service.book(
            current_user,
            form.teacher.data,
            form.title.data or "",
            start,
            form.duration.data,
            form.key.data or secrets.token_urlsafe(16),
        )
    except service.BookingError as error:
        field = getattr(form, error.field or "teacher")
        field.errors = [*field.errors, error.message]
        return _booking_page(form, 422)
    except AccountFrozen as error:
        form.form_errors.append(error.message)
        return _booking_page(form, error.status)
    flash(f"Booked: “{session.title}”.", "success")
    return redirect(url_for("classes.show", class_id=session.id), 303)


# The tracker -----------------------------------------------------------------------------


def tracker_for(session, viewer_id: int) -> tracker.Tracker:
    """The timer of `session` for the viewer `viewer_id` (its student, its teacher, an admin)."""
    viewer = tracker.viewer_of(session, viewer_id)
    return tracker.tracker_for(session, viewer, clock.now(), service.pause_limit())


def panel_state(session) -> str:
    """What the panel shows of the class: its status and a tag of its meeting link.

    The panel carries it (a hidden input the timer's poll includes); when it is not the
    class's now, the timer fires `class-changed` and the panel reloads. So a panel left
    behind (a new link, or a reload that read the class just before a move and arrived
    after it) is put right by the next poll.
    """
    tag = zlib.crc32((session.meeting_url or "").encode())
    return f"{session.status}.{tag:08x}"


def changed_since(session, seen: str | None, panel: str | None) -> bool:
    """Whether the page that polled, having last seen status `seen` and panel `panel`,
    must be told the class changed (HX-Trigger: class-changed)."""
    return seen != session.status or panel not in (None, panel_state(session))


def _panel_context(
    session: ClassSession, error: str | None = None, link_form: MeetingLinkForm | None = None
) -> dict:
    """The panel's figures, for the viewer: the student's balance, the teacher's balance
    and earnings at the teacher rate, nothing of an admin's own."""
    viewer = tracker.viewer_of(session, current_user.id)
    available = locked = None
    if viewer != tracker.Viewer.ADMIN:
        available, locked = service.wallet_balances(current_user.id)
    earning = service.teacher_earning(session) if viewer == tracker.Viewer.TEACHER else None
    if link_form is None:
        link_form = MeetingLinkForm(formdata=None, meeting_url=session.meeting_url or "")
    return {
        "session": session,
        "error": error,
        "available": available,
        "locked": locked,
        "earning": earning,
        "viewer": viewer.value,
        "is_teacher": viewer == tracker.Viewer.TEACHER,
        "is_student": viewer == tracker.Viewer.STUDENT,
        "is_admin": current_user.role == Role.ADMIN,
        "form": ActionForm(),
        "link_form": link_form,
        "events": service.events_of(session.id),
        "panel_state": panel_state(session),
    }


@bp.get("/<id(class_sessions):class_id>")
@login_required
def show(class_id: int):
    """The class tracker: status, the live timer, tokens, balance, and the controls."""
    session = service.settle_if_due(_class_or_404(class_id))
    return _show_page(session)


def _show_page(
    session: ClassSession,
    error: str | None = None,
    status: int = 200,
    link_form: MeetingLinkForm | None = None,
):
    return render_template(
        "classes/show.html",
        tracker=tracker_for(session, current_user.id),
        refresh=None if session.is_final else tracker.NO_SCRIPT_REFRESH,
        **_panel_context(session, error, link_form),
    ), status


@bp.get("/<id(class_sessions):class_id>/timer")
@limiter.exempt  # its own limit, cheaper to count
@poll_limited
@login_required
def timer(class_id: int):
    """The timer fragment, polled every second: one query, for the class and the viewer.

    The common poll never gets here: soma.classes.fast_poll answers it beneath Flask,
    with the same checks, template and headers, and hands this view everything else
    (a 404, an ended session, a class to settle, a refused poll, ...).

    `current_user` here is a SessionUser (see soma.security): only its id and
    session version are used, and the viewer's row is read with the class; a
    session that has been ended is logged out here, as on every other page.

    A class that has fallen due is settled here, then read again as the tracker does.

    It renders its template alone, without the site's context processors (the
    fragment shows no navigation, no footer, no form); the security headers are
    added after it as on every response.
    """
    user = current_user._get_current_object()
    found = service.view_for(user.id, class_id)
    if found is None:
        abort(404)
    session, session_version = found
    if session_version != user.session_version:
        return refuse_ended_session()
    if service.due(service.clock_of(session), clock.now(), service.pause_limit()) is not None:
        viewer = db.session.get(User, user.id)
        found = service.class_for(viewer, class_id) if viewer is not None else None
        if found is None:
            abort(404)
        session = service.settle_if_due(found)
    headers = {}
    if changed_since(session, request.args.get("seen"), request.args.get("panel")):
        headers["HX-Trigger"] = "class-changed"
    template = current_app.jinja_env.get_template("classes/_timer.html")
    return template.render(tracker=tracker_for(session, user.id)), 200, headers


@bp.get("/<id(class_sessions):class_id>/panel")
@login_required
def panel(class_id: int):
    """The controls and the viewer's balance; reloaded when the class changes."""
    session = _class_or_404(class_id)
    return render_template("classes/_panel.html", **_panel_context(session))


@bp.post("/<id(class_sessions):class_id>/meeting-link")
@login_required
def meeting_link(class_id: int):
    """Set, change or remove where the class happens: its teacher's alone."""
    session = _class_or_404(class_id)
    if current_user.id != session.teacher_id:
        abort(403)
    form = MeetingLinkForm()
    if not form.validate_on_submit():
        return _link_answer(session, form, 422)
    try:
        session = service.set_meeting_url(session, current_user, form.meeting_url.data or None)
    except InvalidMove as error:
        db.session.rollback()
        return _link_answer(session, None, error.status, error.message)
    if not _is_htmx():
        flash("Meeting link saved." if session.meeting_url else "Meeting link removed.", "success")
        return redirect(url_for("classes.show", class_id=session.id), 303)
    return _link_answer(session, None, 200)


def _link_answer(
    session: ClassSession, form: MeetingLinkForm | None, status: int, error: str | None = None
):
    """The panel with the link form (its errors, if any); the whole page without htmx."""
    if not _is_htmx():
        return _show_page(session, error, status, link_form=form)
    context = _panel_context(session, error, link_form=form)
    return render_template("classes/_panel.html", **context), status


@bp.post("/<id(class_sessions):class_id>/<name>")
@login_required
def control(class_id: int, name: str):
    """Start, pause, resume, end, abort or cancel the class."""
    action = ACTIONS.get(name)
    if action is None:
        abort(404)
    session = _class_or_404(class_id)
    form = ActionForm()
    if not form.validate_on_submit():
        return _answer(session, "This form has expired. Reload the page and try again.", 400)
    if _admin_outside(session) and not confirmed():
        return _confirm_admin_control(session, action)
    try:
        session = service.act(session, action, current_user)
    except PermissionError:
        abort(403)
    except InsufficientTokens as error:
        db.session.rollback()
        return _answer(_class_or_404(class_id), _short_of_tokens(session, error), 409)
    except (InvalidMove, SomaError) as error:
        db.session.rollback()
        return _answer(_class_or_404(class_id), error.message, error.status)
    if not _is_htmx():
        return redirect(url_for("classes.show", class_id=session.id), 303)
    body, status = _answer(session, None, 200)
    # What the viewer's own move changed elsewhere on the page (the unread count: an
    # ended class notifies both sides) follows, as it does a move seen by the timer.
    return body, status, {"HX-Trigger": "class-changed"}


def _admin_outside(session: ClassSession) -> bool:
    """An admin acting on a class they are not in: confirmed first, and recorded."""
    return current_user.is_admin and current_user.id not in (session.teacher_id, session.student_id)


def _confirm_admin_control(session: ClassSession, action: Action):
    what = {
        Action.ABORT: (
            "Abort the class",
            "The class ends now, the teacher is paid nothing, and every held token goes "
            "back to the student.",
        ),
        Action.CANCEL: ("Cancel the class", "The class will not take place; nothing was held."),
    }.get(action, (action.value.replace("_", " ").capitalize(), ""))
    return confirmation(
        f"{what[0]}: {session.title}",
        [
            ("Class", f"#{session.id} {session.title}"),
            ("Student", session.student.display_name),
            ("Teacher", session.teacher.display_name),
            ("Status", session.status.replace("_", " ")),
            ("What happens", what[1]),
        ],
        what[0],
        url_for("classes.show", class_id=session.id),
        warning="This is recorded in the admin action log.",
    )


def _short_of_tokens(session: ClassSession, error: InsufficientTokens) -> str:
    if current_user.id == session.teacher_id:
        return (
            f"The student cannot afford this class: it costs {error.needed} tokens and "
            f"they have {error.available} available. Nothing was changed."
        )
    return str(error)


def _answer(session: ClassSession, error: str | None, status: int):
    """The panel (and, out of band, the timer) for htmx; else the whole page."""
    if not _is_htmx():
        return _show_page(session, error, status)
    return render_template(
        "classes/_panel_and_timer.html",
        tracker=tracker_for(session, current_user.id),
        **_panel_context(session, error),
    ), status
