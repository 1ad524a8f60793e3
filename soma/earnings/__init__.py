"""A teacher's earnings: what their classes paid them, month by month, at the values the
ledger froze when it paid them."""
