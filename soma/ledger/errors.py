"""What the ledger refuses, in words a user can read."""

from soma.errors import SomaError


class LedgerError(SomaError):
    """A money operation that cannot be done; nothing moved."""

    status = 409


class InsufficientTokens(LedgerError):
    title = "Not enough tokens"

    def __init__(self, needed: int, available: int):
        self.needed = needed
        self.available = available
        super().__init__(
            f"Not enough tokens: this needs {needed} and {available} "
            f"{'is' if available == 1 else 'are'} available."
        )


class IdempotencyConflict(LedgerError):
    title = "Request already used"

    def __init__(self, key: str):
        self.key = key
        super().__init__(
            "This request was already made with different details. Reload the page and try again."
        )


class AlreadySettled(LedgerError):
    title = "Already settled"

    def __init__(self, hold_entry_id: int):
        self.hold_entry_id = hold_entry_id
        super().__init__("These tokens were already settled or released.")


class InvalidPosting(LedgerError):
    """A programming error: the postings asked for are not a valid entry."""

    status = 500
    title = "Invalid ledger entry"
