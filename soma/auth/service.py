"""Accounts: creating users, checking credentials, and the sessions they log in to.

A session holds the user's session version from when it was made, and is
valid only while that is still the user's (soma.security.load_user).
`end_sessions` raises it: every session of the account ends at once, on every
device and gunicorn worker, as each one's next request reads the user.
"""

from datetime import datetime

from flask import session
from flask_login import login_user, logout_user
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from soma import timezones
from soma.auth import throttle
from soma.auth.passwords import password_problem
from soma.errors import SomaError
from soma.extensions import db
from soma.ledger import open_wallet
from soma.models import SIGNUP_ROLES, Role, User
from soma.security import SESSION_VERSION_KEY, forget_session

# Checked against when the email is unknown, so a failed log-in takes as long
# whether or not the account exists.
_DUMMY_HASH = generate_password_hash("not-a-real-password")


class EmailTaken(SomaError):
    status = 409
    title = "Email already registered"


class InvalidAccount(SomaError):
    status = 400
    title = "Invalid account details"


def normalise_email(email: str) -> str:
    """Return `email` trimmed and lower-cased, the form it is stored in."""
    return email.strip().lower()


def find_user_by_email(email: str) -> User | None:
    """Return the user with `email`, or None."""
    return db.session.scalar(select(User).where(User.email == normalise_email(email)))


def create_user(
    email: str, display_name: str, password: str, role: str, time_zone: str = timezones.DEFAULT
) -> User:
    """Create and commit a user; raises EmailTaken or InvalidAccount.

    An unknown `time_zone` (the browser's guess) becomes UTC: it never refuses an account.
    """
    if role not in {r.value for r in Role}:
        raise InvalidAccount(f"Unknown role {role!r}.")
    problem = password_problem(password, (email, display_name))
    if problem is not None:
        raise InvalidAccount(problem)
    display_name = display_name.strip()
    if not display_name:
        raise InvalidAccount("A display name is required.")
    user = User(
        email=normalise_email(email),
        display_name=display_name,
        role=role,
        time_zone=timezones.zone_or_default(time_zone),
    )
    user.set_password(password)
    db.session.add(user)
    try:
        db.session.flush()
        open_wallet(user.id)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise EmailTaken("An account with this email already exists. Log in instead.") from None
    return user


def sign_up(
    email: str, display_name: str, password: str, role: str, time_zone: str = timezones.DEFAULT
) -> User:
    """Create a student or teacher account; sign-up never makes an admin."""
    if role not in {r.value for r in SIGNUP_ROLES}:
        raise InvalidAccount("Sign up as a student or a teacher.")
    return create_user(email, display_name, password, role, time_zone)


def save_settings(user: User, time_zone: str, email_notifications: bool) -> None:
    """Change the account's time zone and whether its notifications go by email."""
    if not timezones.is_zone(time_zone):
        raise InvalidAccount("Choose a time zone from the list.")
    user.time_zone = time_zone
    user.email_notifications = bool(email_notifications)
    db.session.commit()


class AccountPaused(SomaError):
    """Log-in to an account paused after too many wrong passwords (soma.auth.throttle)."""

    status = 429
    title = "Log-in paused"

    def __init__(self, until: datetime):
        super().__init__(throttle.pause_message(until))
        self.until = until

    @property
    def retry_after(self) -> int:
        return throttle.seconds_until(self.until)


def authenticate(email: str, password: str) -> User | None:
    """Return the user whose email and password match, or None.

    Raises AccountPaused, before the password is checked, when too many wrong
    passwords were given for `email` (an account's or not). A wrong password
    counts against the email; a right one clears its count.
    """
    until = throttle.paused_until(email)
    if until is not None:
        raise AccountPaused(until)
    user = find_user_by_email(email)
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
    elif user.check_password(password):
        throttle.clear_failures(email)
        return user
    throttle.record_failure(email)
    return None


def log_in(user: User) -> None:
    """Start a session for `user` in this browser."""
    login_user(user)
    session[SESSION_VERSION_KEY] = user.session_version


def end_sessions(user: User) -> None:
    """End every session of `user`, everywhere: each one's next request is logged out.

    Commits (with anything else the caller has pending, so a freeze and the end
    of the sessions it calls for are one transaction). The version is raised in
    the database (not from what this process read), so two ends at once both count.
    """
    db.session.execute(
        update(User)
        .where(User.id == user.id)
        .values(session_version=User.session_version + 1)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()  # expires `user`: its next read gets the new version


def log_out(user: User) -> None:
    """Log `user` out of every session: this one and any other browser's."""
    end_sessions(user)
    forget_session()
    logout_user()


class WrongPassword(SomaError):
    status = 400
    title = "Password not changed"


def change_password(user: User, current: str, new: str) -> None:
    """Give `user` the password `new` once `current` is theirs; raises WrongPassword,
    InvalidAccount or AccountPaused. Every other session of the account ends; this
    one stays logged in.

    A wrong current password counts as a failed log-in for the account: whoever
    holds a session cannot use this form to guess the password either.
    """
    until = throttle.paused_until(user.email)
    if until is not None:
        raise AccountPaused(until)
    if not user.check_password(current):
        throttle.record_failure(user.email)
        raise WrongPassword("That is not your current password.")
    problem = password_problem(new, (user.email, user.display_name))
    if problem is not None:
        raise InvalidAccount(problem)
    user.set_password(new)
    end_sessions(user)
    session[SESSION_VERSION_KEY] = user.session_version
