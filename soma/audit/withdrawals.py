"""The audit's checks of withdrawals (SPEC §2.10): every finished withdrawal settled exactly
once, the fees add up, and none left processing past WITHDRAWAL_PROCESSING_ALERT_MINUTES;
each one's amounts are the rules' at the teacher rate in force when it was made, it is its
own teacher's (its method, its hold's wallet), and its hold is closed exactly when it is
finished, by the entry it names and that names it.

A paid withdrawal whose payout came back (a Stripe transfer reversed: `reversed_at`) has,
besides its paid entry, exactly one ADJUSTMENT entry naming it that undoes that one: its
tokens to the teacher's available balance, its fee tokens from fees, the rest from
redemption. No other withdrawal is named by an adjustment.

The last is a violation rather than a warning on purpose: there is no alerts table yet
(issue 13), and `flask soma audit` exiting 1 is what an operator's monitoring already
watches. The sweeper logs the same withdrawals as a warning on each pass.

An incremental run looks at the withdrawals named by an entry in scope, those made since
the checkpoint, those whose `updated_at` (set on every status change) is since it, and
every one still open (requested or processing: the stuck check reads those anyway); the
entries it reads are theirs and those in scope. The fee total is then the scoped
withdrawals' (the same sum, split). An edit of an old finished withdrawal that leaves
`updated_at` alone is left to `--full`. Every check finds the wrong withdrawals in SQL
(at most MOST); the settlement check then reads the entries and legs of those alone, to
say in Python what is wrong with each.
"""

from collections import defaultdict

from sqlalchemy import and_, case, func, literal, or_, select, true
from sqlalchemy.orm import aliased

from soma.audit.checkpoint import FULL, Scope
from soma.audit.violation import MOST, Violation
from soma.extensions import db
from soma.ledger.pricing import pricing_in_force_query
from soma.models import (
    Bucket,
    EntryKind,
    JournalEntry,
    PayoutMethod,
    PlatformAccount,
    Posting,
    PricingUserType,
    TokenPricing,
    Wallet,
    Withdrawal,
)
from soma.models.payout import OPEN_STATUSES, RELEASED_STATUSES, WithdrawalStatus
from soma.payouts.amounts import FEE_MINIMUM_CENTS, FEE_PERCENT
from soma.payouts.withdrawals import processing_too_long

HOLD = EntryKind.WITHDRAWAL_HOLD.value
PAID = EntryKind.WITHDRAWAL_PAID.value
RELEASE = EntryKind.WITHDRAWAL_RELEASE.value
REVERSAL = EntryKind.ADJUSTMENT.value
KINDS = (HOLD, PAID, RELEASE, REVERSAL)


NAMES_A_WITHDRAWAL = JournalEntry.reference_type == "withdrawal"


def _in_scope(scope: Scope):
    """SQL: a withdrawal is in the run's scope (see the module's docstring)."""
    if scope.full:
        return true()
    return or_(
        scope.named(Withdrawal.id, "withdrawal"),
        scope.newer(Withdrawal.id, "through_withdrawal_id"),
        scope.changed(Withdrawal.updated_at),
        Withdrawal.status.in_(OPEN_STATUSES),
    )


def _entries_in_scope(scope: Scope):
    """SQL: an entry naming a withdrawal is in scope: its withdrawal is, or it is."""
    if scope.full:
        return true()
    scoped = select(Withdrawal.id).where(_in_scope(scope)).correlate(None)
    return or_(JournalEntry.reference_id.in_(scoped), scope.entries(JournalEntry.id))


def _count(condition):
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _total(condition, amount=Posting.amount):
    return func.coalesce(func.sum(case((condition, amount), else_=0)), 0)


