"""A wallet's transaction history: one row per entry, newest first, keyset-paginated.

The query walks `ix_postings_wallet_history` (or `ix_postings_wallet_kind_history`
when a kind is chosen) backwards from the cursor, so page 1000 costs what page 1
does. A cursor is the (created_at, entry_id) of the last row shown.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, case, cast, func, select, tuple_

from soma.extensions import db
from soma.models import ENTRY_KIND_LABELS, Bucket, EntryKind, JournalEntry, Posting

PAGE_SIZE = 25
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
MAX_ID = 2**63  # ids are BIGINT


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    entry_id: int

    def encode(self) -> str:
        return f"{(self.created_at - EPOCH) // MICROSECOND}.{self.entry_id}"

    @classmethod
    def decode(cls, text: str | None) -> "Cursor | None":
        """Parse a cursor from a URL; None for a missing or malformed one (page 1)."""
        if not text:
            return None
        try:
            micros, entry_id = (int(part) for part in text.split(".", 1))
            created_at = EPOCH + micros * MICROSECOND
        except (ValueError, OverflowError):
            return None
        if not 0 < entry_id < MAX_ID:
            return None
        return cls(created_at, entry_id)


@dataclass(frozen=True)
class HistoryRow:
    entry_id: int
    created_at: datetime
    kind: str
    memo: str
    tokens: int
    available_change: int
    locked_change: int
    available_after: int
    locked_after: int
    usd_cents: int
    teacher_usd_cents: int
    reference_type: str | None
    reference_id: int | None

    @property
    def label(self) -> str:
        return ENTRY_KIND_LABELS.get(EntryKind(self.kind), self.kind)

    @property
    def description(self) -> str:
        return self.memo or self.label

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.created_at, self.entry_id)

    def value_cents(self, user_type: str) -> int:
        """The entry's frozen USD value at the rate of `user_type` ("student" or "teacher")."""
        return self.teacher_usd_cents if user_type == "teacher" else self.usd_cents


@dataclass(frozen=True)
class HistoryPage:
    rows: list[HistoryRow]
    next_cursor: Cursor | None


def _history_query(
    wallet_id: int,
    *,
    kind: str | None,
    start: datetime | None,
    end: datetime | None,
    cursor: Cursor | None,
    limit: int,
):
    conditions = [Posting.wallet_id == wallet_id]
    if kind:
        conditions.append(Posting.kind == EntryKind(kind).value)
    if start:
        conditions.append(Posting.created_at >= start)
    if end:
        conditions.append(Posting.created_at < end)
    if cursor:
        conditions.append(
            tuple_(Posting.created_at, Posting.entry_id) < (cursor.created_at, cursor.entry_id)
        )
    available = Bucket.AVAILABLE.value
    page = (
        select(
            Posting.entry_id,
            Posting.created_at,
            # PostgreSQL sums BIGINT as NUMERIC; the cast keeps tokens integers.
            cast(
                func.sum(case((Posting.bucket == available, Posting.amount), else_=0)),
                BigInteger,
            ).label("available_change"),
            cast(
                func.sum(case((Posting.bucket != available, Posting.amount), else_=0)),
                BigInteger,
            ).label("locked_change"),
            func.max(Posting.available_after).label("available_after"),
            func.max(Posting.locked_after).label("locked_after"),
        )
        .where(*conditions)
        .group_by(Posting.created_at, Posting.entry_id)
        .order_by(Posting.created_at.desc(), Posting.entry_id.desc())
        .limit(limit)
        .subquery()
    )
    return (
        select(
            page.c.entry_id,
            page.c.created_at,
            JournalEntry.kind,
            JournalEntry.memo,
            JournalEntry.tokens,
            page.c.available_change,
            page.c.locked_change,
            page.c.available_after,
            page.c.locked_after,
            JournalEntry.usd_cents,
            JournalEntry.teacher_usd_cents,
            JournalEntry.reference_type,
            JournalEntry.reference_id,
        )
        .join(JournalEntry, JournalEntry.id == page.c.entry_id)
        .order_by(page.c.created_at.desc(), page.c.entry_id.desc())
    )


def history_page(
    wallet_id: int,
    *,
    kind: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    cursor: Cursor | None = None,
    limit: int = PAGE_SIZE,
) -> HistoryPage:
    """Return up to `limit` entries of the wallet older than `cursor`, newest first.

    `start` is inclusive and `end` exclusive; `kind` narrows to one entry kind.
    """
    query = _history_query(
        wallet_id, kind=kind, start=start, end=end, cursor=cursor, limit=limit + 1
    )
    rows = [HistoryRow(**row._mapping) for row in db.session.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return HistoryPage(rows, rows[-1].cursor if more else None)


def iter_history(
    wallet_id: int,
    *,
    kind: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    batch: int = 500,
) -> Iterator[HistoryRow]:
    """Yield every matching entry, newest first, a keyset batch at a time (for CSV)."""
    cursor = None
    while True:
        page = history_page(wallet_id, kind=kind, start=start, end=end, cursor=cursor, limit=batch)
        yield from page.rows
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
