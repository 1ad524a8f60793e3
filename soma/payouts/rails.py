"""The rails a withdrawal is paid on: one per payout method kind, in one explicit table.

A rail knows how money leaves for its kind of method; it never writes a
withdrawal or the ledger itself. It answers with an `Outcome`, and the withdrawal
service (soma.payouts.withdrawals) applies it through its one paid path and its
one failed path, whoever reports it (the rail, a webhook, the sweeper, an admin).

The service calls, for a withdrawal of the rail's kind:

- `send(withdrawal)` once, after the move to `processing` has committed (never
  inside a transaction: it may call a provider). A rail that sends to a provider
  claims the send first (`withdrawals.claim_send`), so a withdrawal is sent once
  however many callers race; it keys the provider request by the withdrawal
  (`withdrawal.key`, or `withdrawal:<id>`) so a retry cannot pay twice.
- `check(withdrawal, now)` from the sweeper, for each withdrawal still
  processing: retry a send that never happened, ask the provider about an
  outcome that is unknown. None means "still waiting"; never guess a failure.

A rail keeps the provider's id of what it sent (`withdrawals.record_request_id`);
its webhook finds the withdrawal by it (`withdrawals.by_request_id`) and calls
`withdrawals.mark_paid` / `withdrawals.mark_failed`: both are safe to call any
number of times, and `mark_failed` only for a definite failure (a time-out is
unknown: leave it processing and let `check` ask the provider).
Both provider rails are connected: Stripe Connect (`StripeRail`: a Transfer to the
teacher's connected account) and M-Pesa B2C (`MpesaRail`: a BusinessPayment to the
teacher's phone), each offered only when its settings are all there.
"""

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from flask import current_app

from soma import money
from soma.alerts import payout_problem
from soma.extensions import db
from soma.models import MethodKind, PayoutMethod, Withdrawal
from soma.payouts import sending
from soma.providers import daraja, sandbox, stripe_connect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a rail learnt: paid (with the reference that proves it) or failed (with why)."""

    paid: bool
    reference: str = ""
    reason: str = ""


def paid(reference: str) -> Outcome:
    return Outcome(True, reference=reference)


def failed(reason: str) -> Outcome:
    return Outcome(False, reason=reason)


class Rail:
    """A way to pay withdrawals of one kind of method."""

    kind: MethodKind
    # Proceeds to processing on its own when no admin review is needed.
    automatic = False
    # Paid by hand: an admin marks it paid (with a reference) or rejects it while processing.
    manual = False
    # Real money leaves: a withdrawal to a method added less than a day ago waits for an admin.
    moves_money = True
    # What the teacher is told when the rail is not offered.
    unavailable = "This payout method is not available."

    def offered(self) -> bool:
        """Whether teachers may add methods of this kind and withdraw to them now."""
        raise NotImplementedError

    def refusal(self, method: PayoutMethod) -> str | None:
        """Why a withdrawal cannot go to this method now (None: it can)."""
        return None

    def local_amount(self, net_cents: int) -> int | None:
        """What the rail sends in its own currency's whole units, if not US cents."""
        return None

    def amount_refusal(self, net_cents: int) -> str | None:
        """Why the rail cannot send `net_cents` (None: it can)."""
        return None

    def send(self, withdrawal: Withdrawal) -> Outcome | None:
        """Start paying a withdrawal that just moved to processing."""
        return None

    def check(self, withdrawal: Withdrawal, now: datetime) -> Outcome | None:
        """The sweeper's look at a withdrawal still processing."""
        return None


