"""The record of every admin action: who did what to which object, before and after.

`record` adds the row to the session; the caller's transaction commits it with the
change itself, so an action that fails leaves no record and a record never lacks its
action. The table is append-only (migration 0016).
"""

import json
from datetime import date, datetime
from decimal import Decimal
from enum import Enum

from sqlalchemy import select

from soma import clock
from soma.extensions import db
from soma.models import AdminAction, User


def _plain(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not recorded")


def _text(values: dict | None) -> str | None:
    if values is None:
        return None
    return json.dumps(values, default=_plain, sort_keys=True, separators=(",", ":"))


def record(
    admin: User,
    action: str,
    object_type: str,
    object_id: int | None,
    before: dict | None = None,
    after: dict | None = None,
    reason: str | None = None,
) -> AdminAction:
    """Add the record of `admin` doing `action` to an object (committed by the caller)."""
    row = AdminAction(
        admin_id=admin.id,
        action=action,
        object_type=object_type,
        object_id=object_id,
        before=_text(before),
        after=_text(after),
        reason=reason,
        created_at=clock.now(),  # the app's clock, as the action's own rows use
    )
    db.session.add(row)
    return row


def values(text: str | None) -> dict:
    """A record's `before` or `after`, read back."""
    return json.loads(text) if text else {}


def recorded(action: str, object_type: str, object_id: int | None, after: dict) -> bool:
    """Whether an `action` on the object is recorded whose `after` holds these values."""
    texts = db.session.scalars(
        select(AdminAction.after).where(
            AdminAction.object_type == object_type,
            AdminAction.object_id == object_id,
            AdminAction.action == action,
        )
    )
    return any(all(values(text).get(k) == v for k, v in after.items()) for text in texts)
