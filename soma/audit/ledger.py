"""The audit's checks of the ledger itself: entries, postings and wallet balances.

Each is one set-based query that returns only violations (at most MOST), so the audit's
time grows with the ledger's rows and its memory does not. The chains are checked in SQL
too: each posting's link is recomputed from the hash before it (a window over a wallet's
postings in seq order) by `soma_link`, migration 0009's SQL function on PostgreSQL (plain
SQL, so the planner inlines it into the query: sha256() of the fields, no call per row)
and soma.ledger.core.chain_link registered on SQLite's connection. Checks that sort and
cap their wrong rows ask through violation.first(), so PostgreSQL plans them for every
row instead of an index walk that expects to stop early.

In an incremental run (soma.audit.checkpoint) the entry checks read only the entries in
scope; a wallet's balances are its checkpointed ones plus its postings since, its chain
continues from its checkpointed head, and its locked tokens are its checkpointed ones
(proven equal to its open holds then) plus the holds since, less the holds closed since.
The checks of every wallet's row (negative balances, heads) stay over all wallets: one
row each, and a wallet's row can change without a new entry.
"""

from sqlalchemy import and_, case, exists, func, or_, select, union_all
from sqlalchemy.orm import aliased

from soma.audit.checkpoint import FULL, Scope
from soma.audit.violation import MOST, Violation, first
from soma.extensions import db
from soma.ledger.operations import HOLD_KINDS
from soma.ledger.pricing import cents_at_rate
from soma.models import (
    SOURCE_ACCOUNTS,
    Bucket,
    EntryKind,
    JournalEntry,
    PlatformAccount,
    Posting,
    PricingUserType,
    TokenPricing,
    Wallet,
)

# Kinds whose tokens are what the payee got: the held tokens less those returned.
SETTLE_KINDS = (EntryKind.CLASS_SETTLE.value, EntryKind.WITHDRAWAL_PAID.value)


def entries_sum_to_zero(scope: Scope = FULL) -> list[Violation]:
    rows = db.session.execute(
        select(Posting.entry_id, func.sum(Posting.amount))
        .where(scope.entries(Posting.entry_id))
        .group_by(Posting.entry_id)
        .having(func.sum(Posting.amount) != 0)
        .order_by(Posting.entry_id)
        .limit(MOST)
    ).all()
    return [
        Violation("entry-unbalanced", f"entry {entry_id} postings sum to {total}, not 0")
        for entry_id, total in rows
    ]


def entries_have_two_postings(scope: Scope = FULL) -> list[Violation]:
    rows = db.session.execute(
        select(JournalEntry.id, func.count(Posting.id))
        .outerjoin(Posting, Posting.entry_id == JournalEntry.id)
        .where(scope.entries(JournalEntry.id))
        .group_by(JournalEntry.id)
        .having(func.count(Posting.id) < 2)
        .order_by(JournalEntry.id)
        .limit(MOST)
    ).all()
    return [
        Violation("entry-incomplete", f"entry {entry_id} has {count} posting(s), not 2 or more")
        for entry_id, count in rows
    ]


def balances_match_postings(scope: Scope = FULL) -> list[Violation]:
    """Each wallet's balances are what its postings sum to: in an incremental run, its
    checkpointed balances plus its postings past its checkpointed head."""
    heads, p = scope.heads(), scope.postings().c
    sums = (
        select(
            p.wallet_id,
            func.sum(case((p.bucket == Bucket.AVAILABLE, p.amount), else_=0)).label("available"),
            func.sum(case((p.bucket == Bucket.LOCKED, p.amount), else_=0)).label("locked"),
        )
        .group_by(p.wallet_id)
        .subquery()
    )
    base = heads
    available = func.coalesce(base.c.available, 0) + func.coalesce(sums.c.available, 0)
    locked = func.coalesce(base.c.locked, 0) + func.coalesce(sums.c.locked, 0)
    rows = db.session.execute(
        select(
            Wallet.id,
            Wallet.user_id,
            Wallet.code,
            Wallet.shard,
            Wallet.available,
            Wallet.locked,
            available,
            locked,
        )
        .outerjoin(sums, sums.c.wallet_id == Wallet.id)
        .outerjoin(base, base.c.wallet_id == Wallet.id)
        .where(or_(Wallet.available != available, Wallet.locked != locked))
        .order_by(Wallet.id)
        .limit(MOST)
    ).all()
    return [
        Violation(
            "balance-mismatch",
            f"wallet {w_id} ({_owner(code, shard, user_id)}) holds {cached_a} available and "
            f"{cached_l} locked, but its postings sum to {posted_a} and {posted_l}",
        )
        for w_id, user_id, code, shard, cached_a, cached_l, posted_a, posted_l in rows
    ]


