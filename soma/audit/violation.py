"""What a failed check reports, and how a check asks for its first violations."""

from dataclasses import dataclass

from sqlalchemy import select

from soma.extensions import db


@dataclass(frozen=True)
class Violation:
    """One broken invariant: the check's code and what, exactly, is wrong."""

    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


# The most violations one check names: a ledger broken everywhere is reported, not listed.
MOST = 1000


def first(query, *order_by: str):
    """A select of the first MOST rows of `query` (a check's wrong rows), ordered by its
    columns named `order_by`.

    On PostgreSQL `query` is a MATERIALIZED CTE: the planner cannot tell that a clean
    ledger has no wrong rows (it estimates `a != b` true nearly everywhere), so with a bare
    ORDER BY ... LIMIT it picks a plan that walks an index in order, looking up each row's
    partner one at a time, to stop early; with none to find, it walks everything that way.
    Materialized, the query is planned for all its rows (hash joins, sequential scans),
    and only what it finds is sorted."""
    wrong = query.cte("wrong")
    if db.session.get_bind().dialect.name == "postgresql":
        wrong = wrong.prefix_with("MATERIALIZED")
    return select(wrong).order_by(*(wrong.c[name] for name in order_by)).limit(MOST)
