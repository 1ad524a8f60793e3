"""The audit's checks of purchases (SPEC §2.10): every paid purchase credited exactly once;
every refund and dispute's tokens held back as its record says, and the status it makes.

The credit check and the check of refund entries against reversals find the wrong
purchases in SQL (the entries' and the reversals' totals side by side, at most MOST
returned). The status check reads, in Python, only purchases with reversals or refunds
(a few), one at a time, since the status they make is soma.purchases.reversals' rule.
In an incremental run they look at the purchases named by an entry in scope (directly
or through a reversal), those made since the checkpoint, those whose `updated_at` (set
on every status change) is since it, and those whose reversals are new, or were made or
resolved since it. An edit of an old purchase that leaves `updated_at` alone is left to
`--full`.
"""

from sqlalchemy import BigInteger, and_, case, cast, func, literal, or_, select, true, union_all

from soma.audit.checkpoint import FULL, Scope
from soma.audit.violation import MOST, Violation
from soma.extensions import db
from soma.models import EntryKind, JournalEntry, PlatformAccount, Posting, Purchase, Wallet
from soma.models.purchase import CREDITED, PurchaseReversal
from soma.purchases.reversals import derived_status, due


def _purchases_in_scope(scope: Scope):
    """SQL: a purchase is in the run's scope (see the module's docstring)."""
    if scope.full:
        return true()
    reversals = (
        select(PurchaseReversal.purchase_id)
        .where(
            or_(
                scope.named(PurchaseReversal.id, "reversal"),
                scope.newer(PurchaseReversal.id, "through_reversal_id"),
                scope.changed(PurchaseReversal.created_at),
                scope.changed(PurchaseReversal.resolved_at),
            )
        )
        .correlate(None)
    )
    return or_(
        scope.named(Purchase.id, "purchase"),
        scope.newer(Purchase.id, "through_purchase_id"),
        scope.changed(Purchase.updated_at),
        Purchase.id.in_(reversals),
    )


def purchases_credited_exactly_once(scope: Scope = FULL) -> list[Violation]:
    """A paid purchase has one purchase entry of its tokens and, if it has a bonus, one
    bonus entry of it, and names the first as its credit (`credited_entry_id`, which
    the operator's package sales count by); a purchase never paid has neither entry and
    names none."""
    purchase_in_scope = _purchases_in_scope(scope)
    in_scope = (
        true()
        if scope.full
        else JournalEntry.reference_id.in_(
            select(Purchase.id).where(purchase_in_scope).correlate(None)
        )
    )
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
            # (Its one purchase entry's id where there is one: checked only then.)
            func.max(case((kind == EntryKind.PURCHASE.value, JournalEntry.id))).label("credit"),
        )
        .where(JournalEntry.reference_type == "purchase", in_scope)
        .group_by(JournalEntry.reference_id)
        .subquery()
    )
    credits = func.coalesce(entries.c.credits, 0)
    credited = func.coalesce(entries.c.credited, 0)
    bonuses = func.coalesce(entries.c.bonuses, 0)
    bonus = func.coalesce(entries.c.bonus, 0)
    named = Purchase.credited_entry_id
    wrong = or_(
        and_(
            Purchase.status.in_(CREDITED),
            or_(
                credits != 1,
                credited != Purchase.tokens,
                bonuses != case((Purchase.bonus_tokens != 0, 1), else_=0),
                bonus != Purchase.bonus_tokens,
                named.is_distinct_from(entries.c.credit),
            ),
        ),
        and_(
            Purchase.status.not_in(CREDITED),
            or_(credits != 0, bonuses != 0, named.is_not(None)),
        ),
    )
    rows = db.session.execute(
        select(
            Purchase.id,
            Purchase.status,
            Purchase.tokens,
            Purchase.bonus_tokens,
            credits,
            credited,
            bonuses,
            bonus,
            named,
            entries.c.credit,
        )
        .outerjoin(entries, entries.c.purchase_id == Purchase.id)
        .where(purchase_in_scope, wrong)
        .order_by(Purchase.id)
        .limit(MOST)
    ).all()
    found = []
    for purchase_id, status, tokens, bonus_tokens, credits, credited, bonuses, bonus, *ids in rows:
        named_id, credit_id = ids
        if status in CREDITED:
            expected = (1, tokens, 1 if bonus_tokens else 0, bonus_tokens)
            if (credits, credited, bonuses, bonus) != expected:
                found.append(
                    f"purchase {purchase_id} is {status} but was credited {credits} time(s) "
                    f"with {credited} tokens and {bonuses} bonus entr(ies) of {bonus}; "
                    f"it should be once with {tokens} tokens and a bonus of {bonus_tokens}"
                )
            else:
                found.append(
                    f"purchase {purchase_id} is {status} and was credited by entry {credit_id}, "
                    f"but names {_entry(named_id)} as its credit"
                )
        elif credits or bonuses:
            found.append(f"purchase {purchase_id} is {status} but was credited {credited} tokens")
        else:
            found.append(
                f"purchase {purchase_id} is {status}, never credited, but names "
                f"{_entry(named_id)} as its credit"
            )
    return [Violation("purchase-credit", detail) for detail in found]


def _entry(entry_id: int | None) -> str:
    return "no entry" if entry_id is None else f"entry {entry_id}"


REVERSING = (EntryKind.REFUND.value, EntryKind.ADJUSTMENT.value)
PARTS = {PlatformAccount.ISSUANCE.value: 0, PlatformAccount.PROMOTIONS.value: 1}


