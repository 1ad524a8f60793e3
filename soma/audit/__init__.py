"""`flask soma audit`: prove the ledger's invariants from the stored rows (SPEC §2.10).

`CHECKS` is the one list of every check, in the order they run: the ledger's own
first, then each feature's. A check is a function returning the violations it
found. Nothing registers itself by being imported: a new check is added here.
Only the CLI, the admin and the tests import this package.
"""

from collections.abc import Callable

from soma.audit import classes, earnings, gifts, ledger, purchases, withdrawals
from soma.audit.violation import Violation

CHECKS: list[Callable[[], list[Violation]]] = [
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


def run_audit() -> list[Violation]:
    """Run every check; return the violations found (none when all holds)."""
    found: list[Violation] = []
    for check in CHECKS:
        found.extend(check())
    return found


__all__ = ["CHECKS", "Violation", "run_audit"]