def _owner(code: str | None, shard: int, user_id: int | None) -> str:
    """A wallet as the audit names it: a platform account's shard, or a user's."""
    return f"{code} shard {shard}" if code else f"user {user_id}"


def no_negative_balances(scope: Scope = FULL) -> list[Violation]:
    """No wallet below zero: each shard of a sink (redemption, fees) on its own, not only
    the account's sum, since each is a wallet the ledger takes tokens from."""
    rows = db.session.execute(
        select(
            Wallet.id, Wallet.user_id, Wallet.code, Wallet.shard, Wallet.available, Wallet.locked
        )
        .where(or_(and_(Wallet.available < 0, ~Wallet.is_source), Wallet.locked < 0))
        .order_by(Wallet.id)
        .limit(MOST)
    ).all()
    return [
        Violation(
            "negative-balance",
            f"wallet {w_id} ({_owner(code, shard, user_id)}) has {a} available, {lk} locked",
        )
        for w_id, user_id, code, shard, a, lk in rows
    ]


def platform_shards_complete(scope: Scope = FULL) -> list[Violation]:
    """Every platform account has shards 0 to k-1, the same k for each (soma.ledger.shards),
    none other; each shard is a source exactly when its account is, and holds nothing
    locked. No wallet names an account that does not exist."""
    rows = db.session.execute(
        select(Wallet.id, Wallet.code, Wallet.shard, Wallet.is_source, Wallet.locked).where(
            Wallet.code.is_not(None)
        )
    ).all()
    found: list[str] = []
    shards: dict[str, set[int]] = {account.value: set() for account in PlatformAccount}
    for wallet_id, code, shard, is_source, locked in rows:
        if code not in shards:
            found.append(f"wallet {wallet_id} belongs to {code!r}, which is no platform account")
            continue
        shards[code].add(shard)
        if is_source != (PlatformAccount(code) in SOURCE_ACCOUNTS):
            found.append(
                f"wallet {wallet_id} ({code} shard {shard}) says it is "
                f"{'' if is_source else 'not '}a source; {code} is "
                f"{'' if PlatformAccount(code) in SOURCE_ACCOUNTS else 'not '}one"
            )
        if locked:
            found.append(f"wallet {wallet_id} ({code} shard {shard}) has {locked} locked")
    counts = {code: len(numbers) for code, numbers in shards.items()}
    for code, numbers in shards.items():
        if not numbers:
            found.append(f"{code} has no wallet")
        elif numbers != set(range(len(numbers))):
            found.append(f"{code} has shards {sorted(numbers)}, not 0 to {len(numbers) - 1}")
    if len(set(counts.values())) > 1:
        found.append(f"the platform accounts have different numbers of shards: {counts}")
    return [Violation("platform-shards", detail) for detail in found]


def holds_close_with_their_amount(scope: Scope = FULL) -> list[Violation]:
    """A settle or release gives up exactly the tokens its hold locked, from that wallet."""
    closing = aliased(JournalEntry)
    hold_leg = aliased(Posting)
    close_leg = aliased(Posting)
    rows = db.session.execute(
        select(closing.id, closing.closes_entry_id, hold_leg.amount, close_leg.amount)
        .join(
            hold_leg,
            and_(hold_leg.entry_id == closing.closes_entry_id, hold_leg.bucket == Bucket.LOCKED),
        )
        .outerjoin(
            close_leg,
            and_(
                close_leg.entry_id == closing.id,
                close_leg.bucket == Bucket.LOCKED,
                close_leg.wallet_id == hold_leg.wallet_id,
            ),
        )
        .where(closing.closes_entry_id.is_not(None), scope.entries(closing.id))
        .where(or_(close_leg.amount.is_(None), close_leg.amount != -hold_leg.amount))
        .order_by(closing.id)
        .limit(MOST)
    ).all()
    return [
        Violation(
            "hold-closed-wrong",
            f"entry {entry_id} closes hold {hold_id} of {held} tokens but unlocks "
            f"{-(unlocked or 0)}",
        )
        for entry_id, hold_id, held, unlocked in rows
    ]


