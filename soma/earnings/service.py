"""What a teacher earned from their classes, read from the values the ledger froze.

What counts, and at what value:

- Earnings are what class settles paid the teacher: the CLASS_SETTLE postings that
  credit the teacher's wallet. A class that ended with nothing to pay (aborted, or
  ended before any time ran) was released, not settled, and earned nothing.
- The dollars of an earning are the settle entry's `teacher_usd_cents`: the value
  of its tokens at the teacher rate in force when the ledger wrote it (SPEC §2.9),
  never at today's rate. A settle pays one payee (`ledger.settle`) the whole of
  the entry's `tokens`, its charge; the student's change is not a payment. So the
  teacher's share of the entry's value is amount / tokens = 1, and the query takes
  it as that share, amount x teacher_usd_cents / tokens rounded half up per entry
  (as the ledger rounds values): exactly the entry's value when amount = tokens,
  and a fair split should an entry ever pay several teachers.
- Only class payments are earnings. Gifts go from student to student (soma.gifts);
  tokens a teacher got any other way (an adjustment, say) would show in the
  wallet and its history, but not here as earned from classes.
- A month's earnings are the settles the ledger dated in it: when the money moved,
  the date the wallet's history shows, so the two reconcile row for row. A class
  whose time ran out at 23:59 on the 31st, settled by the sweeper a minute later,
  counts in the next month, as its payment does in the history.
- Months are calendar months in UTC for now. Users' time zones (SPEC §12) come in
  a later issue: the months shown are bounds computed here in Python and passed to
  the SQL, and the checkpoint's UTC months are corrected at their ends (see
  soma.models.earnings).
- Balances (available, locked) are tokens not paid out yet. They carry no frozen
  value; their dollars are at today's teacher rate, what a withdrawal converts at.
- Growth compares this month so far with last month up to the same point (as long
  after its start, at most all of it), not with all of last month: on the 3rd,
  three days against a whole month would read as a fall every month.

Every figure is an aggregate in the database, never a loop over entries in Python. The
months are summed once into a checkpoint (soma.models.earnings: the payments up to a
posting seq, which never change), so a view reads at most a few hundred month rows,
the payments since the checkpoint (the tail, through `ix_postings_wallet_kind_seq`),
last month up to the same point (its whole days before the same point's day from the
checkpoint's days, EarningsDay, migration 0027, and the payments of that one day up to
the same point through `ix_postings_class_pay`) and the withdrawals: its cost does not
grow with the teacher's history, nor with how much they teach in a month. A view that
finds CHECKPOINT_AFTER payments or more in the tail moves the checkpoint on, and the
sweeper moves on those of teachers far behind who have not looked (`catch_up`).
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import (
    BigInteger,
    String,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from soma import clock
from soma.extensions import db
from soma.ledger.pricing import get_token_pricing, tokens_to_cents
from soma.models import (
    ClassSession,
    EarningsCheckpoint,
    EarningsDay,
    EarningsMonth,
    EntryKind,
    JournalEntry,
    Posting,
    PricingUserType,
    Role,
    TokenPricing,
    User,
    Wallet,
)

MONTHS = 12
MAX_SEQ = 2**63 - 1
# Payments after the checkpoint that make a view move it on: reading that many is a
# fraction of a millisecond; moving it on is a short write of its own.
CHECKPOINT_AFTER = 50

# The partial index's predicate, written as literals: PostgreSQL and SQLite use a partial
# index only when the query's own WHERE says the same, and a bound parameter does not.
CLASS_PAY = and_(
    Posting.kind == literal_column(f"'{EntryKind.CLASS_SETTLE.value}'"),
    Posting.amount > literal_column("0"),
)


@dataclass(frozen=True)
class Totals:
    """Class payments to one teacher over some time."""

    classes: int = 0
    seconds: int = 0  # active class time
    tokens: int = 0
    cents: int = 0  # frozen at the teacher rate of each payment

    def __add__(self, other: "Totals") -> "Totals":
        return Totals(
            self.classes + other.classes,
            self.seconds + other.seconds,
            self.tokens + other.tokens,
            self.cents + other.cents,
        )

    @property
    def hours(self) -> Decimal:
        """Hours taught, to one decimal place (rounded half up)."""
        return (Decimal(self.seconds) / 3600).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Month:
    start: datetime  # the first instant of the month, UTC
    totals: Totals


@dataclass(frozen=True)
class Growth:
    """This month so far against last month up to the same point."""

    now_cents: int
    before_cents: int
    before_until: datetime  # the same point of last month

    @property
    def percent(self) -> int | None:
        """The change in whole percent, rounded half away from zero; None from nothing."""
        if self.before_cents == 0:
            return None
        change = Decimal(self.now_cents - self.before_cents) * 100 / self.before_cents
        return int(change.quantize(Decimal(1), rounding=ROUND_HALF_UP))

    @property
    def direction(self) -> str:
        """ "up", "down" or "flat": "up" from nothing to something."""
        if self.percent is None:
            return "up" if self.now_cents else "flat"
        return "up" if self.percent > 0 else "down" if self.percent < 0 else "flat"

    @property
    def text(self) -> str:
        """ "+12%", "-40%", "0%"; "new" when last month had nothing by then; a dash when
        neither month had anything."""
        percent = self.percent
        if percent is None:
            return "new" if self.now_cents else "\N{EM DASH}"
        if percent > 0:
            return f"+{percent:,}%"
        if percent < 0:
            return f"-{-percent:,}%"
        return "0%"


@dataclass(frozen=True)
class Earnings:
    now: datetime
    wallet_id: int
    available: int
    locked: int
    pricing: TokenPricing  # the teacher rate in force now, for the balances only
    months: list[Month]  # MONTHS of them, oldest first; the last is this month
    growth: Growth
    lifetime: Totals
    withdrawn_tokens: int
    tail_payments: int  # payments read past the checkpoint

    @property
    def available_cents(self) -> int:
        return tokens_to_cents(self.available, self.pricing)

    @property
    def locked_cents(self) -> int:
        return tokens_to_cents(self.locked, self.pricing)

    @property
    def this_month(self) -> Month:
        return self.months[-1]

    @property
    def last_month(self) -> Month:
        return self.months[-2]

    @property
    def year(self) -> Totals:
        """The months shown, together."""
        total = Totals()
        for month in self.months:
            total += month.totals
        return total

    @property
    def checkpoint_due(self) -> bool:
        return self.tail_payments >= CHECKPOINT_AFTER


def month_start(moment: datetime) -> datetime:
    """The first instant of `moment`'s calendar month in UTC."""
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def add_months(start: datetime, months: int) -> datetime:
    """The first instant of the month `months` after (or before) the month starting at `start`."""
    index = start.year * 12 + start.month - 1 + months
    return start.replace(year=index // 12, month=index % 12 + 1)


def month_key(start: datetime) -> str:
    """A month as EarningsMonth names it: "2026-11"."""
    return f"{start.year:04d}-{start.month:02d}"


def month_of(column, dialect: str):
    """SQL: the UTC month of a time, as month_key writes it."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM", type_=String())
    return func.strftime("%Y-%m", column, type_=String())


def day_of(column, dialect: str):
    """SQL: the UTC day of a time, as EarningsDay names it: "2026-11-30"."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD", type_=String())
    return func.strftime("%Y-%m-%d", column, type_=String())


