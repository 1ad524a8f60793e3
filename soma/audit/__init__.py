"""`flask soma audit`: prove the ledger's invariants from the stored rows (SPEC §2.10).

`CHECKS` is the one list of every check, in the order they run: the ledger's own
first, then each feature's. A check is a function of the run's scope (soma.audit.
checkpoint: everything, or what came after the last checkpoint) returning the
violations it found. Nothing registers itself by being imported: a new check is added
here. Only the CLI, the admin and the tests import this package.

`run_audit()` checks what the last checkpoint has not proven (everything when there is
none); `run_audit(full=True)` everything from the start. `audit()` does the same and,
when the run is clean, writes the next checkpoint.
"""

import gc
from collections.abc import Callable
from dataclasses import dataclass

from soma import clock
from soma.audit import checkpoint, classes, earnings, gifts, ledger, purchases, withdrawals
from soma.audit.checkpoint import Scope
from soma.audit.violation import Violation

CHECKS: list[Callable[[Scope], list[Violation]]] = [
    ledger.entries_sum_to_zero,
    ledger.entries_have_two_postings,
    ledger.balances_match_postings,
    ledger.no_negative_balances,
    ledger.platform_shards_complete,
    ledger.holds_close_with_their_amount,
    ledger.locked_equals_open_holds,
    ledger.entry_tokens_match_postings,
    ledger.postings_repeat_their_entry,
    ledger.entry_values_match_pricing,
    ledger.posting_chains_hold,
    classes.classes_settle_exactly_once,
    classes.class_entries_name_a_class,
    classes.class_entries_move_its_own_parties_tokens,
    purchases.purchases_credited_exactly_once,
    purchases.reversal_entries_match_their_reversals,
    purchases.purchase_status_follows_reversals,
    gifts.gifts_transferred_once,
    withdrawals.withdrawals_settled_exactly_once,
    withdrawals.withdrawal_fees_add_up,
    withdrawals.withdrawal_amounts_follow_the_rules,
    withdrawals.withdrawals_belong_to_their_teacher,
    withdrawals.withdrawal_holds_close_with_their_status,
    withdrawals.no_withdrawal_processing_too_long,
    earnings.earnings_checkpoints_match_the_ledger,
]


@dataclass(frozen=True)
class AuditResult:
    """What a run found, whether it checked everything, and the checkpoint it wrote."""

    violations: list[Violation]
    full: bool
    checkpoint_id: int | None = None


def audit(full: bool = False, write_checkpoint: bool = True) -> AuditResult:
    """Run every check in one snapshot: everything when `full` (or when there is no
    trustworthy checkpoint), else what the last checkpoint has not proven. A clean run
    writes the next checkpoint (when `write_checkpoint`)."""
    started_at = clock.now()
    # Every object alive now (the app's modules, models, compiled SQL) outlives the run:
    # frozen, the collector's full passes during the run walk only the run's own objects
    # instead of pausing for all of them (a few tenths of a second each, a fixed cost an
    # incremental run would otherwise pay more than once). Unfrozen after, collected as
    # before: nothing is kept alive by this.
    gc.freeze()
    checkpoint.begin_snapshot()
    try:
        scope, found = checkpoint.prepare(full)
        for check in CHECKS:
            found.extend(check(scope))
        if not scope.full:
            checkpoint.finish_scope()
    except BaseException:
        checkpoint.rollback()
        gc.unfreeze()
        raise
    gc.unfreeze()
    written = None
    if not found and write_checkpoint:
        written = checkpoint.write(scope.full, started_at)
    else:
        checkpoint.rollback()
    return AuditResult(found, scope.full, written)


def run_audit(full: bool = False) -> list[Violation]:
    """Run every check (see audit()); return the violations found, none when all holds.
    Writes no checkpoint."""
    return audit(full, write_checkpoint=False).violations


__all__ = ["CHECKS", "AuditResult", "Violation", "audit", "run_audit"]
