"""The operator's metrics at /admin/: tokens in circulation, entries per day, active
wallets, revenue per month and failed payments.

What counts, and at what value (every dollar figure is a value the ledger froze when
the entry was written, SPEC §2.9, never today's rate):

- Tokens in circulation are the wallets' cached balances (one row per user, summed
  by role: the staff's through `ix_users_staff`, the students' as every user's wallet
  less the staff's) and each platform account's balance. Issuance and promotions are negative
  by what they issued; the ledger balances, so everything together sums to zero.
- Entries per day are the journal entries the ledger dated in each UTC day.
- An active wallet is a user's wallet with a posting in the last 30 days: anything
  that moved its tokens (a purchase, a class, a gift, a withdrawal).
- Revenue is what the platform keeps, recognised when tokens are used, not when they
  are bought:
  - the class margin: for each class payment (a CLASS_SETTLE entry), its tokens at the
    student rate (`usd_cents`, what the student paid for them: 10 ¢ a token) less the
    same tokens at the teacher rate (`teacher_usd_cents`, what the teacher earned: 4 ¢);
  - plus withdrawal fees: each paid withdrawal's fee in cents (`withdrawals.fee_cents`,
    fixed when it was requested), on the day its WITHDRAWAL_PAID entry retired the
    tokens; a payout reversed later (its tokens returned, an ADJUSTMENT entry keyed by
    the withdrawal) takes its fee back on the day of the reversal;
  - less refunds: the tokens refunds and disputes take back from a student's bought
    tokens (REFUND entries of a reversal returning tokens to issuance) at the student
    rate frozen on the entry, net of the tokens a failed refund or a won dispute
    returns (ADJUSTMENT entries of a reversal from issuance). Bonus tokens cost the
    student nothing, so taking them back (to promotions) is no refund of money.
  A month is a UTC calendar month. Known limit: a refund of tokens the student had
  already spent (a shortfall, which the ledger cannot take back) lowers no figure here,
  though the money went back; the purchase's page and the account's flag show it.
- Failed payments are purchases that failed and withdrawals that failed in the last
  30 days (by the time they last changed), through indexes on their status.

How it stays fast at any size: no view reads every entry. The entries up to a
checkpoint (an entry id) are summed once into `metrics_days` (one row per UTC day)
and `metrics_wallets` (each wallet's latest posting), with `metrics_active_days` (how
many wallets have their latest posting in each day) (soma.models.metrics), so a view
reads at most a year of day rows, a month of active-day rows and the wallets of the
window's first day, and the entries after the checkpoint (the tail: a primary-key
range and its postings through `uq_postings_entry_wallet_bucket`, whose first column
is entry_id). A view that finds
CHECKPOINT_AFTER entries or more in the tail moves the checkpoint on, and so does
`flask soma sweep` on each pass.

Active wallets: a rollup keyed by wallet (its latest posting) rather than by (day,
wallet), and counted by the day of that latest posting (`metrics_active_days`, moved
by each fold). The count is the wallets whose latest posting is in the window: the
day counts after the window's first day, plus that day's wallets from the window's
first instant on (an index range on `ix_metrics_wallets_last_at`, a day of them), not
a row per active wallet; the table stays one row per wallet.
Counting distinct wallets straight from the postings of the last 30 days would read
a month of postings (about two million at ten million entries a year) on every view.

Entry ids and time: ids come from a sequence, so an entry with a lower id may commit
after one with a higher id is visible. The checkpoint therefore moves only up to the
newest entry dated FOLD_LAG ago or more: an entry still uncommitted below that would
be a money transaction open for that long, which the ledger's short transactions never
are. Entries newer than that are read in the tail, so every view is complete.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from flask import current_app, render_template
from sqlalchemy import (
    BigInteger,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import selectinload

from soma import charts, clock
from soma.admin.blueprint import bp
from soma.earnings.service import add_months, month_start
from soma.extensions import db
from soma.ledger.pricing import get_token_pricing, tokens_to_cents
from soma.models import (
    EntryKind,
    JournalEntry,
    MetricsActiveDay,
    MetricsCheckpoint,
    MetricsDay,
    MetricsWallet,
    PlatformAccount,
    Posting,
    PricingUserType,
    Purchase,
    PurchaseStatus,
    Role,
    User,
    Wallet,
    Withdrawal,
    WithdrawalStatus,
)
from soma.models.user import STAFF
from soma.money import usd
from soma.security import role_required

DAYS = 90
MONTHS = 12
ACTIVE_DAYS = 30
FAILED_DAYS = 30
LATEST_FAILED = 5
# Entries after the checkpoint that make a view move it on.
CHECKPOINT_AFTER = 500
# The most entries one fold takes in: a fold is a transaction of its own, kept short.
FOLD_BATCH = 200_000
# The command's batch (`flask soma metrics`, catch_up): a backlog in few transactions.
CATCH_UP_BATCH = 20_000_000
# How old an entry must be before the checkpoint passes it (see above).
FOLD_LAG = timedelta(minutes=5)

PLATFORM_LABELS = {
    PlatformAccount.ISSUANCE: "Issuance (tokens sold)",
    PlatformAccount.PROMOTIONS: "Promotions (bonus tokens)",
    PlatformAccount.REDEMPTION: "Redemption (tokens paid out)",
    PlatformAccount.FEES: "Fees (withdrawal fees)",
}


# The figures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DayTotals:
    """What the entries of some time add up to."""

    entries: int = 0
    classes: int = 0
    margin_cents: int = 0
    withdrawals: int = 0
    fee_cents: int = 0
    refunds: int = 0
    refund_cents: int = 0

    def __add__(self, other: "DayTotals") -> "DayTotals":
        return DayTotals(*(a + b for a, b in zip(self.figures, other.figures, strict=True)))

    @property
    def figures(self) -> tuple[int, ...]:
        return (
            self.entries,
            self.classes,
            self.margin_cents,
            self.withdrawals,
            self.fee_cents,
            self.refunds,
            self.refund_cents,
        )

    @property
    def revenue_cents(self) -> int:
        return self.margin_cents + self.fee_cents - self.refund_cents


@dataclass(frozen=True)
class Day:
    day: date
    totals: DayTotals


@dataclass(frozen=True)
class Month:
    start: datetime
    totals: DayTotals


@dataclass(frozen=True)
class Holding:
    """The tokens of one role's wallets, or of one platform account."""

    name: str
    wallets: int
    available: int
    locked: int
    value_cents: int | None = None  # at today's rate for the role, where one applies

    @property
    def total(self) -> int:
        return self.available + self.locked