def _legs_hold(sign, user_leg: bool):
    """SQL, over one entry's postings joined to their wallets and its withdrawal: the
    platform legs are exactly redemption `sign` x (tokens - fee tokens) and, when there
    is a fee, fees `sign` x fee tokens; with `user_leg`, the user legs are exactly the
    withdrawal's teacher's available `-sign` x tokens (see _platform_legs)."""
    code = Wallet.code
    platform = [PlatformAccount.REDEMPTION.value, PlatformAccount.FEES.value]
    redemption, fees = code == platform[0], code == platform[1]
    has_fee = Withdrawal.fee_tokens != 0
    holds = and_(
        _count(redemption) > 0,
        _total(redemption) == sign * (Withdrawal.tokens - Withdrawal.fee_tokens),
        _count(and_(code.is_not(None), code.not_in(platform))) == 0,
        or_(
            and_(has_fee, _count(fees) > 0, _total(fees) == sign * Withdrawal.fee_tokens),
            and_(~has_fee, _count(fees) == 0),
        ),
    )
    if not user_leg:
        return holds
    own = and_(
        code.is_(None),
        Wallet.user_id == Withdrawal.user_id,
        Posting.bucket == Bucket.AVAILABLE.value,
    )
    other_user = and_(
        code.is_(None),
        or_(
            Wallet.user_id.is_distinct_from(Withdrawal.user_id),
            Posting.bucket != Bucket.AVAILABLE.value,
        ),
    )
    return and_(
        holds,
        _count(own) > 0,
        _total(own) == -sign * Withdrawal.tokens,
        _count(other_user) == 0,
    )


def _settlements(scope: Scope):
    """A subquery, per withdrawal named by an entry in scope, of its entries' counts by
    kind, its hold's id and tokens, its closing entry (the newest paid or release one),
    and how many of its entries move the wrong tokens or send them to the wrong wallets."""
    kind = JournalEntry.kind
    # Per entry: whether it is wrong in itself (a payout's or a reversal's legs, a
    # closing entry's or a reversal's tokens).
    wrong = case(
        (and_(kind == PAID, ~_legs_hold(1, user_leg=False)), 1),
        (and_(kind == REVERSAL, ~_legs_hold(-1, user_leg=True)), 1),
        else_=0,
    )
    entries = (
        select(
            JournalEntry.id,
            kind.label("kind"),
            JournalEntry.tokens,
            JournalEntry.reference_id,
            Withdrawal.tokens.label("due"),
            wrong.label("wrong_legs"),
        )
        .join(Withdrawal, Withdrawal.id == JournalEntry.reference_id)
        .outerjoin(Posting, Posting.entry_id == JournalEntry.id)
        .outerjoin(Wallet, Wallet.id == Posting.wallet_id)
        .where(NAMES_A_WITHDRAWAL, _entries_in_scope(scope))
        .group_by(
            JournalEntry.id,
            kind,
            JournalEntry.tokens,
            JournalEntry.reference_id,
            Withdrawal.id,
            Withdrawal.tokens,
            Withdrawal.fee_tokens,
            Withdrawal.user_id,
        )
        .subquery()
    )
    e = entries.c
    e_closing = e.kind.in_((PAID, RELEASE))
    return (
        select(
            e.reference_id.label("withdrawal_id"),
            _count(e.kind == HOLD).label("holds"),
            func.max(case((e.kind == HOLD, e.id))).label("hold_id"),
            func.max(case((e.kind == HOLD, e.tokens))).label("hold_tokens"),
            _count(e.kind == PAID).label("paid"),
            _count(e.kind == RELEASE).label("released"),
            _count(e.kind == REVERSAL).label("reversals"),
            _count(e.kind.not_in(KINDS)).label("others"),
            func.max(case((e_closing, e.id))).label("closing_id"),
            _count(and_(e_closing, e.tokens != e.due)).label("closing_wrong"),
            _count(and_(e.kind == PAID, e.wrong_legs == 1)).label("payouts_wrong"),
            _count(and_(e.kind == REVERSAL, or_(e.wrong_legs == 1, e.tokens != e.due))).label(
                "reversals_wrong"
            ),
        )
        .group_by(e.reference_id)
        .subquery()
    )