def _share_cents():
    """The teacher's share of the entry's frozen teacher value, rounded half up (see above)."""
    return (Posting.amount * JournalEntry.teacher_usd_cents * 2 + JournalEntry.tokens) // (
        JournalEntry.tokens * 2
    )


def _sum(column):
    # PostgreSQL sums BIGINT as NUMERIC; the cast keeps the figures integers.
    return cast(func.coalesce(func.sum(column), 0), BigInteger)


def totals_columns():
    """SQL: the Totals of the class payments selected, in its order."""
    return (
        func.count(),
        _sum(ClassSession.active_seconds),
        _sum(Posting.amount),
        _sum(_share_cents()),
    )


def class_payments(*conditions):
    """SQL: class payments (postings) under `conditions`, with their entries and classes."""
    return (
        select()
        .select_from(Posting)
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .outerjoin(
            ClassSession,
            and_(
                JournalEntry.reference_type == literal_column("'class'"),
                ClassSession.id == JournalEntry.reference_id,
            ),
        )
        .where(CLASS_PAY, *conditions)
    )


def _class_pay(*conditions):
    """The class payments of the wallet `p_wallet` under `conditions`."""
    return class_payments(Posting.wallet_id == bindparam("p_wallet"), *conditions)


_time = Posting.created_at.type
_starts = [bindparam(f"p_month{i}", type_=_time) for i in range(MONTHS)]
_end = bindparam("p_end", type_=_time)
# Which of the months shown a payment falls in, or -1 for none (before them, or dated
# after this month, which only a moved clock makes).
_month_index = case(
    (Posting.created_at >= _end, -1),
    *((Posting.created_at >= _starts[i], i) for i in reversed(range(MONTHS))),
    else_=-1,
)

