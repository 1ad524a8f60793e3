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

from flask import url_for
from sqlalchemy import BigInteger, and_, case, cast, exists, func, select
from sqlalchemy.orm import aliased

from soma.extensions import db
from soma.models import (
    ENTRY_KIND_LABELS,
    Bucket,
    EntryKind,
    Gift,
    JournalEntry,
    PlatformAccount,
    Posting,
    User,
    Wallet,
)
from soma.models.purchase import PurchaseReversal
from soma.money import tokens as tokens_text

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


# Kinds whose tokens carry no dollar value for the wallet that receives them.
FREE_KINDS = (EntryKind.BONUS.value,)
HOLDS = (EntryKind.CLASS_HOLD.value, EntryKind.WITHDRAWAL_HOLD.value)


@dataclass(frozen=True)
class HistoryRow:
    """One entry as this wallet's statement reads it.

    The entry moves `available_change` and `locked_change` on this wallet; their
    sum (`change`) is what came in or went out. A hold or a release only moves
    tokens between the wallet's own buckets: nothing leaves it, so it is a move,
    not a debit, and it has no dollar value. A class's settle, to the student who
    held 5 and pays 1, is locked -5 and available +4: a change of -1, "1 paid, 4
    released".
    """

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
    # The other side is the promotions account: bonus or promotional tokens.
    promotional: bool = False
    gift_sender: str | None = None
    gift_recipient: str | None = None
    gift_note: str | None = None
    reversal_purchase_id: int | None = None

    @property
    def label(self) -> str:
        return ENTRY_KIND_LABELS.get(EntryKind(self.kind), self.kind)

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.seq)

    @property
    def change(self) -> int:
        """Tokens that came into (+) or left (-) this wallet; 0 for a move between buckets."""
        return self.available_change + self.locked_change

    @property
    def is_move(self) -> bool:
        """A hold or a release: tokens moved between available and locked, none left."""
        return self.change == 0

    @property
    def moved_to(self) -> str:
        """Where a move's tokens went: "locked" (a hold) or "available" (a release)."""
        return "locked" if self.locked_change > 0 else "available"

    @property
    def moved(self) -> int:
        return abs(self.locked_change)

    @property
    def released(self) -> int:
        """Tokens a settle returned from locked to available (the unused part of a hold)."""
        if self.locked_change < 0 and self.available_change > 0:
            return self.available_change
        return 0

    @property
    def direction(self) -> str:
        """ "credit", "debit" or "move", for the row's colour and words."""
        if self.is_move:
            return "move"
        return "credit" if self.change > 0 else "debit"

    def value_cents(self, user_type: str) -> int:
        """The entry's frozen USD value at the rate of `user_type` ("student" or "teacher")."""
        return self.teacher_usd_cents if user_type == "teacher" else self.usd_cents

    def usd_change(self, user_type: str) -> int | None:
        """The dollar value of this wallet's own movement, signed; None where there is none.

        A move has none (nothing left the wallet), nor do bonus and promotional
        tokens (they were never paid for). The entry's frozen value is of its
        `tokens`; the wallet's change is those tokens in every kind the ledger
        writes, and is scaled to them otherwise.
        """
        if self.is_move or self.promotional or self.kind in FREE_KINDS:
            return None
        value = self.value_cents(user_type)
        moved = abs(self.change)
        if moved != self.tokens and self.tokens:
            value = value * moved // self.tokens
        return value if self.change > 0 else -value

    @property
    def _class_title(self) -> str:
        return self.memo or "a class"

    @property
    def description(self) -> str:
        """What the entry was, in words, for this wallet."""
        kind = self.kind
        ref = self.reference_id
        if kind == EntryKind.CLASS_HOLD:
            moved = tokens_text(self.moved)
            return f"Held for class: {self._class_title} — {moved} moved to locked"
        if kind == EntryKind.CLASS_RELEASE:
            return (
                f"Class: {self._class_title} — no charge, "
                f"{tokens_text(self.moved)} released to available"
            )
        if kind == EntryKind.CLASS_SETTLE:
            if self.change > 0:
                return f"Class: {self._class_title} — {tokens_text(self.change)} earned"
            text = f"Class: {self._class_title} — {tokens_text(-self.change)} paid"
            return f"{text}, {self.released:,} released" if self.released else text
        if self.reference_type == "withdrawal" and kind in (
            EntryKind.WITHDRAWAL_HOLD,
            EntryKind.WITHDRAWAL_PAID,
            EntryKind.WITHDRAWAL_RELEASE,
        ):
            if kind == EntryKind.WITHDRAWAL_HOLD:
                return f"Withdrawal #{ref} requested — {tokens_text(self.moved)} moved to locked"
            if kind == EntryKind.WITHDRAWAL_PAID:
                return f"Withdrawal #{ref} paid — {tokens_text(-self.change)} paid out"
            return f"Withdrawal #{ref} returned — {tokens_text(self.moved)} released to available"
        if kind == EntryKind.GIFT and (self.gift_sender or self.gift_recipient):
            text = (
                f"Gift to {self.gift_recipient}"
                if self.change < 0
                else f"Gift from {self.gift_sender}"
            )
            return f"{text}: “{self.gift_note}”" if self.gift_note else text
        if kind == EntryKind.PURCHASE and not self.memo:
            return f"Bought {tokens_text(self.change)}"
        return self.memo or self.label

    @property
    def reference(self) -> str:
        """The object the entry concerns, as "class:12"; "" for none. A refund's reversal
        names its purchase first: "purchase:4 reversal:3"."""
        if self.reversal_purchase_id is not None:
            return f"purchase:{self.reversal_purchase_id} reversal:{self.reference_id}"
        if self.reference_type and self.reference_id is not None:
            return f"{self.reference_type}:{self.reference_id}"
        return ""

    def link(self) -> str | None:
        """The page of the entry's object (a class, a purchase, a withdrawal, the gifts)."""
        kind, ref = self.reference_type, self.reference_id
        if ref is None:
            return None
        if kind == "class":
            return url_for("classes.show", class_id=ref)
        if kind == "purchase":
            return url_for("purchases.show", purchase_id=ref)
        if kind == "reversal" and self.reversal_purchase_id is not None:
            return url_for("purchases.show", purchase_id=self.reversal_purchase_id)
        if kind == "withdrawal":
            return url_for("payouts.show_withdrawal", withdrawal_id=ref)
        if kind == "gift":
            return url_for("wallet.transactions", kind=EntryKind.GIFT.value)
        return None

    def link_text(self) -> str:
        return {
            "class": "Class",
            "purchase": "Purchase",
            "reversal": "Purchase",
            "withdrawal": "Withdrawal",
            "gift": "Gifts",
        }.get(self.reference_type or "", "")


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
    # What names each row's object, joined here so that a page is still one query:
    # the other side of a gift, the purchase of a refund, whether the tokens are
    # promotional (the other side is the promotions account).
    other = aliased(Posting)
    # Any shard of promotions (soma.ledger.shards).
    promotions = aliased(Wallet)
    sender = aliased(User)
    recipient = aliased(User)
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
            exists()
            .where(
                other.entry_id == page.c.entry_id,
                promotions.id == other.wallet_id,
                promotions.code == PlatformAccount.PROMOTIONS.value,
            )
            .label("promotional"),
            sender.display_name.label("gift_sender"),
            recipient.display_name.label("gift_recipient"),
            Gift.note.label("gift_note"),
            PurchaseReversal.purchase_id.label("reversal_purchase_id"),
        )
        .join(JournalEntry, JournalEntry.id == page.c.entry_id)
        .outerjoin(
            Gift, and_(JournalEntry.reference_type == "gift", Gift.id == JournalEntry.reference_id)
        )
        .outerjoin(sender, sender.id == Gift.sender_id)
        .outerjoin(recipient, recipient.id == Gift.recipient_id)
        .outerjoin(
            PurchaseReversal,
            and_(
                JournalEntry.reference_type == "reversal",
                PurchaseReversal.id == JournalEntry.reference_id,
            ),
        )
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