def _unsettled(scope: Scope) -> list[int]:
    """The ids of the withdrawals in scope that withdrawals_settled_exactly_once words
    (at most MOST), found in SQL."""
    s = _settlements(scope)
    status = Withdrawal.status
    expected_reversals = case(
        (and_(status == WithdrawalStatus.PAID.value, Withdrawal.reversed_at.is_not(None)), 1),
        else_=0,
    )
    expected_paid = case((status == WithdrawalStatus.PAID.value, 1), else_=0)
    expected_released = case((status.in_(RELEASED_STATUSES), 1), else_=0)
    counted = {column.name: func.coalesce(column, 0) for column in s.c}
    wrong = or_(
        counted["reversals"] != expected_reversals,
        counted["reversals_wrong"] != 0,
        counted["others"] != 0,
        counted["holds"] != 1,
        s.c.hold_id.is_distinct_from(Withdrawal.hold_entry_id),
        s.c.hold_tokens.is_distinct_from(Withdrawal.tokens),
        counted["paid"] != expected_paid,
        counted["released"] != expected_released,
        Withdrawal.closed_entry_id.is_distinct_from(s.c.closing_id),
        counted["closing_wrong"] != 0,
        counted["payouts_wrong"] != 0,
    )
    return list(
        db.session.scalars(
            select(Withdrawal.id)
            .outerjoin(s, s.c.withdrawal_id == Withdrawal.id)
            .where(_in_scope(scope), wrong)
            .order_by(Withdrawal.id)
            .limit(MOST)
        )
    )


def _entries_by_withdrawal(ids: list[int]) -> dict[int, dict[str, list[tuple[int, int]]]]:
    """{withdrawal id: {kind: [(entry id, tokens)]}} of the entries naming withdrawals `ids`.

    (The ledger's own operations may hold and close a withdrawal hold naming nothing,
    as its tests do; the ledger's checks cover those. Every entry the withdrawal service
    writes names its withdrawal.)
    """
    rows = db.session.execute(
        select(JournalEntry.id, JournalEntry.kind, JournalEntry.tokens, JournalEntry.reference_id)
        .where(NAMES_A_WITHDRAWAL, JournalEntry.reference_id.in_(ids))
        .order_by(JournalEntry.id)
    ).all()
    found: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for entry_id, kind, tokens, withdrawal_id in rows:
        found[withdrawal_id][kind].append((entry_id, tokens))
    return found


def _platform_legs(ids: list[int], kind: str = PAID) -> dict[int, dict[str, int]]:
    """{entry id: {platform account code, or "user:<id>:<bucket>": tokens}} of the `kind`
    entries naming withdrawals `ids`: where each payout's (or reversal's) tokens went."""
    rows = db.session.execute(
        select(Posting.entry_id, Wallet.code, Wallet.user_id, Posting.bucket, Posting.amount)
        .join(Wallet, Wallet.id == Posting.wallet_id)
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(JournalEntry.kind == kind, NAMES_A_WITHDRAWAL, JournalEntry.reference_id.in_(ids))
    ).all()
    legs: dict[int, dict[str, int]] = defaultdict(dict)
    for entry_id, code, user_id, bucket, amount in rows:
        if code is None and kind == PAID:
            continue  # (the teacher's locked leg: checked by the hold's own checks)
        name = code or f"user:{user_id}:{bucket}"
        legs[entry_id][name] = legs[entry_id].get(name, 0) + amount
    return legs