WALLET = select(Wallet.id, Wallet.available, Wallet.locked).where(
    Wallet.user_id == bindparam("p_user")
)
# The checkpointed months: each month shown by its key, the others together as "".
_shown = case(
    (
        and_(
            EarningsMonth.month >= bindparam("p_first_key"),
            EarningsMonth.month <= bindparam("p_last_key"),
        ),
        EarningsMonth.month,
    ),
    else_=literal(""),
)
# With the checkpoint's `through_seq` in the same statement, so the months and the seq
# they run through come from one snapshot: read apart, a checkpoint moved on between the
# two reads (by another view) would count the payments it took in twice. No row: no
# checkpoint yet, so nothing summed and every payment is in the tail.
# The checkpointed whole days of last month before the same point's day, summed.
_DAYS_BEFORE = (
    select(_sum(EarningsDay.cents))
    .where(
        EarningsDay.wallet_id == bindparam("p_wallet"),
        EarningsDay.day >= bindparam("p_first_day"),
        EarningsDay.day < bindparam("p_point_day"),
    )
    .scalar_subquery()
)
CHECKPOINTED = (
    select(
        EarningsCheckpoint.through_seq,
        _shown,
        _sum(EarningsMonth.classes),
        _sum(EarningsMonth.seconds),
        _sum(EarningsMonth.tokens),
        _sum(EarningsMonth.cents),
        _DAYS_BEFORE,
    )
    .select_from(EarningsCheckpoint)
    .outerjoin(EarningsMonth, EarningsMonth.wallet_id == EarningsCheckpoint.wallet_id)
    .where(EarningsCheckpoint.wallet_id == bindparam("p_wallet"))
    .group_by(EarningsCheckpoint.through_seq, _shown)
)
# The payments after the checkpoint, by the month shown they fall in; last, the cents of
# those dated in last month before the same point's day (see SAME_POINT).
_before_point_day = and_(
    Posting.created_at >= bindparam("p_from", type_=_time),
    Posting.created_at < bindparam("p_point_from", type_=_time),
)
TAIL = (
    _class_pay(Posting.seq > bindparam("p_through", type_=BigInteger()))
    .add_columns(
        _month_index,
        *totals_columns(),
        _sum(case((_before_point_day, _share_cents()), else_=0)),
    )
    .group_by(_month_index)
)
# Last month up to the same point is the checkpointed whole days before the same
# point's day (_DAYS_BEFORE), the tail's payments in those days (TAIL's last column) and
# the payments of the same point's own day up to it, whatever their seq: about a day of
# payments through ix_postings_class_pay, not a month of them.
SAME_POINT = _class_pay(
    Posting.created_at >= bindparam("p_point_from", type_=_time),
    Posting.created_at < bindparam("p_until", type_=_time),
).add_columns(_sum(_share_cents()))
# Tokens that left the wallet as paid withdrawals (net of any part a paid entry returned).
WITHDRAWN = select(_sum(Posting.amount)).where(
    Posting.wallet_id == bindparam("p_wallet"),
    Posting.kind == EntryKind.WITHDRAWAL_PAID.value,
)


def earnings_of(teacher: User, now: datetime | None = None) -> Earnings:
    """The teacher's balances, earnings by month for the last MONTHS months (this one
    last), growth, lifetime totals and tokens withdrawn. Reads only."""
    now = (now or clock.now()).astimezone(UTC)
    wallet_id, available, locked = db.session.execute(WALLET, {"p_user": teacher.id}).one()
    this_month = month_start(now)
    starts = [add_months(this_month, i - (MONTHS - 1)) for i in range(MONTHS)]
    keys = [month_key(start) for start in starts]
    by_month = {key: Totals() for key in keys}
    lifetime = Totals()
    same_point = min(starts[-2] + (now - this_month), this_month)
    point_from = same_point.replace(hour=0, minute=0, second=0, microsecond=0)
    checkpointed = db.session.execute(
        CHECKPOINTED,
        {
            "p_wallet": wallet_id,
            "p_first_key": keys[0],
            "p_last_key": keys[-1],
            "p_first_day": starts[-2].date().isoformat(),
            "p_point_day": point_from.date().isoformat(),
        },
    )
    rows = checkpointed.all()
    through = rows[0][0] if rows else 0  # one checkpoint row: every row names its seq
    days_before = rows[0][-1] if rows else 0  # likewise, the checkpointed days
    for _, key, *figures, _ in rows:
        totals = Totals(*figures)
        lifetime += totals
        if key:
            by_month[key] += totals
    params = {
        "p_wallet": wallet_id,
        "p_through": through,
        "p_end": add_months(this_month, 1),
        "p_from": starts[-2],
        "p_point_from": point_from,
    }
    params.update({f"p_month{i}": start for i, start in enumerate(starts)})
    tail_payments = 0
    before = days_before
    for index, *figures, tail_before in db.session.execute(TAIL, params):
        before += tail_before
        totals = Totals(*figures)
        lifetime += totals
        tail_payments += totals.classes
        if index >= 0:
            by_month[keys[index]] += totals
    before += db.session.execute(
        SAME_POINT, {"p_wallet": wallet_id, "p_point_from": point_from, "p_until": same_point}
    ).scalar_one()
    withdrawn = db.session.execute(WITHDRAWN, {"p_wallet": wallet_id}).scalar_one()
    months = [Month(start, by_month[key]) for start, key in zip(starts, keys, strict=True)]
    return Earnings(
        now=now,
        wallet_id=wallet_id,
        available=available,
        locked=locked,
        pricing=get_token_pricing(PricingUserType.TEACHER, now),
        months=months,
        growth=Growth(months[-1].totals.cents, before, same_point),
        lifetime=lifetime,
        withdrawn_tokens=-withdrawn,
        tail_payments=tail_payments,
    )


