"""The landing page, each role's home, and the health check."""

from flask import Blueprint, jsonify, redirect, render_template, url_for
from flask_login import current_user, login_required
from sqlalchemy import text

from soma.classes.service import dashboard_for
from soma.extensions import db, limiter
from soma.ledger.pricing import PricingMissing, get_token_pricing
from soma.models import PricingUserType, Role
from soma.security import role_required
from soma.wallet.service import wallet_summary

bp = Blueprint("main", __name__)

HOMES = {
    Role.STUDENT: "main.student_home",
    Role.TEACHER: "main.teacher_home",
    Role.ADMIN: "admin.index",
}


@bp.get("/")
def index():
    """The public landing page; logged-in users go to their home."""
    if current_user.is_authenticated:
        return redirect(url_for("main.dashboard"))
    try:
        student = get_token_pricing(PricingUserType.STUDENT)
        teacher = get_token_pricing(PricingUserType.TEACHER)
    except PricingMissing:
        student = teacher = None
    return render_template("main/index.html", student=student, teacher=teacher)


@bp.get("/dashboard")
@login_required
def dashboard():
    """Send the user to their role's home page."""
    return redirect(url_for(HOMES[Role(current_user.role)]))


@bp.get("/student")
@role_required(Role.STUDENT)
def student_home():
    """The student's home page."""
    return render_template(
        "main/student.html",
        summary=wallet_summary(current_user),
        classes=dashboard_for(current_user),
    )


@bp.get("/teacher")
@role_required(Role.TEACHER)
def teacher_home():
    """The teacher's home page."""
    return render_template(
        "main/teacher.html",
        summary=wallet_summary(current_user),
        classes=dashboard_for(current_user),
    )


@bp.get("/livez")
@limiter.exempt
def livez():
    """Answer that this process serves requests; asks nothing of the database (for probes)."""
    return jsonify(status="ok")


@bp.get("/healthz")
@limiter.exempt
def healthz():
    """Answer whether the app and its database are up, as JSON."""
    try:
        db.session.execute(text("SELECT 1"))
    except Exception:
        db.session.rollback()
        return jsonify(status="error", database="unavailable"), 503
    return jsonify(status="ok", database="ok")
