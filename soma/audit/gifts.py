"""The audit's check of gifts: each gift moved its tokens in exactly one entry.

A gift is made with its entry, in one transaction, and never changes: an incremental
run looks at the gifts made since the checkpoint and those named by an entry in scope
(a gift that committed late has its entry past its wallets' heads).
"""

from sqlalchemy import and_, func, or_, select, true

from soma.audit.checkpoint import FULL, Scope
from soma.audit.violation import MOST, Violation
from soma.extensions import db
from soma.models import EntryKind, Gift, JournalEntry


def gifts_transferred_once(scope: Scope = FULL) -> list[Violation]:
    """Every gift moved its tokens in one GIFT entry; every entry naming a gift names a real one."""
    # A gift made before the checkpoint's snapshot but committed after it has a smaller
    # id than the checkpoint's: its time, less the margin, still brings it in.
    gift_in_scope = or_(
        scope.named(Gift.id, "gift"),
        scope.newer(Gift.id, "through_gift_id"),
        scope.changed(Gift.created_at),
    )
    in_scope = select(Gift.id).where(gift_in_scope).correlate(None)
    entries = (
        select(
            JournalEntry.reference_id.label("gift_id"),
            func.count().label("count"),
            func.sum(JournalEntry.tokens).label("tokens"),
        )
        .where(JournalEntry.kind == EntryKind.GIFT, JournalEntry.reference_type == "gift")
        .where(true() if scope.full else JournalEntry.reference_id.in_(in_scope))
        .group_by(JournalEntry.reference_id)
        .subquery()
    )
    rows = db.session.execute(
        select(Gift.id, Gift.tokens, entries.c.count, entries.c.tokens)
        .outerjoin(entries, entries.c.gift_id == Gift.id)
        .where(
            or_(
                entries.c.count.is_(None),
                entries.c.count != 1,
                entries.c.tokens != Gift.tokens,
            ),
            gift_in_scope,
        )
        .order_by(Gift.id)
        .limit(MOST)
    ).all()
    found = [
        Violation(
            "gift-not-transferred-once",
            f"gift {gift_id} of {tokens} tokens has {count or 0} GIFT entries "
            f"moving {moved or 0} tokens",
        )
        for gift_id, tokens, count, moved in rows
    ]
    orphans = db.session.execute(
        select(JournalEntry.id)
        .outerjoin(
            Gift,
            and_(JournalEntry.reference_type == "gift", JournalEntry.reference_id == Gift.id),
        )
        .where(JournalEntry.reference_type == "gift", Gift.id.is_(None))
        .where(scope.entries(JournalEntry.id))
        .order_by(JournalEntry.id)
        .limit(MOST)
    ).scalars()
    found += [
        Violation("gift-entry-without-gift", f"entry {entry_id} names a gift that does not exist")
        for entry_id in orphans
    ]
    return found
