"""M-Pesa B2C's callbacks about withdrawals: the payment's result, its queue time-out, and
the Transaction Status query's answer. Safaricom signs none (the secret in the path
authenticates them) and never retries one; each is recorded once through the inbox.

- result paid -> the withdrawal paid, with the M-Pesa receipt (a late one, after a
  time-out, closes it paid all the same: Daraja refused any repeat of the request);
- result duplicate (15) -> nothing: it answers a repeated request, and says nothing of
  the first;
- result failed -> failed, the tokens released. A failure on our side (the float, the
  initiator: `platform_side`) is failed too, and logged as an alert for the admin: the
  request under this key is over (a repeat would be refused as a duplicate), so holding
  the teacher's tokens would help no one; they may withdraw again once it is fixed;
- time-out -> unknown: stays processing; the sweeper asks its status;
- status answer completed -> paid; anything else (not found, failed, the query refused)
  -> nothing is assumed: it stays processing, the audit flags it after
  WITHDRAWAL_PROCESSING_ALERT_MINUTES for an admin.
"""

from flask import current_app

from soma.alerts import payout_problem
from soma.extensions import db
from soma.models import MethodKind, Withdrawal
from soma.payouts import withdrawals
from soma.payouts.rails import B2C_PROVIDER, mpesa_withdrawal_id
from soma.providers import daraja, inbox


def _withdrawal(key: str | None) -> Withdrawal | None:
    withdrawal_id = mpesa_withdrawal_id(key) if key else None
    found = db.session.get(Withdrawal, withdrawal_id) if withdrawal_id else None
    if found is None or found.method.kind != MethodKind.MPESA:
        return None
    return found


def handle(kind: str, body, raw: bytes) -> inbox.Answer:
    """Classify, record once and act on one B2C callback of `kind` ("result", "timeout",
    "status-result", "status-timeout"); malformed -> kept as ignored, Answer.MALFORMED."""
    try:
        if kind == "result":
            read = daraja.read_b2c_result(body)
            act = lambda: _result(read)  # noqa: E731
        elif kind == "timeout":
            read = daraja.read_b2c_timeout(body)
            act = lambda: _timeout(read)  # noqa: E731
        elif kind == "status-result":
            read = daraja.read_status_result(body)
            act = lambda: _status(read)  # noqa: E731
        else:
            read = daraja.read_b2c_timeout(body)
            act = lambda: _status_timeout(read)  # noqa: E731
    except inbox.Malformed as malformed:
        return inbox.refuse(B2C_PROVIDER, raw, f"{kind}: {malformed}")
    event_id = read.event_id if kind != "status-timeout" else f"status-{read.event_id}"
    return inbox.receive(B2C_PROVIDER, event_id, f"b2c.{kind}", raw, act)


def _result(result: daraja.B2CResult) -> None:
    withdrawal = _withdrawal(result.originator_conversation_id)
    if withdrawal is None:
        raise inbox.Ignore(f"{result.originator_conversation_id} is not one of our withdrawals")
    if result.duplicate:
        raise inbox.Ignore("a duplicate: the answer to a repeated request, not to the first")
    source = "mpesa:b2c-result"
    if result.paid:
        _paid(withdrawal, result.receipt or "", result.amount_kes, source)
        return
    if result.platform_side:
        current_app.logger.error(
            "PAYOUT ALERT: M-Pesa B2C of withdrawal %s failed on our side (%s: %s): "
            "check the float, shortcode and initiator",
            withdrawal.id, result.code, result.desc,
        )  # fmt: skip
    # The alerts are raised after the move, which commits (or rolls back) its own
    # transaction: the inbox commits them with the event's record.
    try:
        withdrawals.mark_failed(withdrawal.id, source, result.message())
    except withdrawals.WithdrawalConflict as conflict:
        current_app.logger.error("PAYOUT ALERT: a B2C failure for %s: %s", withdrawal.id, conflict)
        _platform_side_alert(withdrawal, result)
        payout_problem(
            withdrawal,
            "mpesa-failure-conflict",
            f"M-Pesa reported withdrawal #{withdrawal.id} failed, but it could not be "
            f"marked failed: {conflict}",
        )
        raise inbox.Ignore(str(conflict)) from None
    _platform_side_alert(withdrawal, result)


def _platform_side_alert(withdrawal: Withdrawal, result: daraja.B2CResult) -> None:
    if result.platform_side:
        payout_problem(
            withdrawal,
            "mpesa-platform-side",
            f"M-Pesa payment of withdrawal #{withdrawal.id} failed on our side "
            f"({result.code}: {result.desc}): check the float, shortcode and initiator.",
        )


def _paid(withdrawal: Withdrawal, receipt: str, amount_kes: int | None, source: str) -> None:
    if amount_kes != withdrawal.amount_kes:
        current_app.logger.error(
            "PAYOUT ALERT: M-Pesa paid KES %s for withdrawal %s, which asked KES %s",
            amount_kes, withdrawal.id, withdrawal.amount_kes,
        )  # fmt: skip
    # As above: the alerts are raised after the move, and committed with the event's record.
    try:
        withdrawals.mark_paid(withdrawal.id, source, receipt)
    except withdrawals.WithdrawalConflict as conflict:
        # Paid after it was closed otherwise: the money left; an admin must see it.
        current_app.logger.error(
            "PAYOUT ALERT: M-Pesa paid withdrawal %s (%s), which is %s",
            withdrawal.id, receipt, withdrawal.status,
        )  # fmt: skip
        status = withdrawal.status
        _amount_alert(withdrawal, amount_kes)
        payout_problem(
            withdrawal,
            f"mpesa-paid-closed:{receipt}",
            f"M-Pesa paid withdrawal #{withdrawal.id} (receipt {receipt or 'none'}), which was "
            f"already {status}: the money left.",
        )
        raise inbox.Ignore(str(conflict)) from None
    _amount_alert(withdrawal, amount_kes)


def _amount_alert(withdrawal: Withdrawal, amount_kes: int | None) -> None:
    if amount_kes != withdrawal.amount_kes:
        payout_problem(
            withdrawal,
            "mpesa-amount",
            f"M-Pesa paid KES {amount_kes} for withdrawal #{withdrawal.id}, which asked "
            f"KES {withdrawal.amount_kes}.",
        )


def _timeout(timeout: daraja.B2CTimeout) -> None:
    withdrawal = _withdrawal(timeout.originator_conversation_id)
    if withdrawal is None:
        raise inbox.Ignore(f"{timeout.originator_conversation_id} is not one of our withdrawals")
    raise inbox.Ignore("timed out in Daraja's queue: unknown; the sweeper asks its status")


def _status(status: daraja.StatusResult) -> None:
    withdrawal = _withdrawal(status.payment_key)
    if withdrawal is None:
        raise inbox.Ignore(f"{status.payment_key} is not one of our withdrawals")
    if not status.completed:
        raise inbox.Ignore(
            f"status {status.code} {status.transaction_status or ''}: nothing is assumed"
        )
    _paid(withdrawal, status.receipt or "", status.amount_kes, "mpesa:b2c-status")


def _status_timeout(timeout: daraja.B2CTimeout) -> None:
    raise inbox.Ignore("the status query timed out: the sweeper asks again")