class SandboxRail(Rail):
    """Test payouts: nothing leaves; the sweeper pays it a few seconds after it starts
    processing, through the same paid path as a real rail. Never in production."""

    kind = MethodKind.SANDBOX
    automatic = True
    moves_money = False
    unavailable = "Test payouts are not available on this site."
    # How long a sandbox withdrawal stays processing before the sweeper pays it.
    delay = timedelta(seconds=3)

    def offered(self) -> bool:
        return sandbox.allowed()

    def check(self, withdrawal: Withdrawal, now: datetime) -> Outcome | None:
        if not self.offered():
            return None  # (in production an admin rejects it; it is never paid)
        if withdrawal.processing_at is None or withdrawal.processing_at > now - self.delay:
            return None
        return paid(f"SANDBOX-{withdrawal.id}")


class BankRail(Rail):
    """A bank transfer sent by hand: an admin approves it, makes the transfer, and marks
    it paid with the bank's reference (or rejects it, with a reason)."""

    kind = MethodKind.BANK
    manual = True

    def offered(self) -> bool:
        return True


# While the platform's Stripe balance is short, a transfer is tried again this often.
BALANCE_RETRY_EVERY = timedelta(minutes=5)


def transfer_group(withdrawal_id: int) -> str:
    """The Stripe transfer group of a withdrawal: how its transfer is found when its
    answer was lost (`stripe_connect.transfers_in_group`)."""
    return f"withdrawal:{withdrawal_id}"