def locked_equals_open_holds(scope: Scope = FULL) -> list[Violation]:
    """A user's locked tokens are exactly those of their holds that nothing has closed yet.

    Incrementally: the checkpointed locked tokens (then proven equal to the open holds),
    plus what the holds in scope locked, less what the holds closed by entries in scope
    had locked (a hold made and closed since counts both ways)."""
    hold_kinds = [kind.value for kind in HOLD_KINDS]
    if scope.full:
        closing = aliased(JournalEntry)
        held_now = (
            select(Posting.wallet_id, func.sum(Posting.amount).label("held"))
            .join(JournalEntry, JournalEntry.id == Posting.entry_id)
            .where(
                JournalEntry.kind.in_(hold_kinds),
                Posting.bucket == Bucket.LOCKED.value,
                ~exists().where(closing.closes_entry_id == JournalEntry.id),
            )
            .group_by(Posting.wallet_id)
            .subquery()
        )
        held = func.coalesce(held_now.c.held, 0)
        query = select(Wallet.id, Wallet.user_id, Wallet.locked, held).outerjoin(
            held_now, held_now.c.wallet_id == Wallet.id
        )
    else:
        closing = aliased(JournalEntry)
        opened = (
            select(Posting.wallet_id, Posting.amount)
            .join(JournalEntry, JournalEntry.id == Posting.entry_id)
            .where(
                JournalEntry.kind.in_(hold_kinds),
                Posting.bucket == Bucket.LOCKED.value,
                scope.entries(JournalEntry.id),
            )
        )
        closed = (
            select(Posting.wallet_id, -Posting.amount)
            .join(JournalEntry, JournalEntry.id == Posting.entry_id)
            .join(closing, closing.closes_entry_id == JournalEntry.id)
            .where(
                JournalEntry.kind.in_(hold_kinds),
                Posting.bucket == Bucket.LOCKED.value,
                scope.entries(closing.id),
            )
        )
        moves = union_all(opened, closed).subquery()
        since = (
            select(moves.c.wallet_id, func.sum(moves.c.amount).label("held"))
            .group_by(moves.c.wallet_id)
            .subquery()
        )
        heads = scope.heads()
        held = func.coalesce(heads.c.locked, 0) + func.coalesce(since.c.held, 0)
        query = (
            select(Wallet.id, Wallet.user_id, Wallet.locked, held)
            .outerjoin(since, since.c.wallet_id == Wallet.id)
            .outerjoin(heads, heads.c.wallet_id == Wallet.id)
        )
    rows = db.session.execute(
        query.where(Wallet.user_id.is_not(None), Wallet.locked != held)
        .order_by(Wallet.id)
        .limit(MOST)
    ).all()
    return [
        Violation(
            "locked-not-open-holds",
            f"wallet {wallet_id} (user {user_id}) has {locked} locked but its open holds "
            f"lock {open_held}",
        )
        for wallet_id, user_id, locked, open_held in rows
    ]


