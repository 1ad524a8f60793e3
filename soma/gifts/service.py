"""Give tokens to another student: checked, confirmed, then one ledger transfer."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from soma import ledger
from soma.auth.service import find_user_by_email
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
    gift with created False and moves nothing. Raises GiftRefused, or the
    ledger's InsufficientTokens or IdempotencyConflict; then nothing is written.
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
