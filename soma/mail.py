"""Email: queued in the caller's transaction, sent by the sweeper after the commit.

`queue` adds a row to the `outbox` table in the caller's session: mail about a change
commits with the change, and a transaction rolled back queues nothing. Inside a money
operation it is one more insert, never a send: no mail server can slow or fail it.

`drain` (each sweeper pass) claims the rows that are due, sends them, and records what
happened. A row is claimed by moving its next attempt a lease ahead and committing, so
another sweeper does not take it (on PostgreSQL the claim's SELECT skips rows another
sweeper is claiming at that moment). A failed send is tried again later, each time
waiting twice as long; a row the server refuses for good (5xx) MAX_REFUSALS times is
marked failed and kept, with the refusal, and an alert is raised for an admin. No row is
ever deleted. Should the sweeper die between sending and recording, the row is sent
again once its lease ends: mail is sent at least once, never lost.

Backends (MAIL_BACKEND): `console` prints each message to standard output (the default
outside production, for `make run`); `smtp` sends through MAIL_SERVER with smtplib.
"""

import contextlib
import smtplib
import ssl
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

from flask import current_app
from sqlalchemy import case, select, update
from sqlalchemy.dialects import postgresql, sqlite

from soma import clock
from soma.extensions import db
from soma.models import OutboxMessage

DRAIN_BATCH = 50  # rows claimed per pass; a backlog is worked off over a few passes
LEASE = timedelta(minutes=10)  # a claimed row is another sweeper's again after this
DRAIN_BUDGET = timedelta(seconds=60)  # a pass sends for no longer than this (< LEASE)
FIRST_RETRY = timedelta(minutes=1)
LONGEST_WAIT = timedelta(hours=6)
MAX_REFUSALS = 5  # attempts, the last refused for good (5xx), before a row is failed
# Sent before the rest of a backlog: someone is waiting for it, on a page that said so.
URGENT_KINDS = ("password_reset",)

_SUBJECT_LENGTH = OutboxMessage.subject.type.length
_ERROR_LENGTH = OutboxMessage.last_error.type.length


def absolute_url(path: str) -> str:
    """`path` on the app's public address (APP_BASE_URL): mail has no request to go by."""
    return current_app.config["APP_BASE_URL"] + path


def subject_line(subject: str) -> str:
    """A subject is one line: no header can be smuggled in through a title or a name."""
    subject = " ".join(subject.split())
    if len(subject) > _SUBJECT_LENGTH:
        subject = subject[: _SUBJECT_LENGTH - 1] + "…"
    return subject


def queue(
    to: str, subject: str, body: str, kind: str, key: str, user_id: int | None = None
) -> bool:
    """Add an email to the outbox in the caller's transaction (the caller commits).

    `key` names what the mail is about ("reminder:12:7"): an email with a key already
    queued is not queued again. True when this call queued it.
    """
    if len(key) > OutboxMessage.key.type.length:
        raise ValueError(f"outbox key too long: {key[:40]}...")
    now = clock.now()
    subject = subject_line(subject)
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(OutboxMessage)
        .values(
            to_address=to,
            subject=subject,
            body=body,
            kind=kind,
            key=key,
            user_id=user_id,
            created_at=now,
            attempts=0,
            next_attempt_at=now,
        )
        .on_conflict_do_nothing(index_elements=[OutboxMessage.key])
        .returning(OutboxMessage.id)
    )
    return db.session.execute(statement).scalar() is not None


def queued_keys(keys: list[str]) -> set[str]:
    """Which of `keys` are in the outbox already (queued, sent or failed)."""
    if not keys:
        return set()
    return set(db.session.scalars(select(OutboxMessage.key).where(OutboxMessage.key.in_(keys))))


@dataclass
class DrainResult:
    sent: int = 0
    retrying: int = 0
    failed: int = 0


@dataclass(frozen=True)
class _Claimed:
    id: int
    to: str
    subject: str
    body: str
    attempts: int


class _SendFailed(Exception):
    """One message not sent: why, and whether the server refused it for good."""

    def __init__(self, error: str, permanent: bool):
        super().__init__(error)
        self.error = error
        self.permanent = permanent


def drain(limit: int = DRAIN_BATCH) -> DrainResult:
    """Send up to `limit` due emails from the outbox and record each outcome as it happens.

    Each outcome is committed right after its send, so a sweeper that dies, or a lease
    that runs out, re-sends at most the one message in flight. A pass sends for at most
    DRAIN_BUDGET (well under the lease): a slow server never holds back the next pass's
    money work, and what is left is released, untried, for the next pass.
    """
    claimed = _claim(limit)
    result = DrainResult()
    if not claimed:
        return result
    for message, problem in _send_each(claimed, time.monotonic() + DRAIN_BUDGET.total_seconds()):
        now = clock.now()
        if problem is _UNTRIED:
            changes = {"next_attempt_at": now, "attempts": message.attempts - 1}
        elif problem is None:
            changes = {"sent_at": now, "last_error": None}
            result.sent += 1
        elif problem.permanent and message.attempts >= MAX_REFUSALS:
            changes = {"failed_at": now, "last_error": problem.error[:_ERROR_LENGTH]}
            _raise_failed_alert(message, problem.error)
            result.failed += 1
        else:
            changes = {
                "next_attempt_at": now + backoff(message.attempts),
                "last_error": problem.error[:_ERROR_LENGTH],
            }
            result.retrying += 1
        db.session.execute(
            update(OutboxMessage).where(OutboxMessage.id == message.id).values(**changes)
        )
        db.session.commit()
    if result.retrying or result.failed:
        current_app.logger.warning(
            "mail: %d sent, %d to retry, %d failed for good", *vars(result).values()
        )
    return result


