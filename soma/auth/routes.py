"""Sign-up, log-in and log-out pages."""

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from soma.auth import service
from soma.auth.forms import LoginForm, SignupForm
from soma.extensions import limiter
from soma.security import is_safe_next

bp = Blueprint("auth", __name__)


def _login_rate_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


@bp.route("/signup", methods=["GET", "POST"])
def signup():
    """Create a student or teacher account and log it in."""
    if current_user.is_authenticated:
        return redirect(url_for("main.dashboard"))
    form = SignupForm()
    if form.validate_on_submit():
        try:
            user = service.sign_up(
                form.email.data, form.display_name.data, form.password.data, form.role.data
            )
        except service.EmailTaken as error:
            form.email.errors.append(error.message)
        except service.InvalidAccount as error:
            form.form_errors.append(error.message)
        else:
            login_user(user)
            flash(f"Welcome to Soma, {user.display_name}!", "success")
            return redirect(url_for("main.dashboard"))
    status = 400 if form.is_submitted() else 200
    return render_template("auth/signup.html", form=form), status


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_rate_limit, methods=["POST"])
def login():
    """Log a user in, then go to `next` when it is on this site."""
    if current_user.is_authenticated:
        return redirect(url_for("main.dashboard"))
    form = LoginForm()
    next_url = request.args.get("next")
    if form.validate_on_submit():
        user = service.authenticate(form.email.data, form.password.data)
        if user is None:
            form.form_errors.append("That email and password do not match an account.")
        else:
            login_user(user)
            flash(f"Welcome back, {user.display_name}.", "success")
            return redirect(next_url if is_safe_next(next_url) else url_for("main.dashboard"))
    status = 400 if form.is_submitted() else 200
    return render_template("auth/login.html", form=form, next_url=next_url), status


@bp.post("/logout")
@login_required
def logout():
    """Log the current user out."""
    logout_user()
    flash("You have logged out.", "info")
    return redirect(url_for("main.index"))