def withdrawals_settled_exactly_once(scope: Scope = FULL) -> list[Violation]:
    """Each withdrawal held its tokens once (the hold it names); a paid one retired exactly
    them once (its fee tokens to fees, the rest to redemption); a failed or rejected one
    released exactly them once; one still requested or processing has only its hold. Every
    entry that names a withdrawal is of a withdrawal's kinds and names one that exists.

    SQL finds the wrong withdrawals (at most MOST); Python reads only theirs to word them."""
    ids = _unsettled(scope)
    found = _word_settlements(ids) if ids else []
    orphans = db.session.scalars(
        select(JournalEntry.reference_id)
        .where(
            NAMES_A_WITHDRAWAL,
            _entries_in_scope(scope),
            ~select(Withdrawal.id).where(Withdrawal.id == JournalEntry.reference_id).exists(),
        )
        .group_by(JournalEntry.reference_id)
        .order_by(JournalEntry.reference_id)
        .limit(MOST)
    )
    for withdrawal_id in orphans:
        found.append(f"withdrawal entries name withdrawal {withdrawal_id}, which does not exist")
    return [Violation("withdrawal-settlement", detail) for detail in found[:MOST]]


def _word_settlements(ids: list[int]) -> list[str]:
    """What is wrong with each of withdrawals `ids` (found wrong by _unsettled)."""
    entries, found = _entries_by_withdrawal(ids), []
    legs, reversal_legs = _platform_legs(ids), _platform_legs(ids, REVERSAL)
    withdrawals = db.session.execute(
        select(
            Withdrawal.id,
            Withdrawal.status,
            Withdrawal.tokens,
            Withdrawal.fee_tokens,
            Withdrawal.hold_entry_id,
            Withdrawal.closed_entry_id,
            Withdrawal.user_id,
            Withdrawal.reversed_at,
        )
        .where(Withdrawal.id.in_(ids))
        .order_by(Withdrawal.id)
    ).all()
    for row in withdrawals:
        withdrawal_id, status, tokens, fee_tokens, hold_entry_id, closed_by = row[:6]
        user_id, reversed_at = row[6:]
        mine = entries.get(withdrawal_id, {})
        holds, paid, released = mine.get(HOLD, []), mine.get(PAID, []), mine.get(RELEASE, [])
        reversals = mine.get(REVERSAL, [])
        what = f"withdrawal {withdrawal_id} ({status})"
        expected_reversals = 1 if status == WithdrawalStatus.PAID and reversed_at else 0
        if len(reversals) != expected_reversals:
            found.append(
                f"{what} has {len(reversals)} reversal entr(ies); it should have "
                f"{expected_reversals} (it is {'' if reversed_at else 'not '}marked reversed)"
            )
        for entry_id, moved in reversals:
            expected = {
                f"user:{user_id}:available": tokens,
                PlatformAccount.REDEMPTION.value: -(tokens - fee_tokens),
            }
            if fee_tokens:
                expected[PlatformAccount.FEES.value] = -fee_tokens
            if moved != tokens or reversal_legs.get(entry_id, {}) != expected:
                found.append(
                    f"{what}: reversal entry {entry_id} moves {reversal_legs.get(entry_id)} "
                    f"({moved} tokens), not {expected}"
                )
        for kind in set(mine) - set(KINDS):
            found.append(f"withdrawal {withdrawal_id} is named by a {kind} entry")
        if [(entry_id, held) for entry_id, held in holds] != [(hold_entry_id, tokens)]:
            found.append(
                f"{what} should hold {tokens} tokens once in entry {hold_entry_id}, "
                f"but its holds are {holds}"
            )
        expected_paid = 1 if status == WithdrawalStatus.PAID else 0
        expected_released = 1 if status in RELEASED_STATUSES else 0
        if status in OPEN_STATUSES:
            expected_paid = expected_released = 0
        if len(paid) != expected_paid or len(released) != expected_released:
            found.append(
                f"{what} has {len(paid)} paid and {len(released)} release entr(ies); "
                f"it should have {expected_paid} and {expected_released}"
            )
            continue
        closing = [entry_id for entry_id, _ in paid + released]
        if closed_by != (closing[0] if closing else None):
            found.append(f"{what} says entry {closed_by} closed it, but {closing or 'none'} did")
        for entry_id, moved in paid + released:
            if moved != tokens:
                found.append(f"{what}: entry {entry_id} moves {moved} tokens, not {tokens}")
        for entry_id, _ in paid:
            went = legs.get(entry_id, {})
            expected = {PlatformAccount.REDEMPTION.value: tokens - fee_tokens}
            if fee_tokens:
                expected[PlatformAccount.FEES.value] = fee_tokens
            if went != expected:
                found.append(
                    f"{what}: payout entry {entry_id} sent {went} to the platform, not {expected}"
                )
    return found