def backoff(attempts: int) -> timedelta:
    """How long to wait after the `attempts`-th failed try: 1, 2, 4, ... minutes, up to 6 h."""
    return min(FIRST_RETRY * 2 ** max(0, min(attempts - 1, 20)), LONGEST_WAIT)


def _claim(limit: int) -> list[_Claimed]:
    """Take the due rows: count the attempt, move the next one a lease ahead, commit."""
    now = clock.now()
    query = (
        select(OutboxMessage)
        .where(
            OutboxMessage.sent_at.is_(None),
            OutboxMessage.failed_at.is_(None),
            OutboxMessage.next_attempt_at <= now,
        )
        .order_by(
            case((OutboxMessage.kind.in_(URGENT_KINDS), 0), else_=1),
            OutboxMessage.next_attempt_at,
            OutboxMessage.id,
        )
        .limit(limit)
    )
    if db.session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    claimed = []
    for row in db.session.scalars(query):
        row.attempts += 1
        row.next_attempt_at = now + LEASE
        claimed.append(_Claimed(row.id, row.to_address, row.subject, row.body, row.attempts))
    db.session.commit()
    return claimed


def _message(claimed: _Claimed, now: datetime) -> EmailMessage:
    config = current_app.config
    sender = config["MAIL_FROM"]
    message = EmailMessage()
    message["From"] = sender
    message["To"] = claimed.to
    message["Subject"] = claimed.subject
    message["Date"] = format_datetime(now)
    domain = parseaddr(sender)[1].rpartition("@")[2] or "soma.example"
    message["Message-ID"] = make_msgid(f"outbox.{claimed.id}", domain=domain)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(claimed.body)
    return message


_UNTRIED = _SendFailed("not tried this pass", False)


def _send_each(claimed: list[_Claimed], deadline: float):
    """Send the claimed messages one by one, yielding (message, None) for each sent, (message,
    _SendFailed) for each not sent, and (message, _UNTRIED) for those past the deadline."""
    now = clock.now()
    if current_app.config["MAIL_BACKEND"] == "console":
        for message in claimed:
            _print(_message(message, now))
            yield message, None
        return
    try:
        connection = _connect()
    except (OSError, smtplib.SMTPException) as error:
        # The server is down or refuses us: every message waits for the next try.
        problem = _problem(error)
        for message in claimed:
            yield message, problem
        return
    try:
        for index, message in enumerate(claimed):
            if time.monotonic() > deadline:
                for rest in claimed[index:]:
                    yield rest, _UNTRIED
                return
            try:
                connection.send_message(_message(message, now))
            except (smtplib.SMTPServerDisconnected, OSError) as error:
                # The connection is gone: this message and the rest wait for the next try.
                problem = _problem(error)
                for rest in claimed[index:]:
                    yield rest, problem
                return
            except smtplib.SMTPException as error:
                yield message, _problem(error)
                _reset(connection)
            except (ValueError, UnicodeError) as error:
                # An address this server cannot take (say, not ASCII without SMTPUTF8).
                yield message, _SendFailed(f"{type(error).__name__}: {error}", True)
                _reset(connection)
            else:
                yield message, None
    finally:
        try:
            connection.quit()
        except (OSError, smtplib.SMTPException):
            connection.close()


def _connect() -> smtplib.SMTP:
    config = current_app.config
    host, port = config["MAIL_SERVER"], config["MAIL_PORT"]
    timeout = config["MAIL_TIMEOUT_SECONDS"]
    if config["MAIL_USE_SSL"]:
        connection = smtplib.SMTP_SSL(
            host, port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = smtplib.SMTP(host, port, timeout=timeout)
    try:
        if config["MAIL_USE_TLS"]:
            connection.starttls(context=ssl.create_default_context())
        if config["MAIL_USERNAME"]:
            connection.login(config["MAIL_USERNAME"], config["MAIL_PASSWORD"])
    except BaseException:
        connection.close()
        raise
    return connection


def _reset(connection: smtplib.SMTP) -> None:
    """Abort the refused message's transaction so the next one starts clean."""
    # If it fails, the next send finds the connection gone and says so.
    with contextlib.suppress(OSError, smtplib.SMTPException):
        connection.rset()


def _problem(error: Exception) -> _SendFailed:
    """What went wrong, and whether the server refused for good (a 5xx answer)."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        answers = list(error.recipients.values())
        codes = [code for code, _ in answers]
        text = "; ".join(f"{code} {answer.decode(errors='replace')}" for code, answer in answers)
        return _SendFailed(f"recipient refused: {text}", all(code >= 500 for code in codes))
    if isinstance(error, smtplib.SMTPResponseException):
        answer = error.smtp_error
        if isinstance(answer, bytes):
            answer = answer.decode(errors="replace")
        return _SendFailed(f"{error.smtp_code} {answer}", error.smtp_code >= 500)
    return _SendFailed(f"{type(error).__name__}: {error}", False)


def _print(message: EmailMessage) -> None:
    """The console backend: the message's headers and text on standard output, readable
    (not in the transfer encoding it would travel in)."""
    rule = "-" * 72
    headers = "".join(f"{name}: {value}\n" for name, value in message.items())
    sys.stdout.write(f"{rule}\n{headers}\n{message.get_content()}{rule}\n")
    sys.stdout.flush()


def _raise_failed_alert(message: _Claimed, error: str) -> None:
    from soma.alerts import raise_alert

    raise_alert(
        "mail-failed",
        f"mail-failed:{message.id}",
        f"An email to {message.to} (“{message.subject}”) was refused {message.attempts} "
        f"times and is no longer retried: {error}",
        object_type="outbox",
        object_id=message.id,
    )
