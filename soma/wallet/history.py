"""A wallet's transaction history: one row per entry, newest first, keyset-paginated.

A wallet's postings are numbered by `seq` in the order they were written (its
hash chain, see soma.ledger.core), so newest first is seq descending. The query
walks `uq_postings_wallet_seq` (or `ix_postings_wallet_kind_seq` when a kind is
chosen) backwards from the cursor, so page 1000 costs what page 1 does. A cursor
is the lowest seq of the last row shown.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, case, cast, func, select

from soma.extensions import db
from soma.models import ENTRY_KIND_LABELS, Bucket, EntryKind, JournalEntry, Posting

PAGE_SIZE = 25
MAX_SEQ = 2**63  # seq is BIGINT
# An entry posts to at most two buckets of one wallet, so two postings a row.
POSTINGS_PER_ENTRY = 2


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: rows continue below this seq of the wallet."""

    seq: int

    def encode(self) -> str:
        return str(self.seq)

    @classmethod
    def decode(cls, text: str | None) -> "Cursor | None":
        """Parse a cursor from a URL; None for a missing or malformed one (page 1)."""
        if not text or not text.isascii() or not text.isdigit():
            return None
        seq = int(text)
        if not 0 < seq < MAX_SEQ:
            return None
        return cls(seq)


@dataclass(frozen=True)
class HistoryRow:
    entry_id: int
    seq: int  # the lowest of the entry's postings on this wallet
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
        return Cursor(self.seq)

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
        conditions.append(Posting.seq < cursor.seq)
    # The newest postings that can make `limit` rows. Only the oldest entry among
    # them may be cut in two, and when there are that many postings there is at
    # least one entry more than `limit`, so the cut one is never shown.
    recent = (
        select(
            Posting.entry_id,
            Posting.seq,
            Posting.created_at,
            Posting.bucket,
            Posting.amount,
            Posting.available_after,
            Posting.locked_after,
        )
        .where(*conditions)
        .order_by(Posting.seq.desc())
        .limit(POSTINGS_PER_ENTRY * limit + 1)
        .subquery()
    )
    available = Bucket.AVAILABLE.value
    page = (
        select(
            recent.c.entry_id,
            func.min(recent.c.seq).label("seq"),
            func.min(recent.c.created_at).label("created_at"),
            # PostgreSQL sums BIGINT as NUMERIC; the cast keeps tokens integers.
            cast(
                func.sum(case((recent.c.bucket == available, recent.c.amount), else_=0)),
                BigInteger,
            ).label("available_change"),
            cast(
                func.sum(case((recent.c.bucket != available, recent.c.amount), else_=0)),
                BigInteger,
            ).label("locked_change"),
            func.max(recent.c.available_after).label("available_after"),
            func.max(recent.c.locked_after).label("locked_after"),
        )
        .group_by(recent.c.entry_id)
        .order_by(func.min(recent.c.seq).desc())
        .limit(limit)
        .subquery()
    )
    return (
        select(
            page.c.entry_id,
            page.c.seq,
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
        .order_by(page.c.seq.desc())
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