class StripeRail(Rail):
    """A Transfer from the platform's Stripe balance to the teacher's connected account.

    A transfer made is the withdrawal paid on our side: the money is in the teacher's
    Stripe balance, and their account's payout to their bank is Stripe's (a failed one
    is shown to them, on the method; no ledger change). The request is keyed by the
    withdrawal (`withdrawal:<id>`, then `withdrawal:<id>:attempt-N`):

    - refused (the account cannot receive transfers, ...) -> failed, tokens released;
    - the platform's balance is short -> nothing made: stays processing, logged as an
      error for the admin; every BALANCE_RETRY_EVERY `check` raises the attempt
      (committed first) and sends under the next key, until the balance is topped up;
    - unknown (no answer, a 5xx, a key conflict) or not taken (429, 401) -> stays
      processing; `check` looks in the transfer group first, and sends under the SAME
      key only when nothing is there. Never a new key for an outcome that is unknown.
    """

    kind = MethodKind.STRIPE
    automatic = True
    unavailable = "Withdrawals through Stripe are not available on this site."

    def offered(self) -> bool:
        return stripe_connect.configured()

    def refusal(self, method: PayoutMethod) -> str | None:
        if not method.stripe_account_id or not method.transfers_active:
            return (
                "Your Stripe account cannot receive transfers yet: finish Stripe's "
                "onboarding (see Payout methods), then withdraw."
            )
        return None

    def send(self, withdrawal: Withdrawal) -> Outcome | None:
        if not sending.claim_send(withdrawal.id):
            return None
        return self._transfer(withdrawal, withdrawal.attempt)

    def check(self, withdrawal: Withdrawal, now: datetime) -> Outcome | None:
        if not self.offered():
            return None
        if withdrawal.provider_request_id:  # made and known (the paid move did not happen)
            return paid(withdrawal.provider_request_id)
        if withdrawal.submitted_at is None:  # never sent (the sender stopped before it)
            return self.send(withdrawal)
        if withdrawal.send_state == sending.BALANCE:
            # Nothing was made under this key: the next one, its number committed first;
            # one attempt per BALANCE_RETRY_EVERY since it was sent, not one per pass.
            if withdrawal.attempt > (now - withdrawal.submitted_at) // BALANCE_RETRY_EVERY:
                return None
            if not sending.next_attempt(withdrawal.id, withdrawal.attempt):
                return None  # (another sweeper moved it on)
            return self._transfer(withdrawal, withdrawal.attempt + 1)
        # Unknown, not taken, or the sender stopped mid-request: look before sending again.
        try:
            found = [
                transfer
                for transfer in stripe_connect.transfers_in_group(transfer_group(withdrawal.id))
                if transfer.metadata.get("withdrawal_id") == str(withdrawal.id)
            ]
        except Exception:
            log.warning("stripe: cannot list the transfers of withdrawal %s", withdrawal.id)
            return None
        if found:
            return self._made(withdrawal, found[-1])  # (newest first: the last was made first)
        return self._transfer(withdrawal, withdrawal.attempt)

    def _transfer(self, withdrawal: Withdrawal, attempt: int) -> Outcome | None:
        key = stripe_connect.attempt_key(transfer_group(withdrawal.id), attempt)
        try:
            transfer = stripe_connect.create_transfer(
                amount_cents=withdrawal.net_cents,
                destination=withdrawal.method.stripe_account_id or "",
                idempotency_key=key,
                transfer_group=transfer_group(withdrawal.id),
                metadata={"withdrawal_id": str(withdrawal.id)},
                description=f"Soma withdrawal #{withdrawal.id}",
            )
        except stripe_connect.TransferRefused as refused:
            return failed(f"Stripe refused the transfer: {refused}"[:255])
        except stripe_connect.InsufficientPlatformBalance:
            log.error(
                "PAYOUT ALERT: the platform's Stripe balance cannot cover withdrawal %s "
                "(%s cents, attempt %s): top it up; the sweeper retries",
                withdrawal.id, withdrawal.net_cents, attempt,
            )  # fmt: skip
            # One alert per attempt (the sweeper retries the same one each pass),
            # committed with the state below.
            payout_problem(
                withdrawal,
                f"stripe-balance:{attempt}",
                f"The platform's Stripe balance cannot cover withdrawal #{withdrawal.id} "
                f"({money.usd(withdrawal.net_cents)}): top it up; the sweeper retries it.",
            )
            sending.note_state(withdrawal.id, sending.BALANCE)
            return None
        except stripe_connect.TransferNotMade as not_made:
            log.warning("stripe: transfer of withdrawal %s not taken: %s", withdrawal.id, not_made)
            sending.note_state(withdrawal.id, sending.NOT_MADE)
            return None
        except stripe_connect.TransferOutcomeUnknown as unknown:
            log.warning("stripe: transfer of withdrawal %s unknown: %s", withdrawal.id, unknown)
            sending.note_state(withdrawal.id, sending.UNKNOWN)
            return None
        except ValueError as error:  # (no account id on the method: nothing was sent)
            return failed(f"The Stripe account cannot be paid: {error}"[:255])
        return self._made(withdrawal, transfer)

    def _made(self, withdrawal: Withdrawal, transfer) -> Outcome | None:
        if (transfer.amount, transfer.destination) != (
            withdrawal.net_cents,
            withdrawal.method.stripe_account_id,
        ):
            log.error(
                "PAYOUT ALERT: transfer %s of withdrawal %s is %s cents to %s, not what it "
                "asked: left processing for an admin",
                transfer.id, withdrawal.id, transfer.amount, transfer.destination,
            )  # fmt: skip
            payout_problem(
                withdrawal,
                f"stripe-transfer:{transfer.id}",
                f"Transfer {transfer.id} of withdrawal #{withdrawal.id} is "
                f"{money.usd(transfer.amount)} to {transfer.destination}, not what it asked "
                f"({money.usd(withdrawal.net_cents)} to {withdrawal.method.stripe_account_id}): "
                "it is left processing for an admin.",
            )
            db.session.commit()  # (the rail runs outside any other transaction)
            return None
        sending.record_request_id(withdrawal.id, transfer.id)
        return paid(transfer.id)


# M-Pesa's limits for one B2C payment, in whole shillings (Safaricom's published minimum,
# and the lower of its per-transaction maximums, so a payment is never refused for size).
B2C_MIN_KES = 10
B2C_MAX_KES = 150_000
# How long after sending the sweeper waits for the result before asking its status.
B2C_RESULT_WAIT = timedelta(minutes=5)
B2C_PROVIDER = "mpesa-b2c"


