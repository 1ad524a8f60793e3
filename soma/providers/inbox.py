"""Every provider event recorded once, by provider and event id, with its raw body.

A webhook verifies its event, then hands it here with the function that acts on
it. The event is acted on until it is handled or ignored, once: a repeat of an
event already handled or ignored is acknowledged and not redone. An event that
cannot be acted on yet (`RetryLater`) is recorded as such, its work rolled back,
and the provider is answered 503 so that it sends the event again.

A body that is authentic (its signature or secret is right) but malformed — no
event id, an id the column cannot hold, a field of the wrong type, an amount
that is not a number — is classified before anything acts on it: it is kept
(`refuse`) as ignored, with the reason, and answered 400. It is kept under an id
derived from the body itself, never under the id it claims: a claimed id may be
unstorable (too long, a NUL), and a malformed body must never take the place of
the well-formed event of the same id, which would then be a "duplicate" and never
acted on. A body whose signature is wrong is not kept at all (anyone can send one).
"""

import enum
import hashlib
from collections.abc import Callable

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from soma import clock
from soma.extensions import db
from soma.inputs import control_characters, text_fits
from soma.models import EventStatus, ProviderEvent


class RetryLater(Exception):
    """The event cannot be acted on yet; the provider should send it again."""


class Ignore(Exception):
    """The event is understood and there is nothing to do; the message says why."""


class Answer(enum.StrEnum):
    HANDLED = "handled"
    IGNORED = "ignored"
    RETRY = "retry"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"  # authentic but unreadable: kept as ignored, answered 400

    @property
    def http_status(self) -> int:
        if self is Answer.RETRY:
            return 503
        return 400 if self is Answer.MALFORMED else 200


class Malformed(ValueError):
    """An authentic body that is not an event we can read; the message says what is wrong."""


def storable_id(value) -> bool:
    """Whether `value` can be an event's stored id: text, 1 to the column's length, printable."""
    return text_fits(value, ProviderEvent.event_id)


def printable(value, limit: int = 80) -> str:
    """`value` as text fit for a note: control characters dropped, at most `limit` long."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c for c in text if not control_characters(c))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return text.replace("\x00", "")


def _known(provider: str, event_id: str) -> ProviderEvent | None:
    return db.session.scalars(
        select(ProviderEvent)
        .where(ProviderEvent.provider == provider, ProviderEvent.event_id == event_id)
        .execution_options(populate_existing=True)
    ).first()


def receive(
    provider: str, event_id: str, kind: str, body: bytes | str, act: Callable[[], None]
) -> Answer:
    """Act on the event once; record it (handled, ignored with why, or to be retried).

    `act` runs in the session's transaction and commits or rolls back its own
    money operations; it raises Ignore or RetryLater to say so.
    """
    if not storable_id(event_id):
        raise Malformed("an event id is 1 to 255 printable characters")  # (classify first)
    text = _text(body)
    known = _known(provider, event_id)
    if known is not None and known.status != EventStatus.RETRY:
        db.session.rollback()
        return Answer.DUPLICATE
    db.session.rollback()  # (only what `act` does is committed with the record)
    try:
        act()
        status, note = EventStatus.HANDLED, ""
    except Ignore as ignored:
        status, note = EventStatus.IGNORED, str(ignored)
    except RetryLater as later:
        db.session.rollback()
        current_app.logger.info("%s: %s; asking for %s again", provider, later, event_id)
        status, note = EventStatus.RETRY, str(later)
    _record(provider, event_id, kind, text, status, note)
    return Answer(status.value)


def refuse(provider: str, body: bytes | str, reason: str, claimed_id=None) -> Answer:
    """Keep an authentic but malformed body as ignored, with `reason`; Answer.MALFORMED.

    Kept under `malformed:<sha256 of the body>` (so the same body sent again is one
    record), never under the id it claims (see the module's note); the note says
    which id it claimed.
    """
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    event_id = f"malformed:{hashlib.sha256(raw).hexdigest()}"
    note = f"malformed: {reason}"
    if claimed_id is not None:
        note += f" (claims id {printable(claimed_id)})"
    db.session.rollback()
    if _known(provider, event_id) is None:
        _record(provider, event_id, "malformed", _text(body), EventStatus.IGNORED, note)
    else:
        db.session.rollback()
    return Answer.MALFORMED


def _record(provider, event_id, kind, text, status: EventStatus, note: str) -> None:
    now = clock.now()
    values = {
        "status": status.value,
        "note": note[:255],
        "handled_at": None if status == EventStatus.RETRY else now,
    }
    # A racing worker may act on the same event at once: acting is idempotent
    # (every money operation is keyed), and the record is written by whoever is first.
    known = _known(provider, event_id)
    if known is None:
        db.session.add(
            ProviderEvent(
                provider=provider,
                event_id=event_id,
                kind=kind[:64],
                body=text,
                attempts=1,
                received_at=now,
                **values,
            )
        )
    elif known.status == EventStatus.RETRY:
        db.session.execute(
            update(ProviderEvent)
            .where(ProviderEvent.id == known.id, ProviderEvent.status == EventStatus.RETRY.value)
            .values(attempts=ProviderEvent.attempts + 1, **values)
            .execution_options(synchronize_session=False)
        )
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
