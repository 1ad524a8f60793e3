"""Password reset by email: a signed link that works once, for 30 minutes.

The link's token is signed with SECRET_KEY (itsdangerous, with its own salt, so no
other signed value of the app can pass for one) and carries the user's id and a
fingerprint of the current password hash. Setting a password makes a new hash (a new
salt each time, even for the same password), so once the link is used, or the password
is changed any other way, the token no longer matches: it works once. The fingerprint is
an HMAC, so the token, readable by whoever holds it, says nothing about the hash.

Asking for a link answers the same whether or not the email has an account; the mail is
queued only when it has one, and sent by the sweeper, so the answer does not wait on a
mail server either.
"""

import hashlib
import hmac
import secrets
from datetime import timedelta

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import update

from soma import clock, mail
from soma.auth import throttle
from soma.auth.passwords import password_problem
from soma.auth.service import InvalidAccount, end_sessions, find_user_by_email
from soma.errors import SomaError
from soma.extensions import db
from soma.models import User

LINK_LIFETIME = timedelta(minutes=30)
_SALT = "soma.password-reset"
# A token this app makes is about 100 characters; anything much longer is not one.
MAX_TOKEN_LENGTH = 300


class ResetLinkRefused(SomaError):
    status = 400
    title = "This link cannot be used"


class _ClockSigner(TimestampSigner):
    """Dates tokens by the app's clock (soma.clock), which tests move."""

    def get_timestamp(self) -> int:
        return int(clock.now().timestamp())


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt=_SALT, signer=_ClockSigner)


def _fingerprint(user_id: int, password_hash: str) -> str:
    key = current_app.secret_key.encode()
    return hmac.new(key, f"{user_id}:{password_hash}".encode(), hashlib.sha256).hexdigest()[:32]


def make_token(user: User) -> str:
    """A reset token for `user`'s current password."""
    return _serializer().dumps({"u": user.id, "f": _fingerprint(user.id, user.password_hash)})


def user_for_token(token: str) -> User:
    """The user whose password `token` may reset; ResetLinkRefused if it may not (expired,
    altered, already used, or its account gone)."""
    used = ResetLinkRefused(
        "This link to reset a password is not valid: it was already used, the password "
        "was changed since, or the link was copied incompletely. Ask for a new one."
    )
    if len(token) > MAX_TOKEN_LENGTH:
        raise used
    try:
        payload = _serializer().loads(token, max_age=int(LINK_LIFETIME.total_seconds()))
    except SignatureExpired:
        raise ResetLinkRefused(
            f"This link to reset a password has expired: links work for "
            f"{int(LINK_LIFETIME.total_seconds() // 60)} minutes. Ask for a new one."
        ) from None
    except BadSignature:
        raise used from None
    user_id = payload.get("u") if isinstance(payload, dict) else None
    if not isinstance(user_id, int) or not 0 < user_id < 2**31:
        raise used
    user = db.session.get(User, user_id)
    if user is None or not hmac.compare_digest(
        str(payload.get("f")), _fingerprint(user.id, user.password_hash)
    ):
        raise used
    return user


def request_reset(email: str) -> None:
    """Queue a reset link for the account of `email`, if there is one; nothing otherwise."""
    user = find_user_by_email(email)
    if user is None:
        _serializer().dumps({"u": 0, "f": _fingerprint(0, "")})  # the same work either way
        return
    link = mail.absolute_url(f"/password/reset/{make_token(user)}")
    minutes = int(LINK_LIFETIME.total_seconds() // 60)
    body = (
        f"Hello {user.display_name},\n\n"
        "Someone, hopefully you, asked to reset the password of your Soma account. "
        f"To choose a new password, open this link within {minutes} minutes:\n\n"
        f"{link}\n\n"
        "The link works once. If you did not ask, ignore this email: your password "
        "stays as it is.\n\n"
        "— Soma\n"
    )
    mail.queue(
        user.email,
        "Reset your Soma password",
        body,
        "password_reset",
        f"password-reset:{user.id}:{secrets.token_hex(12)}",
        user_id=user.id,
    )
    db.session.commit()


def reset_password(token: str, new: str) -> User:
    """Give the user of `token` the password `new` and end every session of the account;
    raises ResetLinkRefused or InvalidAccount."""
    user = user_for_token(token)
    problem = password_problem(new, (user.email, user.display_name))
    if problem is not None:
        raise InvalidAccount(problem)
    old_hash = user.password_hash
    probe = User()
    probe.set_password(new)
    # Only if the password is still the one the link was made for: of two submits of one
    # link at once, one sets the password and the other is refused.
    changed = db.session.execute(
        update(User)
        .where(User.id == user.id, User.password_hash == old_hash)
        .values(password_hash=probe.password_hash)
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed != 1:
        db.session.rollback()
        raise ResetLinkRefused(
            "This link to reset a password was just used. Log in with the new password."
        )
    end_sessions(user)  # commits the new password with the end of every session
    # Whoever holds the mailbox owns the account: a pause from wrong guesses ends too.
    throttle.clear_failures(user.email)
    return user
