"""What a rail writes about its own send: the claim, the provider's id, what it last heard,
and the attempt its request is keyed by. Each a single guarded UPDATE, committed at once
(a rail calls a provider with no transaction open). Never the status or the ledger: those
are the withdrawal service's (soma.payouts.withdrawals), which re-exports the first two.
"""

from datetime import datetime

from sqlalchemy import update

from soma import clock
from soma.extensions import db
from soma.models import Withdrawal, WithdrawalStatus

PROCESSING = WithdrawalStatus.PROCESSING

# What a rail last heard when it sent (Withdrawal.send_state).
BALANCE = "balance"  # nothing made (the platform's balance was short): next attempt key
UNKNOWN = "unknown"  # it may have been made: look for it, then the same key again
NOT_MADE = "not_made"  # the request was not taken: the same key again
TAKEN = "taken"  # the provider has it (it refused a repeat as a duplicate): only ask


def claim_send(withdrawal_id: int, now: datetime | None = None) -> bool:
    """Claim the one send of a processing withdrawal to its provider: True for the one
    caller that may send it, False for every other (already claimed, or not processing).

    A provider rail calls this first in `send` and in `check` (a retry of a send that
    never happened); however many race, one sends. Commits.
    """
    claimed = db.session.execute(
        update(Withdrawal)
        .where(
            Withdrawal.id == withdrawal_id,
            Withdrawal.status == PROCESSING.value,
            Withdrawal.submitted_at.is_(None),
        )
        .values(submitted_at=now or clock.now())
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return claimed == 1


def record_request_id(withdrawal_id: int, provider_request_id: str) -> None:
    """Keep the provider's id of the request (a transfer, a B2C conversation) that a rail
    sent, so that its webhook finds the withdrawal (`by_request_id`). Commits."""
    db.session.execute(
        update(Withdrawal)
        .where(Withdrawal.id == withdrawal_id, Withdrawal.provider_request_id.is_(None))
        .values(provider_request_id=provider_request_id[:255], send_state=None)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def note_state(withdrawal_id: int, state: str | None) -> None:
    """Keep what the rail last heard of a send still processing. Commits."""
    db.session.execute(
        update(Withdrawal)
        .where(Withdrawal.id == withdrawal_id, Withdrawal.status == PROCESSING.value)
        .values(send_state=state)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def next_attempt(withdrawal_id: int, attempt: int) -> bool:
    """Move a processing withdrawal from `attempt` to the next, committed BEFORE the request
    under the new key is sent; True for the one caller that moved it (a compare-and-set)."""
    moved = db.session.execute(
        update(Withdrawal)
        .where(
            Withdrawal.id == withdrawal_id,
            Withdrawal.status == PROCESSING.value,
            Withdrawal.attempt == attempt,
        )
        .values(attempt=attempt + 1, send_state=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return moved == 1