def withdrawal_fees_add_up(scope: Scope = FULL) -> list[Violation]:
    """Each withdrawal's net and fee make what was asked for, and the fees account's tokens
    from payouts are exactly the paid withdrawals' fee tokens."""
    found = [
        f"withdrawal {withdrawal_id}: net {net} + fee {fee} is not the {asked} cents asked"
        for withdrawal_id, asked, fee, net in db.session.execute(
            select(Withdrawal.id, Withdrawal.usd_cents, Withdrawal.fee_cents, Withdrawal.net_cents)
            .where(Withdrawal.net_cents + Withdrawal.fee_cents != Withdrawal.usd_cents)
            .where(_in_scope(scope))
            .order_by(Withdrawal.id)
            .limit(MOST)
        ).all()
    ]
    fee_tokens_due = int(
        db.session.scalar(
            select(func.coalesce(func.sum(Withdrawal.fee_tokens), 0)).where(
                Withdrawal.status == WithdrawalStatus.PAID.value, _in_scope(scope)
            )
        )
    )
    fees_received = int(
        db.session.scalar(
            select(func.coalesce(func.sum(Posting.amount), 0))
            .join(Wallet, Wallet.id == Posting.wallet_id)
            .join(JournalEntry, JournalEntry.id == Posting.entry_id)
            .where(
                JournalEntry.kind == PAID,
                NAMES_A_WITHDRAWAL,
                _entries_in_scope(scope),
                Wallet.code == PlatformAccount.FEES.value,
            )
        )
    )
    if fees_received != fee_tokens_due:
        found.append(
            f"the fees account received {fees_received} tokens from payouts, but the paid "
            f"withdrawals' fees are {fee_tokens_due} tokens"
        )
    return [Violation("withdrawal-fees", detail) for detail in found]


def no_withdrawal_processing_too_long(scope: Scope = FULL) -> list[Violation]:
    """No withdrawal has been processing past WITHDRAWAL_PROCESSING_ALERT_MINUTES (in
    every run: the processing ones are few, and time alone makes one stuck)."""
    return [
        Violation(
            "withdrawal-stuck",
            f"withdrawal {withdrawal.id} has been processing since "
            f"{withdrawal.processing_at:%Y-%m-%d %H:%M} UTC: ask its rail, or pay or reject it",
        )
        for withdrawal in processing_too_long()
    ]


def _teacher_rate(column):
    """SQL for `column` of the teacher pricing in force when each withdrawal was made."""
    return (
        pricing_in_force_query(PricingUserType.TEACHER, Withdrawal.created_at)
        .with_only_columns(column)
        .scalar_subquery()
    )


