"""Bank account numbers encrypted at rest, with Fernet (AES-128-CBC and HMAC-SHA256).

The key is `PAYOUT_ENCRYPTION_KEY` (see soma.config). Only `seal` and `unseal` see
a number in clear; nothing logs it, and pages show its last four digits.
"""

from cryptography.fernet import Fernet, InvalidToken
from flask import current_app


class Unreadable(Exception):
    """A sealed number this key cannot open (another key, or altered)."""


def _fernet() -> Fernet:
    return Fernet(current_app.config["PAYOUT_ENCRYPTION_KEY"].encode())


def seal(number: str) -> str:
    """The number, encrypted and authenticated, as text for the database."""
    return _fernet().encrypt(number.encode()).decode()


def unseal(sealed: str) -> str:
    """The number a `seal` made; Unreadable if it was not made with this key or was altered."""
    try:
        return _fernet().decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise Unreadable("the account number cannot be read with this key") from None
