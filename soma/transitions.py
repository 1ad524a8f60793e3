"""Status changes as a compare-and-set on the row's version, with a bounded retry.

A row that moves through states (a class, a purchase, later a withdrawal) has a
`version`. A change is an UPDATE of the row WHERE its version is still the one
read: of two racing requests exactly one matches, and the other is told the row
is `Stale`, reads it again and decides again on what the winner did. The change,
its history row and its ledger entries are one transaction (`retrying`).
"""

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import select, update

from soma.errors import SomaError
from soma.extensions import db

T = TypeVar("T")

# Tries before giving up: each miss means another request changed the row first.
ATTEMPTS = 3


class Stale(Exception):
    """The row changed between reading and writing it."""


class Busy(SomaError):
    title = "Try again"

    def __init__(self, what: str = "This"):
        super().__init__(f"{what} changed several times at once. Reload the page and try again.")


def compare_and_set(model, row_id: int, version: int, values: dict) -> bool:
    """UPDATE the row to `values` (and the next version) if it is still at `version`."""
    moved = db.session.execute(
        update(model)
        .where(model.id == row_id, model.version == version)
        .values(**values, version=version + 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    return moved == 1


def change(row, values: dict, history=None) -> None:
    """Write `values` to `row` (as read, at its version) and add its `history` row;
    Stale if another request changed the row first."""
    if not compare_and_set(type(row), row.id, row.version, values):
        raise Stale()
    if history is not None:
        db.session.add(history)


def locked(model, row_id: int):
    """The row, read fresh and locked (FOR UPDATE on PostgreSQL) until the transaction ends."""
    return db.session.scalars(
        select(model)
        .where(model.id == row_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def retrying(work: Callable[[], T], what: str = "This", also: tuple = ()) -> T:
    """Run `work` in a transaction, committed on success and rolled back on any error;
    again, up to ATTEMPTS times, if it raised Stale (or one of `also`). Busy after that."""
    for _ in range(ATTEMPTS):
        try:
            result = work()
            db.session.commit()
            return result
        except (Stale, *also):
            db.session.rollback()
            continue
        except BaseException:
            db.session.rollback()
            raise
    raise Busy(what)