@dataclass(frozen=True)
class Failed:
    """Failed payments of the last FAILED_DAYS days: how many, and the latest few."""

    purchases: int
    withdrawals: int
    latest_purchases: list
    latest_withdrawals: list


@dataclass(frozen=True)
class Metrics:
    now: datetime
    users: dict[str, int]  # accounts by role
    holdings: list[Holding]  # by role: student, teacher (and admin, if any hold tokens)
    platform: list[Holding]
    days: list[Day]  # DAYS of them, oldest first; the last is today
    months: list[Month]  # MONTHS of them, oldest first; the last is this month
    active: dict[str, int]  # by role
    failed: Failed
    through_entry_id: int
    tail_entries: int

    @property
    def active_total(self) -> int:
        return sum(self.active.values())

    @property
    def ledger_sum(self) -> int:
        """Every wallet's tokens together: zero while the ledger balances."""
        return sum(h.total for h in self.holdings) + sum(h.total for h in self.platform)

    @property
    def days_total(self) -> int:
        return sum(day.totals.entries for day in self.days)

    @property
    def year(self) -> DayTotals:
        total = DayTotals()
        for month in self.months:
            total += month.totals
        return total

    @property
    def checkpoint_due(self) -> bool:
        return self.tail_entries >= CHECKPOINT_AFTER


# SQL -------------------------------------------------------------------------------------


def _dialect() -> str:
    return db.session.get_bind().dialect.name


