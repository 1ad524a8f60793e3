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
Stripe Connect and M-Pesa B2C are not connected yet: their rails say so, and
are never offered, so no method of theirs can be added or withdrawn to.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from soma.models import MethodKind, Withdrawal
from soma.providers import sandbox


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
    MethodKind.STRIPE: NotConnected(
        MethodKind.STRIPE,
        "Withdrawals through Stripe are not available yet: Soma cannot send them.",
    ),
}


def rail_for(kind: str) -> Rail:
    return RAILS[MethodKind(kind)]


def offered_kinds() -> list[MethodKind]:
    """The kinds of method a teacher may add now, in the order offered."""
    return [kind for kind, rail in RAILS.items() if rail.offered()]
