"""Accounts: creating users and checking credentials."""

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from soma.auth.passwords import password_problem
from soma.errors import SomaError
from soma.extensions import db
from soma.ledger import open_wallet
from soma.models import SIGNUP_ROLES, Role, User

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


def create_user(email: str, display_name: str, password: str, role: str) -> User:
    """Create and commit a user; raises EmailTaken or InvalidAccount."""
    if role not in {r.value for r in Role}:
        raise InvalidAccount(f"Unknown role {role!r}.")
    problem = password_problem(password, (email, display_name))
    if problem is not None:
        raise InvalidAccount(problem)
    display_name = display_name.strip()
    if not display_name:
        raise InvalidAccount("A display name is required.")
    user = User(email=normalise_email(email), display_name=display_name, role=role)
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


def sign_up(email: str, display_name: str, password: str, role: str) -> User:
    """Create a student or teacher account; sign-up never makes an admin."""
    if role not in {r.value for r in SIGNUP_ROLES}:
        raise InvalidAccount("Sign up as a student or a teacher.")
    return create_user(email, display_name, password, role)


def authenticate(email: str, password: str) -> User | None:
    """Return the user whose email and password match, or None."""
    user = find_user_by_email(email)
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    return user if user.check_password(password) else None