def withdrawal_amounts_follow_the_rules(scope: Scope = FULL) -> list[Violation]:
    """Each withdrawal's amounts are soma.payouts.amounts' for what it asked, at the teacher
    rate in force when it was made: fee = max(50 ¢, 2 % rounded down), net = asked - fee,
    tokens = the fewest worth at least the dollars asked (ceil), fee tokens = the fee's
    tokens rounded down. (Dollars raised with the tokens held left alone, a fee waived or
    cut, all show here.)"""
    percent = Withdrawal.usd_cents * FEE_PERCENT // 100
    fee = case((percent > FEE_MINIMUM_CENTS, percent), else_=literal(FEE_MINIMUM_CENTS))
    rates = select(
        Withdrawal.id.label("withdrawal_id"),
        Withdrawal.usd_cents,
        Withdrawal.fee_cents,
        Withdrawal.net_cents,
        Withdrawal.tokens,
        Withdrawal.fee_tokens,
        fee.label("fee_due"),
        _teacher_rate(TokenPricing.tokens).label("rate_tokens"),
        _teacher_rate(TokenPricing.usd_cents).label("rate_cents"),
    )
    rates = rates.where(_in_scope(scope)).subquery()
    r = rates.c
    tokens_due = (r.usd_cents * r.rate_tokens + r.rate_cents - 1) // r.rate_cents
    fee_tokens_due = r.fee_due * r.rate_tokens // r.rate_cents
    rows = db.session.execute(
        select(
            r.withdrawal_id,
            r.usd_cents,
            r.fee_cents,
            r.net_cents,
            r.tokens,
            r.fee_tokens,
            r.fee_due,
            tokens_due,
            fee_tokens_due,
        )
        .where(
            or_(
                r.rate_tokens.is_(None),
                r.rate_cents.is_(None),
                r.fee_cents != r.fee_due,
                r.net_cents != r.usd_cents - r.fee_due,
                r.tokens != tokens_due,
                r.fee_tokens != fee_tokens_due,
            )
        )
        .order_by(r.withdrawal_id)
        .limit(MOST)
    ).all()
    return [
        Violation(
            "withdrawal-amounts",
            f"withdrawal {withdrawal_id} of {usd} cents says fee {fee_cents}, net {net}, "
            f"{tokens} tokens ({fee_tokens} for the fee); the rules and the teacher rate in "
            f"force then make them fee {fee_due}, net {usd - fee_due}, {tokens_due} tokens "
            f"({fee_tokens_due} for the fee)",
        )
        for withdrawal_id, usd, fee_cents, net, tokens, fee_tokens, fee_due, tokens_due, (
            fee_tokens_due
        ) in rows
    ]


def withdrawals_belong_to_their_teacher(scope: Scope = FULL) -> list[Violation]:
    """Each withdrawal is paid to one of its own teacher's methods, and its hold locked
    exactly its tokens on its own teacher's wallet: one locked posting, and every posting
    of the hold on that wallet (nobody else's tokens held, nobody else's locked)."""
    found = [
        f"withdrawal {withdrawal_id} of user {user_id} is sent to payout method {method_id}, "
        f"which is user {owner}'s"
        for withdrawal_id, user_id, method_id, owner in db.session.execute(
            select(Withdrawal.id, Withdrawal.user_id, Withdrawal.method_id, PayoutMethod.user_id)
            .outerjoin(PayoutMethod, PayoutMethod.id == Withdrawal.method_id)
            .where(or_(PayoutMethod.user_id.is_(None), PayoutMethod.user_id != Withdrawal.user_id))
            .where(_in_scope(scope))
            .order_by(Withdrawal.id)
            .limit(MOST)
        ).all()
    ]
    own = Wallet.user_id == Withdrawal.user_id
    locked = Posting.bucket == Bucket.LOCKED.value
    locked_legs = func.sum(case((locked, 1), else_=0))
    own_locked = func.sum(case((and_(own, locked), Posting.amount), else_=0))
    elsewhere = func.sum(case((own, 0), else_=1))
    rows = db.session.execute(
        select(
            Withdrawal.id,
            Withdrawal.user_id,
            Withdrawal.tokens,
            func.coalesce(locked_legs, 0),
            func.coalesce(own_locked, 0),
            func.coalesce(elsewhere, 0),
        )
        .outerjoin(Posting, Posting.entry_id == Withdrawal.hold_entry_id)
        .outerjoin(Wallet, Wallet.id == Posting.wallet_id)
        .where(_in_scope(scope))
        .group_by(Withdrawal.id, Withdrawal.user_id, Withdrawal.tokens)
        .having(
            or_(
                func.coalesce(locked_legs, 0) != 1,
                func.coalesce(own_locked, 0) != Withdrawal.tokens,
                func.coalesce(elsewhere, 0) != 0,
            )
        )
        .order_by(Withdrawal.id)
        .limit(MOST)
    ).all()
    found += [
        f"withdrawal {withdrawal_id} of user {user_id} holds {tokens} tokens, but its hold "
        f"has {legs} locked posting(s), locking {held} on that user's wallet, and "
        f"{others} posting(s) on other wallets"
        for withdrawal_id, user_id, tokens, legs, held, others in rows
    ]
    return [Violation("withdrawal-owner", detail) for detail in found]


