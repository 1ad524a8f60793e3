"""The ledger: the only writer of money. Views, webhooks and commands call these."""

from soma.ledger.core import PostedEntry, atomic, open_wallet
from soma.ledger.errors import (
    AlreadySettled,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidPosting,
    LedgerError,
)
from soma.ledger.operations import (
    credit,
    debit,
    hold,
    release,
    retire,
    settle,
    transfer,
    unretire,
)
from soma.ledger.pricing import (
    class_cost,
    get_token_pricing,
    publish_pricing,
    tokens_value_cents,
)

__all__ = [
    "AlreadySettled",
    "IdempotencyConflict",
    "InsufficientTokens",
    "InvalidPosting",
    "LedgerError",
    "PostedEntry",
    "atomic",
    "class_cost",
    "credit",
    "debit",
    "get_token_pricing",
    "hold",
    "open_wallet",
    "publish_pricing",
    "release",
    "retire",
    "settle",
    "tokens_value_cents",
    "transfer",
    "unretire",
]