def status_query_due(sent_at: datetime, last_checked: datetime | None, now: datetime) -> bool:
    """Whether the sweeper asks M-Pesa about a payment sent at `sent_at` on this pass: once
    B2C_RESULT_WAIT has passed, then at 2x, 4x, 8x ... that wait (a back-off with no column
    of its own: `last_checked` is the sweeper's previous pass over it)."""

    def step(at: datetime | None) -> int:
        if at is None or at - sent_at < B2C_RESULT_WAIT:
            return -1
        return math.floor(math.log2((at - sent_at) / B2C_RESULT_WAIT))

    return step(now) > step(last_checked)


def kes_per_usd() -> Decimal | None:
    rate = current_app.config.get("MPESA_KES_PER_USD")
    return Decimal(rate) if rate else None


def mpesa_key(withdrawal_id: int) -> str:
    """The OriginatorConversationID of a withdrawal's B2C payment: Daraja refuses a second
    request under it, so a retry can never pay twice."""
    return f"soma-withdrawal-{withdrawal_id}"


def mpesa_withdrawal_id(key: str) -> int | None:
    """The withdrawal a B2C OriginatorConversationID names, if it is one of ours."""
    prefix = "soma-withdrawal-"
    tail = key[len(prefix) :] if isinstance(key, str) and key.startswith(prefix) else ""
    return int(tail) if tail.isascii() and tail.isdigit() and len(tail) <= 18 else None


def b2c_url(path: str) -> str:
    """The public URL of a B2C callback (`path`: "result", "timeout", "status/result", ...)."""
    base = current_app.config["MPESA_CALLBACK_BASE"].rstrip("/")
    return f"{base}/webhooks/mpesa/{current_app.config['MPESA_CALLBACK_SECRET']}/b2c/{path}"