def day_of(column, dialect: str):
    """SQL: the UTC day of a time, as "YYYY-MM-DD"."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD", type_=String())
    return func.strftime("%Y-%m-%d", column, type_=String())


def _sum(column):
    # PostgreSQL sums BIGINT as NUMERIC; the cast keeps the figures integers.
    return cast(func.coalesce(func.sum(column), 0), BigInteger)


def _kind(kind: EntryKind):
    return JournalEntry.kind == literal_column(f"'{kind.value}'")


def _entry_totals(
    first_after: int, through: int | None, dialect: str, issuance_ids: tuple[int, ...]
):
    """SQL: (day, *DayTotals) of the entries with first_after < id <= through (no upper
    bound when None), by UTC day. See the module's docstring for what counts."""
    refund_side = Posting.__table__.alias("refund_side")
    reversal = JournalEntry.reference_type == literal_column("'reversal'")
    by_withdrawal = JournalEntry.reference_type == literal_column("'withdrawal'")
    # +1 for a withdrawal paid, -1 for a paid one reversed (its tokens unretired).
    withdrawal_sign = case(
        (and_(_kind(EntryKind.WITHDRAWAL_PAID), Withdrawal.id.is_not(None)), 1),
        (and_(_kind(EntryKind.ADJUSTMENT), Withdrawal.id.is_not(None)), -1),
        else_=0,
    )
    # +1 for tokens a reversal took back to issuance, -1 for tokens it returned from it.
    refund_sign = case(
        (and_(_kind(EntryKind.REFUND), refund_side.c.id.is_not(None)), 1),
        (and_(_kind(EntryKind.ADJUSTMENT), refund_side.c.id.is_not(None)), -1),
        else_=0,
    )
    settle = _kind(EntryKind.CLASS_SETTLE)
    day = day_of(JournalEntry.created_at, dialect)
    conditions = [JournalEntry.id > first_after]
    if through is not None:
        conditions.append(JournalEntry.id <= through)
    return (
        select(
            day,
            func.count(),
            _sum(case((settle, 1), else_=0)),
            _sum(case((settle, JournalEntry.usd_cents - JournalEntry.teacher_usd_cents), else_=0)),
            _sum(withdrawal_sign),
            _sum(withdrawal_sign * func.coalesce(Withdrawal.fee_cents, 0)),
            _sum(refund_sign),
            _sum(refund_sign * JournalEntry.usd_cents),
        )
        .select_from(JournalEntry)
        .outerjoin(
            Withdrawal,
            and_(
                by_withdrawal,
                JournalEntry.kind.in_(
                    [EntryKind.WITHDRAWAL_PAID.value, EntryKind.ADJUSTMENT.value]
                ),
                Withdrawal.id == JournalEntry.reference_id,
            ),
        )
        .outerjoin(
            refund_side,
            and_(
                reversal,
                JournalEntry.kind.in_([EntryKind.REFUND.value, EntryKind.ADJUSTMENT.value]),
                refund_side.c.entry_id == JournalEntry.id,
                refund_side.c.wallet_id.in_([literal(i) for i in issuance_ids]),
            ),
        )
        .where(*conditions)
        .group_by(day)
    )


def _issuance_ids() -> tuple[int, ...]:
    """The issuance account's wallets, one per shard (none before the ledger made them:
    no refund joins them)."""
    found = db.session.scalars(
        select(Wallet.id).where(Wallet.code == PlatformAccount.ISSUANCE).order_by(Wallet.id)
    )
    return tuple(found) or (0,)


def _as_date(text: str) -> date:
    return date.fromisoformat(text)