def entry_tokens_match_postings(scope: Scope = FULL) -> list[Violation]:
    """An entry's tokens are what its postings moved (see soma.ledger.operations): for a
    settle, what the payee got; for every other kind, the sum of its positive postings
    (a hold's locked amount, a release's returned amount, a credit's or a transfer's)."""
    payer = (
        select(Posting.entry_id, Posting.wallet_id)
        .where(
            Posting.bucket == Bucket.LOCKED.value,
            Posting.amount < 0,
            scope.entries(Posting.entry_id),
        )
        .subquery()
    )
    to_payee = and_(
        Posting.amount > 0, or_(payer.c.wallet_id.is_(None), Posting.wallet_id != payer.c.wallet_id)
    )
    moved = case(
        (JournalEntry.kind.in_(SETTLE_KINDS), func.sum(case((to_payee, Posting.amount), else_=0))),
        else_=func.sum(case((Posting.amount > 0, Posting.amount), else_=0)),
    )
    rows = db.session.execute(
        select(JournalEntry.id, JournalEntry.kind, JournalEntry.tokens, moved)
        .join(Posting, Posting.entry_id == JournalEntry.id)
        .outerjoin(payer, payer.c.entry_id == JournalEntry.id)
        .where(scope.entries(JournalEntry.id))
        .group_by(JournalEntry.id, JournalEntry.kind, JournalEntry.tokens)
        .having(JournalEntry.tokens != moved)
        .order_by(JournalEntry.id)
        .limit(MOST)
    ).all()
    return [
        Violation(
            "entry-tokens-mismatch",
            f"{kind} entry {entry_id} says {tokens} tokens but its postings move {posted}",
        )
        for entry_id, kind, tokens, posted in rows
    ]


def postings_repeat_their_entry(scope: Scope = FULL) -> list[Violation]:
    """A posting's kind and time are copies of its entry's (history reads them from it)."""
    wrong = (
        select(Posting.id.label("posting_id"), Posting.entry_id)
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(
            or_(Posting.kind != JournalEntry.kind, Posting.created_at != JournalEntry.created_at),
            scope.entries(JournalEntry.id),
        )
    )
    rows = db.session.execute(first(wrong, "posting_id")).all()
    return [
        Violation(
            "posting-entry-mismatch",
            f"posting {posting_id} differs from its entry {entry_id} in kind or time",
        )
        for posting_id, entry_id in rows
    ]


def _rates():
    """A CTE of when each pricing was in force: user_type, since, until (None: still in
    force), tokens, usd_cents. At any time, the pricing in force is the newest version of
    the latest `effective_at` not after it (soma.ledger.pricing.pricing_in_force_query)."""
    newest = func.row_number().over(
        partition_by=(TokenPricing.user_type, TokenPricing.effective_at),
        order_by=TokenPricing.version.desc(),
    )
    versions = select(
        TokenPricing.user_type,
        TokenPricing.effective_at,
        TokenPricing.tokens,
        TokenPricing.usd_cents,
        newest.label("nth"),
    ).subquery()
    v = versions.c
    until = func.lead(v.effective_at).over(partition_by=v.user_type, order_by=v.effective_at)
    return (
        select(
            v.user_type,
            v.effective_at.label("since"),
            until.label("until"),
            v.tokens,
            v.usd_cents,
        )
        .where(v.nth == 1)
        .cte("rates")
    )


def entry_values_match_pricing(scope: Scope = FULL) -> list[Violation]:
    """An entry's frozen USD values are its tokens at the rates in force when it was made
    (rounded half up, as soma.ledger.pricing.value_cents_sql freezes them).

    Each entry is joined to the time each rate was in force (a few rows), not looked up
    by a subquery per entry."""
    rates = _rates()
    at = JournalEntry.created_at

    def in_force(user_type: PricingUserType):
        rate = rates.alias(f"{user_type.value}_rate")
        condition = and_(
            rate.c.user_type == user_type.value,
            rate.c.since <= at,
            or_(rate.c.until.is_(None), at < rate.c.until),
        )
        cents = cents_at_rate(JournalEntry.tokens, rate.c.usd_cents, rate.c.tokens)
        return rate, condition, cents

    student, student_joins, student_cents = in_force(PricingUserType.STUDENT)
    teacher, teacher_joins, teacher_cents = in_force(PricingUserType.TEACHER)
    wrong = (
        select(
            JournalEntry.id.label("entry_id"),
            JournalEntry.usd_cents,
            JournalEntry.teacher_usd_cents,
            student_cents.label("student_cents"),
            teacher_cents.label("teacher_cents"),
        )
        .outerjoin(student, student_joins)
        .outerjoin(teacher, teacher_joins)
        .where(
            scope.entries(JournalEntry.id),
            or_(
                student.c.tokens.is_(None),
                teacher.c.tokens.is_(None),
                JournalEntry.usd_cents != student_cents,
                JournalEntry.teacher_usd_cents != teacher_cents,
            ),
        )
    )
    rows = db.session.execute(first(wrong, "entry_id")).all()
    return [
        Violation(
            "entry-value-mismatch",
            f"entry {entry_id} is worth {usd} and {teacher_usd} cents but the pricing in force "
            f"then makes it {student_cents} and {teacher_cents}",
        )
        for entry_id, usd, teacher_usd, student_cents, teacher_cents in rows
    ]


