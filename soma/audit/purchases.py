"""The audit's check of purchases (SPEC §2.10): every paid purchase credited exactly once."""

from sqlalchemy import case, func, select

from soma.audit.violation import Violation
from soma.extensions import db
from soma.models import EntryKind, JournalEntry, Purchase
from soma.models.purchase import PurchaseStatus

CREDITED = (PurchaseStatus.PAID, PurchaseStatus.REFUNDED, PurchaseStatus.DISPUTED)


def purchases_credited_exactly_once() -> list[Violation]:
    """A paid purchase has one purchase entry of its tokens and, if it has a bonus, one
    bonus entry of it; a purchase never paid has neither."""
    kind = JournalEntry.kind
    entries = (
        select(
            JournalEntry.reference_id.label("purchase_id"),
            func.sum(case((kind == EntryKind.PURCHASE.value, 1), else_=0)).label("credits"),
            func.sum(case((kind == EntryKind.PURCHASE.value, JournalEntry.tokens), else_=0)).label(
                "credited"
            ),
            func.sum(case((kind == EntryKind.BONUS.value, 1), else_=0)).label("bonuses"),
            func.sum(case((kind == EntryKind.BONUS.value, JournalEntry.tokens), else_=0)).label(
                "bonus"
            ),
        )
        .where(JournalEntry.reference_type == "purchase")
        .group_by(JournalEntry.reference_id)
        .subquery()
    )
    rows = db.session.execute(
        select(
            Purchase.id,
            Purchase.status,
            Purchase.tokens,
            Purchase.bonus_tokens,
            func.coalesce(entries.c.credits, 0),
            func.coalesce(entries.c.credited, 0),
            func.coalesce(entries.c.bonuses, 0),
            func.coalesce(entries.c.bonus, 0),
        ).outerjoin(entries, entries.c.purchase_id == Purchase.id)
    ).all()
    found = []
    for purchase_id, status, tokens, bonus_tokens, credits, credited, bonuses, bonus in rows:
        if status in CREDITED:
            expected = (1, tokens, 1 if bonus_tokens else 0, bonus_tokens)
            if (credits, credited, bonuses, bonus) != expected:
                found.append(
                    f"purchase {purchase_id} is {status} but was credited {credits} time(s) "
                    f"with {credited} tokens and {bonuses} bonus entr(ies) of {bonus}; "
                    f"it should be once with {tokens} tokens and a bonus of {bonus_tokens}"
                )
        elif credits or bonuses:
            found.append(f"purchase {purchase_id} is {status} but was credited {credited} tokens")
    return [Violation("purchase-credit", detail) for detail in found]
