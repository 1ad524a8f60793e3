"""What a failed check reports."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Violation:
    """One broken invariant: the check's code and what, exactly, is wrong."""

    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


# The most violations one check names: a ledger broken everywhere is reported, not listed.
MOST = 1000