def posting_chains_hold(scope: Scope = FULL) -> list[Violation]:
    """Recompute every wallet's hash chain (see soma.ledger.core) and name, per wallet,
    the first broken link: a posting edited past the append-only triggers no longer
    hashes to what it says, though every balance may still add up. Seq has no gaps.

    Each link is checked against the stored hash before it (a window over the wallet's
    postings by seq), from the start or from the checkpointed head: an edited posting
    breaks its own link, an edited hash its own and the next."""
    heads, p = scope.heads(), scope.postings().c
    window = {"partition_by": p.wallet_id, "order_by": p.seq}
    start_seq = func.coalesce(heads.c.seq, 0)
    previous_seq = func.lag(p.seq, 1, start_seq).over(**window)
    previous_hash = func.lag(p.hash, 1, func.coalesce(heads.c.hash, "")).over(**window)
    link = func.soma_link(
        previous_hash,
        p.entry_id,
        p.wallet_id,
        p.seq,
        p.bucket,
        p.amount,
        p.available_after,
        p.locked_after,
    )
    links = (
        select(
            p.wallet_id,
            p.seq,
            p.id,
            previous_seq.label("previous_seq"),
            (link == p.hash).label("holds"),
        )
        .select_from(scope.postings())
        .outerjoin(heads, heads.c.wallet_id == p.wallet_id)
        .subquery()
    )
    broken = select(
        links,
        func.row_number().over(partition_by=links.c.wallet_id, order_by=links.c.seq).label("nth"),
    ).where(or_(links.c.seq != links.c.previous_seq + 1, ~links.c.holds))
    broken = broken.subquery()
    rows = db.session.execute(
        select(broken.c.wallet_id, broken.c.seq, broken.c.id, broken.c.previous_seq)
        .where(broken.c.nth == 1)
        .order_by(broken.c.wallet_id)
        .limit(MOST)
    ).all()
    found = []
    for wallet_id, seq, posting_id, before in rows:
        if seq != before + 1:
            detail = f"wallet {wallet_id} jumps from seq {before} to seq {seq}"
            detail += f" (posting {posting_id})"
        else:
            detail = (
                f"wallet {wallet_id} breaks at seq {seq} (posting {posting_id}): its content "
                "and the chain before it do not hash to its hash"
            )
        found.append(Violation("posting-chain", detail))
    return found + _heads_not_last_postings(scope)


def _heads_not_last_postings(scope: Scope) -> list[Violation]:
    """Each wallet's chain head is its last posting's seq and hash (0 and '' if none;
    in an incremental run, the checkpointed head if none since)."""
    heads, p = scope.heads(), scope.postings().c
    last_seq = select(p.wallet_id, func.max(p.seq).label("seq")).group_by(p.wallet_id).subquery()
    base = heads
    last = scope.postings().alias("last")
    seq = func.coalesce(last_seq.c.seq, base.c.seq, 0)
    link = func.coalesce(last.c.hash, base.c.hash, "")
    rows = db.session.execute(
        select(Wallet.id, Wallet.head_seq, seq)
        .outerjoin(last_seq, last_seq.c.wallet_id == Wallet.id)
        .outerjoin(last, and_(last.c.wallet_id == Wallet.id, last.c.seq == last_seq.c.seq))
        .outerjoin(base, base.c.wallet_id == Wallet.id)
        .where(or_(Wallet.head_seq != seq, Wallet.head_hash != link))
        .order_by(Wallet.id)
        .limit(MOST)
    ).all()
    return [
        Violation(
            "posting-chain",
            f"wallet {wallet_id}'s head says seq {head_seq} but its last posting is seq "
            f"{last_posted}, or their hashes differ",
        )
        for wallet_id, head_seq, last_posted in rows
    ]
