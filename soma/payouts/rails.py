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
Stripe Connect is connected (`StripeRail`: a Transfer to the teacher's connected
account). M-Pesa B2C is not connected yet: its rail says so, and is never offered, so
no method of its kind can be added or withdrawn to.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from soma.models import MethodKind, PayoutMethod, Withdrawal
from soma.payouts import sending
from soma.providers import sandbox, stripe_connect

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
      error for the admin; `check` raises the attempt (committed first) and sends under
      the next key, until the balance is topped up;
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
            # Nothing was made under this key: the next one, its number committed first.
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
            # The seam for issue 13's admin alerts: an error in the log until then.
            log.error(
                "PAYOUT ALERT: the platform's Stripe balance cannot cover withdrawal %s "
                "(%s cents, attempt %s): top it up; the sweeper retries",
                withdrawal.id, withdrawal.net_cents, attempt,
            )  # fmt: skip
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
            return None
        sending.record_request_id(withdrawal.id, transfer.id)
        return paid(transfer.id)


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
    MethodKind.MPESA: NotConnected(
        MethodKind.MPESA, "Withdrawals to M-Pesa are not available yet: Soma cannot send them."
    ),
    MethodKind.STRIPE: StripeRail(),
}


def rail_for(kind: str) -> Rail:
    return RAILS[MethodKind(kind)]


def offered_kinds() -> list[MethodKind]:
    """The kinds of method a teacher may add now, in the order offered."""
    return [kind for kind, rail in RAILS.items() if rail.offered()]
