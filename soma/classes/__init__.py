"""Class sessions: booking, the live clock, and settlement through the ledger (SPEC §3, §4)."""
