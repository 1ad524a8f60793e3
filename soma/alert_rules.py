"""The sweeper's alert rules: what an operator of the money must look at.

`raise_alerts(now)` runs once per sweeper pass (every few seconds) and must stay cheap
at millions of rows, so no rule rescans history. Each rule over an append-only or
insert-only table reads only the rows past its watermark (a Heartbeat row named
"alerts:<source>", its `detail` the last id read), a bounded id range at a time. The
one rule over a changing state (withdrawals processing too long) reads the few rows of
that status through its index.

Ids come from sequences, and on PostgreSQL a row may commit after a row with a higher
id: the watermark never passes a row younger than LAG, so rows of the last LAG are read
again on the next pass. Reading a row twice raises nothing twice: each alert's cause is
unique (soma.alerts.raise_alert), and causes already raised are skipped before insert.

The causes (at most 200 characters), one alert each:

- low-balance:<user>:<posting>   a student's available tokens fell below one hour of
                                 class at the pricing in force; a later top-up and fall
                                 is a new cause
- purchase-failed:<purchase>     a purchase moved to failed
- payout-failed:<withdrawal>     a withdrawal moved to failed
- purchase-burst:<user>:<purchase>  a sixth purchase within an hour by one account; one
                                 alert per hour of such buying
- refund:<reversal>, dispute:<reversal>
- withdrawal-new-method:<withdrawal>  asked within 24 hours of adding its method
- withdrawal-large:<withdrawal>  above LARGE_WITHDRAWAL_CENTS
- withdrawal-stuck:<withdrawal>  processing past WITHDRAWAL_PROCESSING_ALERT_MINUTES
- mpesa-unmatched:<payment>      an M-Pesa payment we could not match to a purchase
- payout-problem:...             raised by the payout rails and webhooks (soma.payouts),
                                 where the PAYOUT ALERT log lines are
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from soma import money
from soma.alerts import raise_alert
from soma.extensions import db
from soma.ledger import pricing
from soma.models import (
    Alert,
    Heartbeat,
    PayoutMethod,
    Posting,
    Purchase,
    PurchaseEvent,
    PurchaseReversal,
    PurchaseStatus,
    Role,
    UnmatchedPayment,
    User,
    Wallet,
    Withdrawal,
    WithdrawalEvent,
    WithdrawalStatus,
)

# Rule -> its label on the alerts page. Rules raised elsewhere add theirs here.
RULES = {
    "low-balance": "Low balance",
    "purchase-failed": "Purchase failed",
    "payout-failed": "Payout failed",
    "purchase-burst": "Many purchases",
    "refund": "Refund",
    "dispute": "Dispute",
    "withdrawal-new-method": "Withdrawal to a new method",
    "withdrawal-large": "Large withdrawal",
    "withdrawal-stuck": "Withdrawal processing too long",
    "mpesa-unmatched": "Unmatched M-Pesa payment",
    "payout-problem": "Payout problem",
    "mail-failed": "Email refused",
}

LARGE_WITHDRAWAL_CENTS = 500_00  # a withdrawal above $500.00
NEW_METHOD_WINDOW = timedelta(hours=24)
BURST_WINDOW = timedelta(hours=1)
BURST_MORE_THAN = 5  # purchases in BURST_WINDOW

BATCH = 10_000  # ids read per source per pass: a backlog is worked off over a few passes
LAG = timedelta(minutes=2)  # rows younger than this are read again (see the module's note)


@dataclass(frozen=True)
class Candidate:
    rule: str
    cause: str
    message: str
    user_id: int | None = None
    object_type: str | None = None
    object_id: int | None = None


def raise_alerts(now: datetime) -> int:
    """Evaluate every rule on what changed since the last pass; how many alerts it raised.

    Each rule commits its alerts and its watermark together, so a rule that fails leaves
    the others' work, and its own is read again next pass.
    """
    raised = 0
    for rule in (
        _low_balances,
        _failed_purchases,
        _failed_payouts,
        _purchase_bursts,
        _reversals,
        _new_withdrawals,
        _stuck_withdrawals,
        _unmatched_payments,
    ):
        try:
            raised += rule(now)
            db.session.commit()
        except Exception:
            db.session.rollback()
            raise
    return raised


# Raising -----------------------------------------------------------------------------------


def _raise(candidates: list[Candidate]) -> int:
    """Raise the candidates whose cause has no alert yet (one indexed lookup for them all)."""
    if not candidates:
        return 0
    causes = {candidate.cause[:200] for candidate in candidates}
    known = set(db.session.scalars(select(Alert.cause).where(Alert.cause.in_(causes))))
    raised = 0
    for candidate in candidates:
        cause = candidate.cause[:200]
        if cause in known:
            continue
        known.add(cause)
        raised += raise_alert(
            candidate.rule,
            cause,
            candidate.message,
            user_id=candidate.user_id,
            object_type=candidate.object_type,
            object_id=candidate.object_id,
        )
    return raised


# Watermarks --------------------------------------------------------------------------------


def _heartbeat_name(source: str) -> str:
    return f"alerts:{source}"


def watermark(source: str) -> int:
    """The last id of `source` every rule over it has read (0 before the first pass)."""
    detail = db.session.scalar(
        select(Heartbeat.detail).where(Heartbeat.name == _heartbeat_name(source))
    )
    return int(detail) if detail and detail.isdigit() else 0


def _set_watermark(source: str, value: int, now: datetime) -> None:
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(Heartbeat).values(
        name=_heartbeat_name(source), at=now, detail=str(value)
    )
    db.session.execute(
        statement.on_conflict_do_update(
            index_elements=[Heartbeat.name],
            set_={"at": statement.excluded.at, "detail": statement.excluded.detail},
        )
    )


class _Window:
    """The ids of `source` to read this pass: (low, high], at most BATCH of them."""

    def __init__(self, source: str, id_column, time_column, now: datetime):
        self.source, self.id_column, self.time_column, self.now = (
            source,
            id_column,
            time_column,
            now,
        )
        self.low = watermark(source)
        top = db.session.scalar(select(func.max(id_column)))  # the primary key's last entry
        self.high = min(top or 0, self.low + BATCH)

    @property
    def empty(self) -> bool:
        return self.high <= self.low

    def where(self):
        return (self.id_column > self.low, self.id_column <= self.high)

    def advance(self) -> None:
        """Move the watermark past what was read, but never past a row younger than LAG."""
        if self.empty:
            return
        young = db.session.scalar(
            select(func.min(self.id_column)).where(*self.where(), self.time_column > self.now - LAG)
        )
        mark = self.high if young is None else young - 1
        if mark > self.low:
            _set_watermark(self.source, mark, self.now)


# The rules ---------------------------------------------------------------------------------


def _low_balances(now: datetime) -> int:
    """A student's available balance crossed below the cost of a one-hour class.

    The posting that took it below is the cause: it debited the available bucket, leaving
    less than the cost, from at least the cost before.
    """
    window = _Window("postings", Posting.id, Posting.created_at, now)
    if window.empty:
        return 0
    cost = pricing.class_cost(60, now)
    rows = db.session.execute(
        select(Posting.id, Posting.available_after, User.id, User.display_name)
        .join(Wallet, Wallet.id == Posting.wallet_id)
        .join(User, User.id == Wallet.user_id)
        .where(
            *window.where(),
            Posting.bucket == "available",
            Posting.amount < 0,
            Posting.available_after < cost,
            Posting.available_after - Posting.amount >= cost,
            User.role == Role.STUDENT.value,
        )
        .order_by(Posting.id)
    ).all()
    raised = _raise(
        [
            Candidate(
                "low-balance",
                f"low-balance:{user_id}:{posting_id}",
                f"{name} has {money.tokens(left)} available, less than one hour of class "
                f"({money.tokens(cost)}).",
                user_id=user_id,
                object_type="user",
                object_id=user_id,
            )
            for posting_id, left, user_id, name in rows
        ]
    )
    window.advance()
    return raised


def _failed_purchases(now: datetime) -> int:
    window = _Window("purchase_events", PurchaseEvent.id, PurchaseEvent.at, now)
    if window.empty:
        return 0
    rows = db.session.scalars(
        select(Purchase)
        .join(PurchaseEvent, PurchaseEvent.purchase_id == Purchase.id)
        .where(*window.where(), PurchaseEvent.to_status == PurchaseStatus.FAILED.value)
        .order_by(PurchaseEvent.id)
    ).all()
    raised = _raise(
        [
            Candidate(
                "purchase-failed",
                f"purchase-failed:{purchase.id}",
                f"Purchase #{purchase.id} of "
                f"{money.amount(purchase.amount_minor, purchase.currency)} "
                f"({purchase.provider_label}) failed"
                + (f": {purchase.failure_reason}" if purchase.failure_reason else "."),
                user_id=purchase.user_id,
                object_type="purchase",
                object_id=purchase.id,
            )
            for purchase in rows
        ]
    )
    window.advance()
    return raised


def _failed_payouts(now: datetime) -> int:
    window = _Window("withdrawal_events", WithdrawalEvent.id, WithdrawalEvent.at, now)
    if window.empty:
        return 0
    rows = db.session.scalars(
        select(Withdrawal)
        .join(WithdrawalEvent, WithdrawalEvent.withdrawal_id == Withdrawal.id)
        .where(*window.where(), WithdrawalEvent.to_status == WithdrawalStatus.FAILED.value)
        .order_by(WithdrawalEvent.id)
    ).all()
    raised = _raise(
        [
            Candidate(
                "payout-failed",
                f"payout-failed:{withdrawal.id}",
                f"Withdrawal #{withdrawal.id} of {money.usd(withdrawal.usd_cents)} failed"
                + (f": {withdrawal.failure_reason}" if withdrawal.failure_reason else "."),
                user_id=withdrawal.user_id,
                object_type="withdrawal",
                object_id=withdrawal.id,
            )
            for withdrawal in rows
        ]
    )
    window.advance()
    return raised


def _purchase_bursts(now: datetime) -> int:
    """More than BURST_MORE_THAN purchases within BURST_WINDOW by one account.

    Each new purchase is counted with its buyer's purchases of the hour before it (the
    index on user and time reads only those). The purchase that passes the limit is the
    cause; while the buyer keeps on, one alert per BURST_WINDOW is enough.
    """
    window = _Window("purchases", Purchase.id, Purchase.created_at, now)
    if window.empty:
        return 0
    new = db.session.execute(
        select(Purchase.id, Purchase.user_id, Purchase.created_at)
        .where(*window.where())
        .order_by(Purchase.id)
    ).all()
    candidates = []
    users = {user_id for _, user_id, _ in new}
    since = min(created for _, _, created in new) - BURST_WINDOW
    recent: dict[int, list[tuple[int, datetime]]] = {}
    for purchase_id, user_id, created in db.session.execute(
        select(Purchase.id, Purchase.user_id, Purchase.created_at).where(
            Purchase.user_id.in_(users), Purchase.created_at >= since
        )
    ):
        recent.setdefault(user_id, []).append((purchase_id, created))
    last_alerted = _last_burst_purchases(users)
    for purchase_id, user_id, created in new:
        count = sum(
            1
            for other_id, other_at in recent.get(user_id, ())
            if other_id <= purchase_id and created - BURST_WINDOW < other_at <= created
        )
        if count <= BURST_MORE_THAN:
            continue
        previous = last_alerted.get(user_id)
        if previous is not None and created - BURST_WINDOW < previous[1] <= created + BURST_WINDOW:
            continue  # the same spell of buying: its alert is raised
        last_alerted[user_id] = (purchase_id, created)
        candidates.append(
            Candidate(
                "purchase-burst",
                f"purchase-burst:{user_id}:{purchase_id}",
                f"{count} purchases within an hour by one account, up to purchase #{purchase_id}.",
                user_id=user_id,
                object_type="purchase",
                object_id=purchase_id,
            )
        )
    raised = _raise(candidates)
    window.advance()
    return raised


def _last_burst_purchases(users: set[int]) -> dict[int, tuple[int, datetime]]:
    """Each buyer's purchase that raised their latest burst alert, with its time."""
    latest = db.session.execute(
        select(Alert.user_id, func.max(Alert.object_id))
        .where(Alert.user_id.in_(users), Alert.rule == "purchase-burst")
        .group_by(Alert.user_id)
    ).all()
    found = {}
    for user_id, purchase_id in latest:
        created = db.session.scalar(select(Purchase.created_at).where(Purchase.id == purchase_id))
        if created is not None:
            found[user_id] = (purchase_id, created)
    return found


