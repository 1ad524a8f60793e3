"""Every provider event recorded once, by provider and event id, with its raw body.

A webhook verifies its event, then hands it here with the function that acts on
it. The event is acted on until it is handled or ignored, once: a repeat of an
event already handled or ignored is acknowledged and not redone. An event that
cannot be acted on yet (`RetryLater`) is recorded as such, its work rolled back,
and the provider is answered 503 so that it sends the event again.
"""

import enum
from collections.abc import Callable

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from soma import clock
from soma.extensions import db
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

    @property
    def http_status(self) -> int:
        return 503 if self is Answer.RETRY else 200


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
    if not event_id or len(event_id) > 255 or "\x00" in event_id:
        raise ValueError("an event id is 1 to 255 characters")
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = text.replace("\x00", "")
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