def reversal_entries_match_their_reversals(scope: Scope = FULL) -> list[Violation]:
    """Every refund and adjustment entry that names a reversal or a purchase (before
    reversals were records, refunds named the purchase) names one that exists, and each
    purchase's such entries net to what its reversals say they hold back: purchased
    tokens in issuance, bonus in promotions. A stray entry naming a purchase shows as a
    mismatch. (The ledger's own operations may debit with no reference at all.)"""
    owner = case(
        (JournalEntry.reference_type == "reversal", PurchaseReversal.purchase_id),
        (JournalEntry.reference_type == "purchase", Purchase.id),
    )
    reversal_of_entry = and_(
        JournalEntry.reference_type == "reversal", PurchaseReversal.id == JournalEntry.reference_id
    )
    purchase_of_entry = and_(
        JournalEntry.reference_type == "purchase", Purchase.id == JournalEntry.reference_id
    )
    scoped = select(Purchase.id).where(_purchases_in_scope(scope)).correlate(None)
    in_scope = (
        true()
        if scope.full
        else or_(owner.in_(scoped), and_(owner.is_(None), scope.entries(JournalEntry.id)))
    )
    netted = (
        select(
            owner.label("purchase_id"),
            Wallet.code.label("code"),
            func.sum(Posting.amount).label("amount"),
        )
        .select_from(JournalEntry)
        .join(Posting, Posting.entry_id == JournalEntry.id)
        .join(Wallet, Wallet.id == Posting.wallet_id)
        .outerjoin(PurchaseReversal, reversal_of_entry)
        .outerjoin(Purchase, purchase_of_entry)
        .where(
            JournalEntry.kind.in_(REVERSING),
            JournalEntry.reference_type.in_(("reversal", "purchase")),
            Wallet.code.in_(list(PARTS)),
            in_scope,
        )
        .group_by(owner, Wallet.code)
        .subquery()
    )
    issuance, promotions = list(PARTS)
    found = [
        Violation("reversal-stray", f"{amount} tokens refunded to {code} for no reversal")
        for code, amount in db.session.execute(
            select(netted.c.code, netted.c.amount)
            .where(netted.c.purchase_id.is_(None))
            .order_by(netted.c.code)
        )
    ]

    def zero(name: str):
        return literal(0, BigInteger).label(name)

    # Per purchase, what its entries held back and what its reversals say, side by side.
    sides = union_all(
        select(
            netted.c.purchase_id,
            case((netted.c.code == issuance, netted.c.amount), else_=0).label("tokens"),
            case((netted.c.code == promotions, netted.c.amount), else_=0).label("bonus"),
            zero("tokens_taken"),
            zero("bonus_taken"),
        ).where(netted.c.purchase_id.is_not(None)),
        select(
            PurchaseReversal.purchase_id,
            zero("tokens"),
            zero("bonus"),
            PurchaseReversal.tokens_taken,
            PurchaseReversal.bonus_taken,
        ).where(true() if scope.full else PurchaseReversal.purchase_id.in_(scoped)),
    ).subquery()
    totals = [
        cast(func.sum(sides.c[name]), BigInteger)
        for name in ("tokens", "bonus", "tokens_taken", "bonus_taken")
    ]
    rows = db.session.execute(
        select(sides.c.purchase_id, *totals)
        .group_by(sides.c.purchase_id)
        .having(or_(totals[0] != totals[2], totals[1] != totals[3]))
        .order_by(sides.c.purchase_id)
        .limit(MOST)
    )
    found += [
        Violation(
            "reversal-entries",
            f"purchase {purchase_id}'s refund entries hold back {tokens} tokens and "
            f"{bonus} bonus, its reversals say {tokens_taken} and {bonus_taken}",
        )
        for purchase_id, tokens, bonus, tokens_taken, bonus_taken in rows
    ]
    return found


def purchase_status_follows_reversals(scope: Scope = FULL) -> list[Violation]:
    """A credited purchase's status is what its reversals make it (paid, refunded or
    disputed), and each reversal holds back or is owed exactly what the set of active
    reversals makes it due. (Purchases refunded before reversals were records keep the
    old scheme's rounding, so only their status is checked.) Read one purchase, and its
    reversals, at a time."""
    legacy = (
        select(JournalEntry.id)
        .where(
            JournalEntry.reference_type == "purchase",
            JournalEntry.reference_id == Purchase.id,
            JournalEntry.kind.in_(REVERSING),
        )
        .exists()
    )
    looked_at = db.session.execute(
        select(Purchase, legacy)
        .where(
            Purchase.status.in_(CREDITED),
            or_(Purchase.status != "paid", Purchase.id.in_(select(PurchaseReversal.purchase_id))),
            _purchases_in_scope(scope),
        )
        .order_by(Purchase.id)
        .execution_options(yield_per=500)
    )
    found = []
    for purchase, is_legacy in looked_at:
        if len(found) >= MOST:
            break
        mine = list(
            db.session.scalars(
                select(PurchaseReversal)
                .where(PurchaseReversal.purchase_id == purchase.id)
                .order_by(PurchaseReversal.id)
            )
        )
        expected = derived_status(purchase, mine)
        if purchase.status != expected:
            found.append(
                Violation(
                    "purchase-status",
                    f"purchase {purchase.id} is {purchase.status}; its reversals say {expected}",
                )
            )
        if is_legacy:
            continue
        owed = due(purchase, mine)
        for reversal in mine:
            holds = (
                reversal.tokens_taken + reversal.tokens_short,
                reversal.bonus_taken + reversal.bonus_short,
            )
            if holds != owed[reversal.id]:
                found.append(
                    Violation(
                        "reversal-due",
                        f"reversal {reversal.provider_ref} of purchase {purchase.id} holds "
                        f"{holds[0]} tokens and {holds[1]} bonus (taken or owed); it is due "
                        f"{owed[reversal.id][0]} and {owed[reversal.id][1]}",
                    )
                )
    return found