def _reversals(now: datetime) -> int:
    window = _Window("reversals", PurchaseReversal.id, PurchaseReversal.created_at, now)
    if window.empty:
        return 0
    rows = db.session.execute(
        select(PurchaseReversal, Purchase.user_id, Purchase.currency)
        .join(Purchase, Purchase.id == PurchaseReversal.purchase_id)
        .where(*window.where())
        .order_by(PurchaseReversal.id)
    ).all()
    raised = _raise(
        [
            Candidate(
                reversal.kind,
                f"{reversal.kind}:{reversal.id}",
                f"A {reversal.kind} of {money.amount(reversal.amount_minor, currency)} "
                f"on purchase #{reversal.purchase_id} ({reversal.status_label.lower()}).",
                user_id=user_id,
                object_type="purchase",
                object_id=reversal.purchase_id,
            )
            for reversal, user_id, currency in rows
        ]
    )
    window.advance()
    return raised


def _new_withdrawals(now: datetime) -> int:
    """A withdrawal asked within a day of adding its method, or above $500."""
    window = _Window("withdrawals", Withdrawal.id, Withdrawal.created_at, now)
    if window.empty:
        return 0
    rows = db.session.execute(
        select(Withdrawal, PayoutMethod.created_at)
        .join(PayoutMethod, PayoutMethod.id == Withdrawal.method_id)
        .where(*window.where())
        .order_by(Withdrawal.id)
    ).all()
    candidates = []
    for withdrawal, method_added in rows:
        about = dict(user_id=withdrawal.user_id, object_type="withdrawal", object_id=withdrawal.id)
        if withdrawal.created_at - method_added < NEW_METHOD_WINDOW:
            hours = max(0, int((withdrawal.created_at - method_added).total_seconds() // 3600))
            candidates.append(
                Candidate(
                    "withdrawal-new-method",
                    f"withdrawal-new-method:{withdrawal.id}",
                    f"Withdrawal #{withdrawal.id} of {money.usd(withdrawal.usd_cents)} goes to a "
                    f"payout method added {_hours(hours)} before it.",
                    **about,
                )
            )
        if withdrawal.usd_cents > LARGE_WITHDRAWAL_CENTS:
            candidates.append(
                Candidate(
                    "withdrawal-large",
                    f"withdrawal-large:{withdrawal.id}",
                    f"Withdrawal #{withdrawal.id} of {money.usd(withdrawal.usd_cents)} is above "
                    f"{money.usd(LARGE_WITHDRAWAL_CENTS)}.",
                    **about,
                )
            )
    raised = _raise(candidates)
    window.advance()
    return raised


def _hours(hours: int) -> str:
    if hours < 1:
        return "less than an hour"
    return "1 hour" if hours == 1 else f"{hours} hours"


def _stuck_withdrawals(now: datetime) -> int:
    """Withdrawals processing past the limit (the status index holds only the open few)."""
    from soma.payouts.withdrawals import processing_too_long

    return _raise(
        [
            Candidate(
                "withdrawal-stuck",
                f"withdrawal-stuck:{withdrawal.id}",
                f"Withdrawal #{withdrawal.id} of {money.usd(withdrawal.usd_cents)} has been "
                f"processing since {money.when(withdrawal.processing_at)}.",
                user_id=withdrawal.user_id,
                object_type="withdrawal",
                object_id=withdrawal.id,
            )
            for withdrawal in processing_too_long(now)
        ]
    )


def _unmatched_payments(now: datetime) -> int:
    window = _Window("unmatched", UnmatchedPayment.id, UnmatchedPayment.received_at, now)
    if window.empty:
        return 0
    rows = db.session.scalars(
        select(UnmatchedPayment)
        .where(*window.where(), UnmatchedPayment.purchase_id.is_(None))
        .order_by(UnmatchedPayment.id)
    ).all()
    raised = _raise(
        [
            Candidate(
                "mpesa-unmatched",
                f"mpesa-unmatched:{payment.id}",
                f"M-Pesa payment {payment.receipt} of "
                f"{money.amount(payment.amount_minor, payment.currency)} matches no purchase.",
                object_type="unmatched_payment",
                object_id=payment.id,
            )
            for payment in rows
        ]
    )
    window.advance()
    return raised


# Raised where they happen --------------------------------------------------------------------
