"""Class reminders: an email to the teacher and to the student shortly before a class.

Each sweeper pass queues a reminder for every scheduled class starting within
REMINDER_LEAD (an index on status and start bounds the read). The outbox key
"reminder:<class id>:<user id>" makes each reminder go once, whatever the number of
passes or sweepers. A class cancelled before its pass gets none; one booked closer to
its start than the lead gets one at the next pass. Users who turned email off get none.
Times are in the reader's own zone.
"""

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from soma import mail, timezones
from soma.extensions import db
from soma.models import ClassSession, ClassStatus, User

REMINDER_LEAD = timedelta(minutes=15)
BATCH = 500  # classes read per pass; more starting within the lead wait for the next pass


def queue_reminders(now: datetime) -> int:
    """Queue the reminders of the classes starting within REMINDER_LEAD; how many were new."""
    sessions = list(
        db.session.scalars(
            select(ClassSession)
            .options(joinedload(ClassSession.student), joinedload(ClassSession.teacher))
            .where(
                ClassSession.status == ClassStatus.SCHEDULED.value,
                ClassSession.scheduled_start > now,
                ClassSession.scheduled_start <= now + REMINDER_LEAD,
            )
            .order_by(ClassSession.scheduled_start, ClassSession.id)
            .limit(BATCH)
        )
    )
    wanted = [
        (session, user, other, f"reminder:{session.id}:{user.id}")
        for session in sessions
        for user, other in ((session.teacher, session.student), (session.student, session.teacher))
        if user.email_notifications
    ]
    done = mail.queued_keys([key for *_, key in wanted])
    queued = 0
    for session, user, other, key in wanted:
        if key in done:
            continue
        subject, body = _reminder(session, user, other, now)
        queued += mail.queue(user.email, subject, body, "class_reminder", key, user_id=user.id)
    db.session.commit()
    return queued


def _reminder(session: ClassSession, user: User, other: User, now: datetime) -> tuple[str, str]:
    minutes = max(1, round((session.scheduled_start - now).total_seconds() / 60))
    # In the reader's own zone, as every page shows them times.
    zone = timezones.zone_of(user)
    start = timezones.local(session.scheduled_start, zone)
    short = timezones.abbreviation(session.scheduled_start, zone)
    role = "student" if other.id == session.student_id else "teacher"
    subject = f"Reminder: “{session.title}” starts at {start:%H:%M} {short}"
    body = (
        f"Hello {user.display_name},\n\n"
        f"Your class “{session.title}” with your {role} {other.display_name} starts in "
        f"{minutes} minute{'s' if minutes != 1 else ''}, at {start:%H:%M} {short} on "
        f"{start:%A %d %B %Y} ({session.duration_minutes} minutes).\n\n"
        f"Open the class: {mail.absolute_url(f'/classes/{session.id}')}\n\n"
        "— Soma\n"
    )
    return subject, body
