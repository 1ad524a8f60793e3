"""The refusal tests again on PostgreSQL, where an entry is one statement."""

from tests.unit.test_refusals import (  # noqa: F401 (collected here with the PostgreSQL app)
    test_a_refused_transfer_cannot_be_committed_half_done,
    test_a_settle_told_the_wrong_holder_cannot_be_committed_half_done,
)
