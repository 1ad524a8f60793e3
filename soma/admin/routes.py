"""The admin area."""

from flask import Blueprint, render_template, request
from sqlalchemy import func, select

from soma.extensions import db
from soma.models import Role, User
from soma.security import role_required

bp = Blueprint("admin", __name__, url_prefix="/admin")

USERS_PER_PAGE = 50


@bp.get("/")
@role_required(Role.ADMIN)
def index():
    """Overview of accounts by role."""
    counts = dict(db.session.execute(select(User.role, func.count()).group_by(User.role)).all())
    return render_template(
        "admin/index.html", counts={r.value: counts.get(r.value, 0) for r in Role}
    )


@bp.get("/users")
@role_required(Role.ADMIN)
def users():
    """List accounts, newest first, optionally of one role, a page at a time by id."""
    role = request.args.get("role") or None
    before = request.args.get("before", type=int)
    query = select(User).order_by(User.id.desc()).limit(USERS_PER_PAGE + 1)
    if role in {r.value for r in Role}:
        query = query.where(User.role == role)
    else:
        role = None
    if before:
        query = query.where(User.id < before)
    rows = db.session.scalars(query).all()
    page, more = rows[:USERS_PER_PAGE], len(rows) > USERS_PER_PAGE
    next_before = page[-1].id if more else None
    return render_template(
        "admin/users.html", users=page, role=role, roles=list(Role), next_before=next_before
    )
