"""The wallet, history and gift page tests again, on PostgreSQL (its sums, tuples and types)."""

from tests.unit.test_gifts import (  # noqa: F401 (collected here with the PostgreSQL app)
    giver,
    test_a_gift_is_reviewed_then_given_once,
    test_the_recipient_sees_the_gift_in_history_and_notifications,
)
from tests.unit.test_wallet_pages import (  # noqa: F401
    test_csv_export_has_every_filtered_entry_and_neutralises_formulas,
    test_entries_at_the_same_instant_are_not_skipped_between_pages,
    test_history_filters_by_kind_and_date_range,
    test_history_pages_by_keyset_without_overlap,
    test_history_rows_show_date_kind_description_signed_tokens_value_and_balance,
    test_out_of_range_arguments_show_the_page_not_an_error,
    test_wallet_lists_the_last_ten_transactions_newest_first,
    test_wallet_shows_available_locked_total_and_value_at_student_rate,
)
