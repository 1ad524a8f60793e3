"""Gifts: a student gives tokens to another student, with a note (SPEC §7)."""
