"""Alerts for the operator: raised once per cause, acknowledged by an admin.

`raise_alert` inserts the alert unless one with the same `cause` exists (a unique
index decides, so two processes raising the same cause make one alert). It joins the
caller's transaction: an alert about a change is committed with the change.
"""

from sqlalchemy.dialects import postgresql, sqlite

from soma import clock
from soma.extensions import db
from soma.models import Alert


def raise_alert(
    rule: str,
    cause: str,
    message: str,
    *,
    user_id: int | None = None,
    object_type: str | None = None,
    object_id: int | None = None,
) -> bool:
    """Raise the alert of `cause` once; True when this call raised it, False when it was."""
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(Alert)
        .values(
            rule=rule,
            cause=cause[:200],
            message=message[:500],
            user_id=user_id,
            object_type=object_type,
            object_id=object_id,
            raised_at=clock.now(),
        )
        .on_conflict_do_nothing(index_elements=[Alert.cause])
        .returning(Alert.id)
    )
    return db.session.execute(statement).scalar() is not None


def payout_problem(withdrawal, cause: str, message: str) -> bool:
    """Raise a payout problem of `withdrawal` (what a PAYOUT ALERT log line says), in the
    caller's transaction: the caller commits it."""
    return raise_alert(
        "payout-problem",
        f"payout-problem:{withdrawal.id}:{cause}",
        message,
        user_id=withdrawal.user_id,
        object_type="withdrawal",
        object_id=withdrawal.id,
    )
