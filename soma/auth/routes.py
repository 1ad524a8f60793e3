"""Sign-up, log-in, log-out and password pages."""

import hashlib

from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required, logout_user

from soma import clock, timezones
from soma.auth import reset, service, throttle
from soma.auth.forms import (
    AccountForm,
    ForgotPasswordForm,
    LoginForm,
    PasswordChangeForm,
    ResetPasswordForm,
    SignupForm,
)
from soma.extensions import limiter
from soma.security import forget_session, is_safe_next

bp = Blueprint("auth", __name__)

# Sign-up must say when an email is taken (the account is made and logged in at
# once; there is no mail to send a neutral answer to), so that answer is what a
# list of emails would be checked with: few are given per address. Sign-ups of
# any outcome are limited too, against accounts made in bulk.
SIGNUP_TAKEN_RATE_LIMIT = "10 per hour;30 per day"
SIGNUP_RATE_LIMIT = "50 per hour"
CREDENTIAL_CHANGE_RATE_LIMIT = "10 per hour"
# Asking for reset links: per address, and per email asked about (known or not, so the
# limit says nothing about which emails have accounts), against flooding a mailbox.
FORGOT_RATE_LIMIT = "5 per minute;30 per hour"
FORGOT_PER_EMAIL_RATE_LIMIT = "5 per hour"


def _login_rate_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


def _did_not_log_in(response) -> bool:
    """Whether a log-in POST failed (anything but the redirect of a success)."""
    return response.status_code >= 400


def _said_taken(response) -> bool:
    return bool(g.get("signup_email_taken"))


def _per_user() -> str:
    return f"user:{current_user.get_id()}"


def _per_email_asked() -> str:
    """The email a reset link is asked for, hashed (the limiter's keys are not for keeping it)."""
    email = service.normalise_email(request.form.get("email", "")[:300])
    return "reset-email:" + hashlib.sha256(email.encode()).hexdigest()


@bp.route("/signup", methods=["GET", "POST"])
@limiter.limit(SIGNUP_RATE_LIMIT, methods=["POST"])
@limiter.limit(SIGNUP_TAKEN_RATE_LIMIT, methods=["POST"], deduct_when=_said_taken)
def signup():
    """Create a student or teacher account and log it in."""
    if current_user.is_authenticated:
        return redirect(url_for("main.dashboard"))
    form = SignupForm()
    if form.validate_on_submit():
        try:
            user = service.sign_up(
                form.email.data,
                form.display_name.data,
                form.password.data,
                form.role.data,
                form.time_zone.data,
            )
        except service.EmailTaken as error:
            g.signup_email_taken = True
            form.email.errors.append(error.message)
        except service.InvalidAccount as error:
            form.form_errors.append(error.message)
        else:
            service.log_in(user)
            flash(f"Welcome to Soma, {user.display_name}!", "success")
            return redirect(url_for("main.dashboard"))
    status = 400 if form.is_submitted() else 200
    return render_template("auth/signup.html", form=form), status


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_rate_limit, methods=["POST"], deduct_when=_did_not_log_in)
def login():
    """Log a user in, then go to `next` when it is on this site.

    Only failed attempts count against the address (LOGIN_RATE_LIMIT), and wrong
    passwords against the account too (soma.auth.throttle): a school's pupils
    logging in from one address do not use up each other's tries.
    """
    if current_user.is_authenticated:
        return redirect(url_for("main.dashboard"))
    form = LoginForm()
    next_url = request.args.get("next")
    status, headers = (400 if form.is_submitted() else 200), {}
    if form.validate_on_submit():
        try:
            user = service.authenticate(form.email.data, form.password.data)
        except service.AccountPaused as paused:
            form.form_errors.append(paused.message)
            status, headers = paused.status, {"Retry-After": str(paused.retry_after)}
        else:
            if user is None:
                form.form_errors.append("That email and password do not match an account.")
            else:
                service.log_in(user)
                flash(f"Welcome back, {user.display_name}.", "success")
                return redirect(next_url if is_safe_next(next_url) else url_for("main.dashboard"))
    page = render_template("auth/login.html", form=form, next_url=next_url)
    return page, status, headers


@bp.post("/logout")
@login_required
def logout():
    """Log the current user out of every session of the account."""
    service.log_out(current_user)
    flash(
        "You have logged out. Any other device logged in to your account was logged out too.",
        "info",
    )
    return redirect(url_for("main.index"))