def figures(now: datetime | None = None) -> Metrics:
    """Every figure of /admin/ at `now`. Reads only."""
    now = (now or clock.now()).astimezone(UTC)
    dialect = _dialect()
    today = now.date()
    this_month = month_start(now)
    month_starts = [add_months(this_month, i - (MONTHS - 1)) for i in range(MONTHS)]
    day_list = [today - timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    first_day = min(day_list[0], month_starts[0].date())

    # The checkpoint and its days in one statement: one snapshot, so a checkpoint moved on
    # between two reads cannot count the entries it took in twice.
    rows = db.session.execute(
        select(
            MetricsCheckpoint.through_entry_id,
            MetricsDay.day,
            *(
                getattr(MetricsDay, name)
                for name in (
                    "entries",
                    "classes",
                    "margin_cents",
                    "withdrawals",
                    "fee_cents",
                    "refunds",
                    "refund_cents",
                )
            ),
        )
        .select_from(MetricsCheckpoint)
        .outerjoin(MetricsDay, MetricsDay.day >= first_day.isoformat())
        .where(MetricsCheckpoint.id == 1)
    ).all()
    through = rows[0][0] if rows else 0
    by_day: dict[date, DayTotals] = {}
    for _, key, *values in rows:
        if key is not None:
            day = _as_date(key)
            totals = DayTotals(*values)
            by_day[day] = by_day[day] + totals if day in by_day else totals
    tail_entries = 0
    for key, *values in db.session.execute(_entry_totals(through, None, dialect, _issuance_ids())):
        day = _as_date(key)
        totals = DayTotals(*values)
        tail_entries += totals.entries
        by_day[day] = by_day[day] + totals if day in by_day else totals

    days = [Day(day, by_day.get(day, DayTotals())) for day in day_list]
    # Each day once, into the month it is in (if shown).
    month_of_day = {(start.year, start.month): i for i, start in enumerate(month_starts)}
    month_totals = [DayTotals() for _ in month_starts]
    for day, totals in by_day.items():
        i = month_of_day.get((day.year, day.month))
        if i is not None:
            month_totals[i] += totals
    months = [Month(start, total) for start, total in zip(month_starts, month_totals, strict=True)]

    users, holdings = _people(now)
    return Metrics(
        now=now,
        users=users,
        holdings=holdings,
        platform=_platform(),
        days=days,
        months=months,
        active=_active(now, through),
        failed=_failed(now),
        through_entry_id=through,
        tail_entries=tail_entries,
    )


def _people(now: datetime) -> tuple[dict[str, int], list[Holding]]:
    """Accounts by role, and users' tokens by role (summed in SQL, no entry is read), in
    one statement: the staff (teachers and admins) with their wallets, through
    ix_users_staff, and every user's wallet together; the students are the rest. No join
    of every user to every wallet."""
    everyone = "*"
    rows = db.session.execute(
        union_all(
            select(
                User.role,
                func.count(User.id),
                func.count(Wallet.id),
                _sum(Wallet.available),
                _sum(Wallet.locked),
            )
            .select_from(User)
            .outerjoin(Wallet, Wallet.user_id == User.id)
            .where(text(STAFF))
            .group_by(User.role),
            select(
                literal(everyone, String()),
                select(func.count()).select_from(User).scalar_subquery(),
                func.count(),
                _sum(Wallet.available),
                _sum(Wallet.locked),
            ).where(Wallet.user_id.is_not(None)),
        )
    ).all()
    found = {role: [int(x) for x in figures] for role, *figures in rows}
    students = found.pop(everyone)
    for figures in found.values():
        students = [a - b for a, b in zip(students, figures, strict=True)]
    found[Role.STUDENT.value] = students
    users = {role.value: found.get(role.value, (0,))[0] for role in Role}
    rates = {
        Role.STUDENT.value: get_token_pricing(PricingUserType.STUDENT, now),
        Role.TEACHER.value: get_token_pricing(PricingUserType.TEACHER, now),
    }
    holdings = []
    for role in (Role.STUDENT.value, Role.TEACHER.value, Role.ADMIN.value):
        _, count, available, locked = found.get(role, (0, 0, 0, 0))
        if role == Role.ADMIN.value and not (available or locked):
            continue  # admins hold no tokens in the ordinary course
        rate = rates.get(role)
        value = tokens_to_cents(available + locked, rate) if rate else None
        holdings.append(Holding(role, count, available, locked, value))
    return users, holdings


def _platform() -> list[Holding]:
    """One holding per platform account: the sum of its shards (soma.ledger.shards)."""
    rows = db.session.execute(
        select(
            Wallet.code,
            _sum(Wallet.available),
            _sum(Wallet.locked),
        )
        .where(Wallet.code.is_not(None))
        .group_by(Wallet.code)
        .order_by(func.min(Wallet.id))
    ).all()
    return [Holding(code, 1, int(available), int(locked)) for code, available, locked in rows]


def _active(now: datetime, through: int) -> dict[str, int]:
    """Users' wallets with a posting in the last ACTIVE_DAYS days, by role, in one
    statement (one snapshot of the rollup): the rollup's wallets whose latest posting is
    in a day after the window's first day (MetricsActiveDay, a month of rows), those of
    that first day from `since` on (an index range of MetricsWallet), and the wallets the
    tail's postings saw that the rollup does not already count (each once)."""
    since = now - timedelta(days=ACTIVE_DAYS)
    next_day = datetime.combine(since.date() + timedelta(days=1), datetime.min.time(), UTC)
    seen = MetricsWallet.__table__.alias("seen")
    parts = union_all(
        select(MetricsActiveDay.role, _sum(MetricsActiveDay.wallets))
        .where(MetricsActiveDay.day >= next_day.date().isoformat())
        .group_by(MetricsActiveDay.role),
        select(MetricsWallet.role, func.count())
        .where(MetricsWallet.last_at >= since, MetricsWallet.last_at < next_day)
        .group_by(MetricsWallet.role),
        select(User.role, func.count(func.distinct(Posting.wallet_id)))
        .join(Wallet, Wallet.id == Posting.wallet_id)
        .join(User, User.id == Wallet.user_id)
        .outerjoin(seen, seen.c.wallet_id == Posting.wallet_id)
        .where(
            Posting.entry_id > through,
            Posting.created_at >= since,
            or_(seen.c.wallet_id.is_(None), seen.c.last_at < since),
        )
        .group_by(User.role),
    )
    counts: dict[str, int] = {}
    for role, count in db.session.execute(parts):
        counts[role] = counts.get(role, 0) + int(count)
    return {role.value: counts.get(role.value, 0) for role in (Role.STUDENT, Role.TEACHER)}


def _failed(now: datetime) -> Failed:
    since = now - timedelta(days=FAILED_DAYS)
    failed_purchase = and_(
        Purchase.status == PurchaseStatus.FAILED.value, Purchase.updated_at >= since
    )
    failed_withdrawal = and_(
        Withdrawal.status == WithdrawalStatus.FAILED.value,
        func.coalesce(Withdrawal.finished_at, Withdrawal.updated_at) >= since,
    )
    return Failed(
        purchases=db.session.scalar(select(func.count()).where(failed_purchase)),
        withdrawals=db.session.scalar(select(func.count()).where(failed_withdrawal)),
        latest_purchases=list(
            db.session.scalars(
                select(Purchase)
                .options(selectinload(Purchase.user))
                .where(failed_purchase)
                .order_by(Purchase.updated_at.desc(), Purchase.id.desc())
                .limit(LATEST_FAILED)
            )
        ),
        latest_withdrawals=list(
            db.session.scalars(
                select(Withdrawal)
                .options(selectinload(Withdrawal.user))
                .where(failed_withdrawal)
                .order_by(Withdrawal.id.desc())
                .limit(LATEST_FAILED)
            )
        ),
    )


# The checkpoint --------------------------------------------------------------------------


def _insert(dialect: str):
    return (postgresql if dialect == "postgresql" else sqlite).insert


def advance_checkpoint(
    now: datetime | None = None, upto: int | None = None, batch: int = FOLD_BATCH
) -> int:
    """Sum the entries after the checkpoint (at most `batch` of them, up to the newest
    dated FOLD_LAG before `now`, and at most entry `upto`) into the days and wallets, and
    move the checkpoint past them, in a transaction of its own; return the entry id it
    moved to (the old one when there was nothing to take in).

    Safe beside any number of views and sweeps doing the same: the checkpoint row is
    locked first (on SQLite the insert takes the one write lock), and the entries added
    are exactly those between the checkpoint read under that lock and the bound chosen
    under it.
    """
    now = (now or clock.now()).astimezone(UTC)
    dialect = _dialect()
    insert = _insert(dialect)
    db.session.rollback()  # end any read: this is a write of its own
    try:
        db.session.execute(
            insert(MetricsCheckpoint.__table__)
            .values(id=1, through_entry_id=0, updated_at=now)
            .on_conflict_do_nothing()
        )
        through = db.session.execute(
            select(MetricsCheckpoint.through_entry_id)
            .where(MetricsCheckpoint.id == 1)
            .with_for_update()
        ).scalar_one()
        # The newest entry old enough, among the next `batch` ids at most, counted from the
        # first id after the checkpoint: a gap in the ids (a sequence skips the ids of rolled
        # back inserts) never stops the checkpoint short.
        first = db.session.execute(
            select(func.min(JournalEntry.id)).where(JournalEntry.id > through)
        ).scalar_one()
        if first is None:
            db.session.commit()
            return through
        bound = first + batch - 1
        if upto is not None:
            bound = min(bound, upto)
        newest = db.session.execute(
            select(func.max(JournalEntry.id)).where(
                JournalEntry.id > through,
                JournalEntry.id <= bound,
                JournalEntry.created_at <= now - FOLD_LAG,
            )
        ).scalar_one()
        if newest is None:
            db.session.commit()
            return through
        _fold(through, newest, dialect, insert)
        db.session.execute(
            update(MetricsCheckpoint)
            .where(MetricsCheckpoint.id == 1)
            .values(through_entry_id=newest, updated_at=now)
        )
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return newest


def _fold(after: int, through: int, dialect: str, insert) -> None:
    """Add the entries after < id <= through to the days and the wallets."""
    names = [
        "day",
        "entries",
        "classes",
        "margin_cents",
        "withdrawals",
        "fee_cents",
        "refunds",
        "refund_cents",
    ]
    days = MetricsDay.__table__
    totals = _entry_totals(after, through, dialect, _issuance_ids())
    upsert = insert(days).from_select(names, totals)
    db.session.execute(
        upsert.on_conflict_do_update(
            index_elements=[days.c.day],
            set_={name: days.c[name] + upsert.excluded[name] for name in names[1:]},
        )
    )
    wallets = MetricsWallet.__table__
    # Users' wallets only: the platform's accounts are not "active wallets".
    latest = (
        select(Posting.wallet_id, User.role, func.max(Posting.created_at))
        .join(Wallet, Wallet.id == Posting.wallet_id)
        .join(User, User.id == Wallet.user_id)
        .where(Posting.entry_id > after, Posting.entry_id <= through)
        .group_by(Posting.wallet_id, User.role)
    )
    _move_active_days(latest, dialect, insert)
    upsert = insert(wallets).from_select(["wallet_id", "role", "last_at"], latest)
    # Only a later posting moves a wallet's row: no dead row for one that did not move.
    db.session.execute(
        upsert.on_conflict_do_update(
            index_elements=[wallets.c.wallet_id],
            set_={"last_at": upsert.excluded.last_at},
            where=upsert.excluded.last_at > wallets.c.last_at,
        )
    )


def _move_active_days(latest, dialect: str, insert) -> None:
    """Before `latest` (wallet_id, role, last_at) moves MetricsWallet on: take each wallet
    it moves out of the day of its old latest posting and into the day of its new one
    (a new wallet only into it), in MetricsActiveDay."""
    new = latest.subquery("new")
    old = MetricsWallet.__table__.alias("old")
    wallet_id, role, last_at = new.c
    moves = union_all(
        select(day_of(old.c.last_at, dialect).label("day"), old.c.role, literal(-1).label("n"))
        .select_from(new)
        .join(old, old.c.wallet_id == wallet_id)
        .where(last_at > old.c.last_at),
        select(day_of(last_at, dialect), role, literal(1))
        .select_from(new)
        .outerjoin(old, old.c.wallet_id == wallet_id)
        .where(or_(old.c.wallet_id.is_(None), last_at > old.c.last_at)),
    ).subquery("moves")
    change = func.sum(moves.c.n)
    rows = (
        select(moves.c.day, moves.c.role, cast(change, BigInteger))
        .where(literal_column("1") == literal_column("1"))
        .group_by(moves.c.day, moves.c.role)
        .having(change != 0)
    )
    days = MetricsActiveDay.__table__
    upsert = insert(days).from_select(["day", "role", "wallets"], rows)
    db.session.execute(
        upsert.on_conflict_do_update(
            index_elements=[days.c.day, days.c.role],
            set_={"wallets": days.c.wallets + upsert.excluded.wallets},
        )
    )
    db.session.execute(days.delete().where(days.c.wallets == 0))


def catch_up(now: datetime | None = None, batch: int = CATCH_UP_BATCH) -> int:
    """Move the checkpoint as far as it goes, `batch` entries at a time; return where it is.

    The command's batches are large: each batch rewrites the row of every wallet it saw,
    so a backlog of millions taken in by the views' small batches would leave a wallet's
    row rewritten once per batch (dead rows for autovacuum, and a table many times its
    size until a VACUUM FULL)."""
    through = -1
    while True:
        moved = advance_checkpoint(now, batch=batch)
        if moved == through:
            return moved
        through = moved


# Charts ----------------------------------------------------------------------------------


def entries_chart(days: list[Day]) -> charts.BarChart:
    points = []
    for i, day in enumerate(days):
        # Each month's name under its first day (and under the first bar, unless a month
        # starts close enough to say it).
        first = day.day.day == 1 or (i == 0 and day.day.day < 22)
        today = i == len(days) - 1
        points.append(
            charts.Point(
                value=day.totals.entries,
                label=day.day.strftime("%b") if first else None,
                title=f"{day.day:%a %d %b %Y}{' so far' if today else ''}: "
                f"{day.totals.entries:,} entr{'y' if day.totals.entries == 1 else 'ies'}",
                current=today,
            )
        )
    return charts.bar_chart(points, charts.short_count, 10, unit="day")


def revenue_chart(months: list[Month]) -> charts.BarChart:
    points = []
    for i, month in enumerate(months):
        first_of_year = month.start.month == 1 or (i == 0 and months[0].start.month < 11)
        so_far = " so far" if i == len(months) - 1 else ""
        totals = month.totals
        points.append(
            charts.Point(
                value=totals.revenue_cents,
                label=month.start.strftime("%b"),
                sublabel=month.start.strftime("%Y") if first_of_year else None,
                title=f"{month.start:%B %Y}{so_far}: {usd(totals.revenue_cents, signed=True)} "
                f"({usd(totals.margin_cents)} class margin, {usd(totals.fee_cents)} fees, "
                f"{usd(totals.refund_cents)} refunds)",
                current=i == len(months) - 1,
            )
        )
    return charts.bar_chart(points, charts.short_usd, 1000)


# The page --------------------------------------------------------------------------------


@bp.get("/")
@role_required(Role.ADMIN)
def index():
    """The operator's metrics: tokens in circulation, entries per day, active wallets,
    revenue per month and failed payments."""
    metrics = figures()
    page = render_template(
        "admin/index.html",
        metrics=metrics,
        entries_chart=entries_chart(metrics.days),
        revenue_chart=revenue_chart(metrics.months),
        platform_labels=PLATFORM_LABELS,
        student_rate=get_token_pricing(PricingUserType.STUDENT, metrics.now),
        teacher_rate=get_token_pricing(PricingUserType.TEACHER, metrics.now),
    )
    if metrics.checkpoint_due:
        # The next view reads less; this one is already right. A failure here loses
        # nothing (the sums are a cache of the ledger), so the page is still served.
        try:
            advance_checkpoint()
        except SQLAlchemyError:
            current_app.logger.exception("metrics: the checkpoint could not move on")
    return page
