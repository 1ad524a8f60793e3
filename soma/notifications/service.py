"""Write and read a user's notifications. Writers add to the caller's transaction.

A notification also goes by email to a user who wants them (`email_notifications`):
the mail is queued in the same transaction (soma.mail), and sent after the commit.
"""

from sqlalchemy import func, select, update

from soma import mail
from soma.extensions import db
from soma.models import Notification, User, utcnow

PAGE_SIZE = 20


def notify(user_id: int, kind: str, message: str, link: str | None = None) -> Notification:
    """Add a notification for `user_id` in the current transaction (the caller commits)."""
    notification = Notification(user_id=user_id, kind=kind, message=message[:500], link=link)
    db.session.add(notification)
    _email(notification)
    return notification


def _email(notification: Notification) -> None:
    """Queue the notification's email when its user wants notifications by email."""
    user = db.session.get(User, notification.user_id)
    # users.email_notifications comes with the /account page; until then, everyone wants them.
    if user is None or not user.email_notifications:
        return
    db.session.flush()  # its id names the email
    subject, body = email_text(user.display_name, notification.message, notification.link)
    mail.queue(
        user.email,
        subject,
        body,
        notification.kind,
        f"notification:{notification.id}",
        user_id=user.id,
    )


def email_text(name: str, message: str, link: str | None) -> tuple[str, str]:
    """The subject and body of a notification's email to a user called `name`."""
    lines = [f"Hello {name},", "", message]
    if link:
        lines += ["", f"See it on Soma: {mail.absolute_url(link)}"]
    lines += [
        "",
        "— Soma",
        "",
        "You get this email because email notifications are on for your account. "
        f"Turn them off at {mail.absolute_url('/account')}.",
    ]
    return mail.subject_line(f"Soma: {message}"), "\n".join(lines) + "\n"


def unread_count(user_id: int) -> int:
    return db.session.scalar(
        select(func.count())
        .select_from(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None))
    )


def notifications_page(
    user_id: int, before_id: int | None = None, limit: int = PAGE_SIZE
) -> tuple[list[Notification], int | None]:
    """Return the user's notifications older than `before_id`, newest first, and the next cursor."""
    query = select(Notification).where(Notification.user_id == user_id)
    if before_id:
        query = query.where(Notification.id < before_id)
    rows = list(db.session.scalars(query.order_by(Notification.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more else None)


def mark_all_read(user_id: int, up_to_id: int) -> int:
    """Mark the user's unread notifications up to `up_to_id` read; return how many."""
    result = db.session.execute(
        update(Notification)
        .where(
            Notification.user_id == user_id,
            Notification.id <= up_to_id,
            Notification.read_at.is_(None),
        )
        .values(read_at=utcnow())
    )
    db.session.commit()
    return result.rowcount