def _insert(dialect: str):
    return (postgresql if dialect == "postgresql" else sqlite).insert


def advance_checkpoint(
    wallet_id: int, now: datetime | None = None, upto: int | None = None, wait: bool = True
) -> int:
    """Sum the wallet's class payments after its checkpoint into its months, and move the
    checkpoint past them, in a transaction of its own; return how many months it wrote.
    `upto` stops at that seq, and moves the checkpoint there even past the last payment
    before it (never past the wallet's head: a posting still to come keeps its place
    after the checkpoint); without it, the checkpoint moves to the newest payment.

    Safe beside any number of views doing the same: the checkpoint row is locked first
    (on SQLite the insert takes the one write lock), and the payments added are exactly
    those between the checkpoint read under that lock and the newest one seen then.
    With `wait` false it does nothing when another move holds the row (PostgreSQL: it
    waits at most LOCK_WAIT), for a view or a sweeper that would rather go on.
    """
    return _advance(wallet_id, now, upto, wait) or 0


# How long a move that need not wait waits for another's lock before it gives up.
LOCK_WAIT = "100ms"
LOCK_NOT_AVAILABLE = "55P03"


def _advance(wallet_id: int, now, upto: int | None, wait: bool) -> int | None:
    """`advance_checkpoint`: the months written, or None if the checkpoint did not move."""
    now = now or clock.now()
    dialect = db.session.get_bind().dialect.name
    insert = _insert(dialect)
    db.session.rollback()  # end any read: this is a write of its own
    try:
        if not wait and dialect == "postgresql":
            # (The insert too waits for another's uncommitted first checkpoint.)
            db.session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
        db.session.execute(
            insert(EarningsCheckpoint.__table__)
            .values(wallet_id=wallet_id, through_seq=0, updated_at=now)
            .on_conflict_do_nothing()
        )
        through = db.session.execute(
            select(EarningsCheckpoint.through_seq)
            .where(EarningsCheckpoint.wallet_id == wallet_id)
            .with_for_update()
        ).scalar_one()
        bound = MAX_SEQ
        if upto is not None:
            # The head first: the postings up to it are committed (a wallet's row and its
            # postings are written in one transaction), so the reads after see every one
            # of them, and none can land at or below it later. (Read after the payments,
            # it could take in one committed between the two, never summed.)
            head = db.session.execute(
                select(Wallet.head_seq).where(Wallet.id == wallet_id)
            ).scalar_one()
            bound = min(upto, head)
        newest = db.session.execute(
            select(func.max(Posting.seq)).where(
                Posting.wallet_id == wallet_id,
                CLASS_PAY,
                Posting.seq > through,
                Posting.seq <= bound,
            )
        ).scalar_one()
        target = newest if upto is None else bound
        if target is None or target <= through:
            db.session.commit()
            return None
        written = 0 if newest is None else _sum_into_periods(wallet_id, through, newest, dialect)
        db.session.execute(
            update(EarningsCheckpoint)
            .where(EarningsCheckpoint.wallet_id == wallet_id)
            .values(through_seq=target, updated_at=now)
        )
        db.session.commit()
    except OperationalError as error:
        db.session.rollback()
        if wait or getattr(error.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        return None  # another move holds the row: it does the work
    except BaseException:
        db.session.rollback()
        raise
    return written


def _sum_into_periods(wallet_id: int, through: int, newest: int, dialect: str) -> int:
    """Add the wallet's class payments with seq in (through, newest] to its months and
    days; return how many months were written."""
    insert = _insert(dialect)
    month = month_of(Posting.created_at, dialect)
    rows = (
        _class_pay(Posting.seq > through, Posting.seq <= newest)
        .add_columns(literal(wallet_id, BigInteger()), month, *totals_columns())
        .group_by(month)
    )
    columns = ["wallet_id", "month", "classes", "seconds", "tokens", "cents"]
    months = EarningsMonth.__table__
    upsert = insert(months).from_select(columns, rows)
    upsert = upsert.on_conflict_do_update(
        index_elements=[months.c.wallet_id, months.c.month],
        set_={name: months.c[name] + upsert.excluded[name] for name in columns[2:]},
    )
    written = len(
        db.session.execute(upsert.returning(months.c.month), {"p_wallet": wallet_id}).all()
    )
    day = day_of(Posting.created_at, dialect)
    day_rows = (
        _class_pay(Posting.seq > through, Posting.seq <= newest)
        .add_columns(literal(wallet_id, BigInteger()), day, _sum(_share_cents()))
        .group_by(day)
    )
    days = EarningsDay.__table__
    upsert = insert(days).from_select(["wallet_id", "day", "cents"], day_rows)
    upsert = upsert.on_conflict_do_update(
        index_elements=[days.c.wallet_id, days.c.day],
        set_={"cents": days.c.cents + upsert.excluded.cents},
    )
    db.session.execute(upsert, {"p_wallet": wallet_id})
    return written


# The sweeper's catch-up (`catch_up`): a teacher's wallet whose checkpoint is this many
# postings or more behind its head (or has none and as many postings) is moved on, the
# most behind first, at most CATCH_UP_WALLETS a pass and CATCH_UP_SEQS postings each, and
# none begun after CATCH_UP_SECONDS, so a pass stays short whatever history it finds
# (a move of 10,000 postings took at most 0.4 s on the bench, its pages in memory).
# Views move the checkpoint of a teacher who looks (CHECKPOINT_AFTER); this is for one
# who has not looked in a long while, or ever: the first view of a teacher with years of
# classes on a database without their checkpoint (after an upgrade, an import) read every
# payment, a minute from disk on the bench's 100,000 classes.
CATCH_UP_BEHIND = 1000
CATCH_UP_WALLETS = 20
CATCH_UP_SEQS = 10_000
CATCH_UP_SECONDS = 2.0


def behind_wallets(behind: int = CATCH_UP_BEHIND, limit: int = CATCH_UP_WALLETS) -> list:
    """(wallet id, through_seq) of the teachers' wallets whose earnings checkpoint is
    `behind` postings or more behind their heads (postings of any kind: at least as
    many as the class payments among them), the most behind first."""
    lag = Wallet.head_seq - func.coalesce(EarningsCheckpoint.through_seq, 0)
    return db.session.execute(
        select(Wallet.id, func.coalesce(EarningsCheckpoint.through_seq, 0))
        .join(User, User.id == Wallet.user_id)
        .outerjoin(EarningsCheckpoint, EarningsCheckpoint.wallet_id == Wallet.id)
        # (The role as a literal: the staff's partial index is used only then.)
        .where(User.role == literal_column(f"'{Role.TEACHER.value}'"), lag >= behind)
        .order_by(lag.desc(), Wallet.id)
        .limit(limit)
    ).all()


def catch_up(
    now: datetime | None = None,
    behind: int | None = None,
    wallets: int | None = None,
    seqs: int | None = None,
    seconds: float | None = None,
) -> list:
    """One pass of the sweeper's catch-up (see CATCH_UP_BEHIND): move on the earnings
    checkpoints of at most `wallets` teachers `behind` postings or more, each by at most
    `seqs` postings (by default CATCH_UP_WALLETS, CATCH_UP_BEHIND and CATCH_UP_SEQS),
    none begun after `seconds` (None, the default, sets no limit; the sweeper passes
    CATCH_UP_SECONDS); return
    the (wallet id, through_seq) it moved on, in its order. Each move is its own
    transaction (`advance_checkpoint`), and skips a wallet another move holds (a view's,
    another sweeper's) rather than wait for it. Call it outside any transaction."""
    behind = CATCH_UP_BEHIND if behind is None else behind
    seqs = CATCH_UP_SEQS if seqs is None else seqs
    wallets = CATCH_UP_WALLETS if wallets is None else wallets
    started = time.monotonic()
    due = [tuple(row) for row in behind_wallets(behind, wallets)]
    db.session.rollback()
    moved = []
    for wallet_id, through in due:
        if seconds is not None and time.monotonic() - started >= seconds:
            break
        if _advance(wallet_id, now, through + seqs, wait=False) is not None:
            moved.append((wallet_id, through))
    return moved