class MpesaRail(Rail):
    """A B2C BusinessPayment of the withdrawal's shillings (its net at MPESA_KES_PER_USD,
    rounded down, fixed when requested) to the teacher's M-Pesa number, keyed by the
    withdrawal (`soma-withdrawal-<id>`: Daraja refuses a second request under it).

    - accepted -> its ConversationID kept; stays processing until the result callback
      (paid -> paid with the receipt; a duplicate -> nothing; failed -> failed, released);
    - refused -> failed, released (a refusal about the moment, 401/429, is retried);
    - not sent, or unknown (no answer, a 5xx, a duplicate) -> stays processing; `check`
      sends again under the SAME key (Daraja refuses it if it took the first) and, for one
      taken whose result has not come after B2C_RESULT_WAIT, asks the Transaction Status
      (its answer comes to the status URL: completed -> paid). Never failed on a time-out.
    """

    kind = MethodKind.MPESA
    automatic = True
    unavailable = "Withdrawals to M-Pesa are not available on this site."

    def offered(self) -> bool:
        config = current_app.config
        return bool(
            daraja.b2c_configured()
            and config.get("MPESA_BASE_URL")
            and config.get("MPESA_CALLBACK_BASE")  # (the sweeper has no request to ask)
            and kes_per_usd() is not None
        )

    def local_amount(self, net_cents: int) -> int | None:
        """Whole shillings for `net_cents`, rounded DOWN: never more than the net is worth."""
        rate = kes_per_usd()
        return None if rate is None else math.floor(Decimal(net_cents) * rate / 100)

    def amount_refusal(self, net_cents: int) -> str | None:
        shillings = self.local_amount(net_cents)
        if shillings is None:
            return self.unavailable
        if shillings < B2C_MIN_KES:
            return f"M-Pesa sends at least KES {B2C_MIN_KES}: withdraw more."
        if shillings > B2C_MAX_KES:
            return f"M-Pesa sends at most KES {B2C_MAX_KES:,} at once: withdraw less."
        return None

    def send(self, withdrawal: Withdrawal) -> Outcome | None:
        if not sending.claim_send(withdrawal.id):
            return None
        return self._pay(withdrawal)

    def check(self, withdrawal: Withdrawal, now: datetime) -> Outcome | None:
        if not self.offered():
            return None
        if withdrawal.submitted_at is None:
            return self.send(withdrawal)
        if not withdrawal.provider_request_id and withdrawal.send_state != sending.TAKEN:
            # Not taken, unknown, or the sender stopped mid-request: the same key again
            # (Daraja refuses it as a duplicate if it has it; then it is asked about).
            return self._pay(withdrawal)
        if status_query_due(withdrawal.submitted_at, withdrawal.checked_at, now):
            self._ask(withdrawal)
        return None

    def _pay(self, withdrawal: Withdrawal) -> Outcome | None:
        if not withdrawal.amount_kes or not withdrawal.method.phone:
            return failed("The M-Pesa amount or number is missing: nothing was sent.")
        try:
            accepted = daraja.client().b2c_payment(
                originator_conversation_id=mpesa_key(withdrawal.id),
                phone=withdrawal.method.phone,
                amount_kes=withdrawal.amount_kes,
                remarks=f"Soma withdrawal {withdrawal.id}",
                result_url=b2c_url("result"),
                timeout_url=b2c_url("timeout"),
            )
        except daraja.DuplicateRequest:
            # Daraja has it already (the first send's answer was lost): ask what became of it.
            sending.note_state(withdrawal.id, sending.TAKEN)
            self._ask(withdrawal)
            return None
        except daraja.OutcomeUnknown as unknown:
            log.warning("mpesa: B2C of withdrawal %s unknown: %s", withdrawal.id, unknown)
            sending.note_state(withdrawal.id, sending.UNKNOWN)
            return None
        except daraja.NotSent as not_sent:
            log.warning("mpesa: B2C of withdrawal %s not sent: %s", withdrawal.id, not_sent)
            sending.note_state(withdrawal.id, sending.NOT_MADE)
            return None
        except daraja.Refused as refused:
            if refused.retryable:
                sending.note_state(withdrawal.id, sending.NOT_MADE)
                return None
            log.error("PAYOUT ALERT: M-Pesa refused withdrawal %s: %s", withdrawal.id, refused)
            payout_problem(
                withdrawal,
                f"mpesa-refused:{withdrawal.attempt}",
                f"M-Pesa refused withdrawal #{withdrawal.id}: {refused}",
            )
            db.session.commit()  # (the rail runs outside any other transaction)
            return failed("M-Pesa did not accept the payment, so nothing was sent.")
        except ValueError as error:  # (a number or amount Daraja would refuse: none sent)
            return failed(f"M-Pesa cannot be sent this payment: {error}"[:255])
        sending.record_request_id(withdrawal.id, accepted.conversation_id)
        return None

    def _ask(self, withdrawal: Withdrawal) -> None:
        """Ask M-Pesa what became of the payment; its answer comes to the status URL."""
        try:
            daraja.client().transaction_status(
                originator_conversation_id=mpesa_key(withdrawal.id),
                result_url=b2c_url("status/result"),
                timeout_url=b2c_url("status/timeout"),
            )
        except daraja.DarajaError as error:
            log.warning("mpesa: cannot ask about withdrawal %s: %s", withdrawal.id, error)


class NotConnected(Rail):
    """A provider rail whose client is not plugged in yet: never offered."""

    def __init__(self, kind: MethodKind, unavailable: str):
        self.kind = kind
        self.unavailable = unavailable

    def offered(self) -> bool:
        return False


RAILS: dict[MethodKind, Rail] = {
    MethodKind.SANDBOX: SandboxRail(),
    MethodKind.BANK: BankRail(),
    MethodKind.MPESA: MpesaRail(),
    MethodKind.STRIPE: StripeRail(),
}


def rail_for(kind: str) -> Rail:
    return RAILS[MethodKind(kind)]


def offered_kinds() -> list[MethodKind]:
    """The kinds of method a teacher may add now, in the order offered."""
    return [kind for kind, rail in RAILS.items() if rail.offered()]
