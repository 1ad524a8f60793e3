"""Give tokens to another student: checked, confirmed, then one ledger transfer."""

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from soma import ledger
from soma.auth.freeze import refuse_if_frozen
from soma.auth.service import find_user_by_email, normalise_email
from soma.errors import FieldRefusal
from soma.extensions import db
from soma.ledger.pricing import tokens_value_cents
from soma.models import EntryKind, Gift, PricingUserType, Role, User
from soma.notifications.service import notify
from soma.wallet.service import wallet_of

MAX_NOTE_LENGTH = Gift.__table__.c.note.type.length


class GiftRefused(FieldRefusal):
    """A gift that cannot be given."""

    title = "Gift not sent"
    status = 409


@dataclass(frozen=True)
class GiftPreview:
    recipient: User
    tokens: int
    note: str
    value_cents: int
    available_after: int


def _recipient(sender: User, email: str) -> User:
    recipient = find_user_by_email(email)
    if recipient is None:
        raise GiftRefused(f"There is no Soma account with the email {email}.", "email")
    if recipient.id == sender.id:
        raise GiftRefused("You cannot give tokens to yourself.", "email")
    if recipient.role != Role.STUDENT:
        raise GiftRefused(
            f"{email} is not a student account; gifts go from student to student.", "email"
        )
    return recipient


def preview_gift(sender: User, email: str, tokens: int, note: str = "") -> GiftPreview:
    """Check a gift before it is confirmed; raise GiftRefused with the reason.

    The balance is checked again, by the ledger, when the gift is given.
    """
    if sender.role != Role.STUDENT:
        raise GiftRefused("Only students can give tokens.")
    refuse_if_frozen(sender.id, "give tokens")  # (a frozen recipient may receive: it is incoming)
    recipient = _recipient(sender, email)
    available = wallet_of(sender.id).available
    if tokens > available:
        raise GiftRefused(
            f"You have {available} token{'s' if available != 1 else ''} available, "
            f"so you cannot give {tokens}.",
            "tokens",
        )
    return GiftPreview(
        recipient=recipient,
        tokens=tokens,
        note=note,
        value_cents=tokens_value_cents(tokens, PricingUserType.STUDENT),
        available_after=available - tokens,
    )


# A confirmation's nonce: 16 random characters, then 32 of an HMAC (with the app's
# secret) of them, the sender and the gift reviewed. Only the review step makes one,
# so a confirmation is always of a gift its sender reviewed (and was counted for).
_NONCE_RANDOM_LENGTH = 16
_NONCE_MAC_LENGTH = 32


def issue_nonce(sender_id: int, email: str, tokens: int, note: str) -> str:
    """The nonce the review step gives its confirmation form, for this sender and gift."""
    random_part = secrets.token_urlsafe(12)
    return random_part + _nonce_mac(random_part, sender_id, email, tokens, note)


def nonce_is_issued(nonce: str, sender_id: int, email: str, tokens: int, note: str) -> bool:
    """Whether the review step issued `nonce` to `sender_id` for exactly this gift."""
    if len(nonce) != _NONCE_RANDOM_LENGTH + _NONCE_MAC_LENGTH:
        return False
    random_part, mac = nonce[:_NONCE_RANDOM_LENGTH], nonce[_NONCE_RANDOM_LENGTH:]
    expected = _nonce_mac(random_part, sender_id, email, tokens, note)
    return hmac.compare_digest(mac.encode(), expected.encode())


def _nonce_mac(random_part: str, sender_id: int, email: str, tokens: int, note: str) -> str:
    signed = json.dumps(
        ["gift-confirm", random_part, sender_id, normalise_email(email), tokens, note]
    )
    digest = hmac.new(current_app.secret_key.encode(), signed.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:_NONCE_MAC_LENGTH]


def _gift_key(sender_id: int, nonce: str) -> str:
    return f"gift:{sender_id}:{nonce}"


def _same_gift(gift: Gift, recipient_email: str, tokens: int, note: str) -> bool:
    return (
        gift.recipient.email == recipient_email.lower()
        and gift.tokens == tokens
        and gift.note == note
    )


def give_gift(
    sender: User,
    email: str,
    tokens: int,
    note: str,
    nonce: str,
    *,
    link: str | None = None,
    now: datetime | None = None,
) -> tuple[Gift, bool]:
    """Give `tokens` from `sender` to the student with `email`, once per `nonce`.

    Returns (gift, created). A repeat of the same confirmation returns the first
    gift with created False and moves nothing. Raises GiftRefused, AccountFrozen (the
    sender's account), or the ledger's InsufficientTokens or IdempotencyConflict; then
    nothing is written.
    """
    key = _gift_key(sender.id, nonce)
    first = _first_outcome(key, email, tokens, note)
    if first is not None:
        return first, False
    try:
        preview = preview_gift(sender, email, tokens, note)
        recipient = preview.recipient
        with ledger.atomic():
            gift = Gift(
                key=key, sender_id=sender.id, recipient_id=recipient.id, tokens=tokens, note=note
            )
            db.session.add(gift)
            db.session.flush()
            ledger.transfer(
                sender.id,
                recipient.id,
                tokens,
                key=key,
                kind=EntryKind.GIFT,
                reference=("gift", gift.id),
                memo=_memo(sender, recipient, note),
                actor_id=sender.id,
                now=now,
            )
            # Again, share-locked, after the ledger's wallet locks (soma.auth.freeze): a
            # freeze committing meanwhile is seen here, or waits for this gift to commit.
            refuse_if_frozen(sender.id, "give tokens", lock=True)
            notify(
                recipient.id,
                "gift",
                f"{sender.display_name} gave you {tokens} token{'s' if tokens != 1 else ''}"
                + (f": “{note}”" if note else "."),
                link=link,
            )
    except (IntegrityError, GiftRefused, ledger.InsufficientTokens):
        # The same confirmation submitted twice at once: the first may have
        # committed meanwhile (taking the key, or the balance this one checked).
        # Then this is a repeat and answers with the first gift.
        db.session.rollback()
        first = _first_outcome(key, email, tokens, note)
        if first is None:
            raise
        return first, False
    return gift, True


def _first_outcome(key: str, email: str, tokens: int, note: str) -> Gift | None:
    """The gift already given under `key`, if any; IdempotencyConflict if it differs."""
    existing = db.session.scalar(select(Gift).where(Gift.key == key))
    if existing is not None and not _same_gift(existing, email, tokens, note):
        raise ledger.IdempotencyConflict(key)
    return existing


def _memo(sender: User, recipient: User, note: str) -> str:
    memo = f"Gift from {sender.display_name} to {recipient.display_name}"
    return f"{memo}: {note}" if note else memo