def withdrawal_holds_close_with_their_status(scope: Scope = FULL) -> list[Violation]:
    """A withdrawal's hold is closed (by any entry at all) exactly when it is finished: a
    paid one's by its WITHDRAWAL_PAID entry, a failed or rejected one's by its
    WITHDRAWAL_RELEASE entry, that entry being its `closed_entry_id` and naming it. One
    still requested or processing has no closing entry and no `closed_entry_id`. Only a
    paid withdrawal is marked reversed (its reversal entry: withdrawals_settled_exactly_once).
    """
    closing = aliased(JournalEntry)
    expected_kind = case(
        (Withdrawal.status == WithdrawalStatus.PAID.value, literal(PAID)),
        (Withdrawal.status.in_(RELEASED_STATUSES), literal(RELEASE)),
        else_=None,
    )
    is_open = Withdrawal.status.in_(OPEN_STATUSES)
    wrong_open = and_(
        is_open, or_(closing.id.is_not(None), Withdrawal.closed_entry_id.is_not(None))
    )
    wrong_finished = and_(
        ~is_open,
        or_(
            closing.id.is_(None),
            Withdrawal.closed_entry_id.is_(None),
            closing.id != Withdrawal.closed_entry_id,
            closing.kind != expected_kind,
            closing.reference_type.is_(None),
            closing.reference_type != "withdrawal",
            closing.reference_id.is_(None),
            closing.reference_id != Withdrawal.id,
        ),
    )
    wrong_reversal = and_(
        Withdrawal.reversed_at.is_not(None), Withdrawal.status != WithdrawalStatus.PAID.value
    )
    rows = db.session.execute(
        select(
            Withdrawal.id,
            Withdrawal.status,
            Withdrawal.hold_entry_id,
            Withdrawal.closed_entry_id,
            Withdrawal.reversed_at,
            closing.id,
            closing.kind,
            closing.reference_type,
            closing.reference_id,
        )
        .outerjoin(closing, closing.closes_entry_id == Withdrawal.hold_entry_id)
        .where(or_(wrong_open, wrong_finished, wrong_reversal), _in_scope(scope))
        .order_by(Withdrawal.id)
        .limit(MOST)
    ).all()
    found = []
    for (
        withdrawal_id,
        status,
        hold_id,
        closed_by,
        reversed_at,
        entry_id,
        kind,
        ref_type,
        ref_id,
    ) in rows:
        what = f"withdrawal {withdrawal_id} ({status})"
        if reversed_at is not None and status != WithdrawalStatus.PAID.value:
            found.append(f"{what} is marked reversed, but only a paid one can be")
        if status in OPEN_STATUSES:
            if entry_id is not None or closed_by is not None:
                found.append(
                    f"{what} is open, but its hold {hold_id} is closed by entry {entry_id} "
                    f"({kind}, naming {ref_type} {ref_id}) and it says entry {closed_by} "
                    "closed it"
                )
            continue
        if (
            entry_id is None
            or (entry_id != closed_by or ref_type != "withdrawal" or ref_id != withdrawal_id)
            or kind != (PAID if status == WithdrawalStatus.PAID.value else RELEASE)
        ):
            found.append(
                f"{what} says entry {closed_by} closed its hold {hold_id}, but it is closed by "
                f"{'no entry' if entry_id is None else f'{kind} entry {entry_id}'}"
                f"{'' if entry_id is None else f' naming {ref_type} {ref_id}'}"
            )
    return [Violation("withdrawal-hold-closed", detail) for detail in found]