@bp.route("/account", methods=["GET", "POST"])
@login_required
def account():
    """The account's details, and its settings: time zone and notification email."""
    form = AccountForm(obj=current_user)
    if form.validate_on_submit():
        try:
            service.save_settings(current_user, form.time_zone.data, form.email_notifications.data)
        except service.InvalidAccount as error:
            form.time_zone.errors = [*form.time_zone.errors, error.message]
        else:
            flash(
                f"Saved. Times are now shown in {timezones.label(current_user.time_zone)}; "
                + (
                    "your notifications also go to your email."
                    if current_user.email_notifications
                    else "your notifications stay in the app, with no email."
                ),
                "success",
            )
            return redirect(url_for("auth.account"), 303)
    status = 400 if form.is_submitted() else 200
    return render_template("auth/account.html", form=form, now=clock.now()), status


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
@limiter.limit(CREDENTIAL_CHANGE_RATE_LIMIT, methods=["POST"], key_func=_per_user)
@limiter.limit(CREDENTIAL_CHANGE_RATE_LIMIT, methods=["POST"])
def change_password():
    """Change the password; every other session of the account ends, this one stays."""
    form = PasswordChangeForm(current_user)
    status, headers = (400 if form.is_submitted() else 200), {}
    if form.validate_on_submit():
        try:
            service.change_password(current_user, form.current.data, form.password.data)
        except service.WrongPassword as error:
            form.current.errors.append(error.message)
        except service.InvalidAccount as error:
            form.password.errors.append(error.message)
        except service.AccountPaused as paused:
            form.form_errors.append(paused.message)
            status, headers = paused.status, {"Retry-After": str(paused.retry_after)}
        else:
            flash(
                "Your password is changed. Every other device logged in to your "
                "account has been logged out.",
                "success",
            )
            return redirect(url_for("main.dashboard"))
    page = render_template("auth/password.html", form=form)
    return page, status, headers


@bp.route("/password/forgot", methods=["GET", "POST"])
@limiter.limit(FORGOT_RATE_LIMIT, methods=["POST"])
def forgot_password():
    """Ask for a link to reset a password; the answer is the same for every email.

    Past FORGOT_PER_EMAIL_RATE_LIMIT for one email the answer is still the same, and no
    more mail is sent: whoever asks for someone else's address again and again can
    neither flood them nor keep their own request out with a 429.
    """
    form = ForgotPasswordForm()
    if form.validate_on_submit():
        if throttle.allow(FORGOT_PER_EMAIL_RATE_LIMIT, _per_email_asked()):
            reset.request_reset(form.email.data)
        minutes = int(reset.LINK_LIFETIME.total_seconds() // 60)
        return render_template("auth/forgot_sent.html", email=form.email.data, minutes=minutes)
    status = 400 if form.is_submitted() else 200
    return render_template("auth/forgot.html", form=form), status


@bp.route("/password/reset/<token>", methods=["GET", "POST"])
@limiter.limit(CREDENTIAL_CHANGE_RATE_LIMIT, methods=["POST"])
def reset_password(token: str):
    """Choose a new password through an emailed link; every session of the account ends."""
    try:
        user = reset.user_for_token(token)
    except reset.ResetLinkRefused as refused:
        return _link_refused(refused)
    form = ResetPasswordForm(user)
    if form.validate_on_submit():
        try:
            reset.reset_password(token, form.password.data)
        except reset.ResetLinkRefused as refused:
            return _link_refused(refused)
        except service.InvalidAccount as error:
            form.password.errors.append(error.message)
        else:
            if current_user.is_authenticated:
                forget_session()
                logout_user()
            flash(
                "Your password is changed, and every device logged in to your account has "
                "been logged out. Log in with your new password.",
                "success",
            )
            return redirect(url_for("auth.login"))
    status = 400 if form.is_submitted() else 200
    page = render_template("auth/reset.html", form=form, user=user, token=token)
    # The token is in the address: no page is told more than our origin (which the CSRF
    # check of an HTTPS POST needs as its Referer; "no-referrer" would refuse every reset).
    return page, status, {"Referrer-Policy": "strict-origin"}


def _link_refused(refused: reset.ResetLinkRefused):
    page = render_template("auth/reset_refused.html", message=refused.message)
    return page, refused.status, {"Referrer-Policy": "strict-origin"}
