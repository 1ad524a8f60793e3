"""The hold-facts tests again, on PostgreSQL, where the check is part of the entry's statement."""

from tests.unit.test_hold_facts import (  # noqa: F401 (collected here with the PostgreSQL app)
    held,
    test_a_class_payment_cannot_close_a_withdrawal_hold,
    test_a_release_told_about_an_entry_that_is_no_hold_is_refused,
    test_a_release_told_the_facts_returns_the_hold_and_closes_it_once,
    test_a_settle_told_the_holder_and_amount_pays_like_one_that_reads_them,
    test_a_settle_told_the_wrong_holder_or_amount_is_refused_and_moves_nothing,
    test_an_entry_at_a_naive_time_is_refused,
    test_half_the_facts_is_a_programming_error,
)
