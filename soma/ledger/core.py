"""The one place that writes journal entries, postings and wallet balances.

An entry is written in the caller's transaction, in this order:

1. INSERT the entry, ON CONFLICT DO NOTHING. A conflict means the idempotency
   key was used before (return that entry, or refuse different content), or
   that the hold it closes is already closed (AlreadySettled).
2. One conditional UPDATE per wallet, in a fixed order (users by id, then
   platform accounts by code and shard) so that concurrent entries never
   deadlock. The WHERE clause refuses an overdraft; the CHECK constraints are
   the backstop.
3. INSERT the postings, with the balances the UPDATEs returned.

On PostgreSQL the three steps are one statement (a chain of CTEs, see
`_whole_entry_statement`), compiled once per shape and run as driver SQL, so
an entry costs one round trip and little Python; on SQLite they are separate
statements. Either way the order, the locks and the refusals are the same.

By default nothing here commits: the entry joins the session's transaction,
and the caller commits the whole money operation at once, or rolls it all back
(see `atomic`). An entry that is a money operation on its own can instead be
posted with `own_transaction=True`: it is then written and committed in a
transaction of its own, apart from the session's. On PostgreSQL that is the
entry's one statement in autocommit, one round trip in all; the statement
raises (see migration 0004) rather than return a refusal, so a refused entry
writes nothing. `post_row_credits` does the same for two credits to one user that
must move another row with them (a purchase to paid, with its tokens and bonus): a
compare-and-set of that row guards both entries, all in one statement.

Every posting is a link in its wallet's chain. Under the wallet's row lock (the
UPDATE of step 2) the posting draws the wallet's next sequence number and hashes
the wallet's head with its own content:

    hash = hex(SHA-256(UTF-8("|".join([previous hash, entry id, wallet id, seq,
                                        bucket, amount, available after, locked after]))))

integers in decimal with a leading "-" when negative, the previous hash as 64
lowercase hex digits ('' for a wallet's first posting). An entry posting both
buckets of one wallet (a hold, a release, a settle's payer) gives them
consecutive numbers, available first, each chained to the one before. The
wallet row keeps the head (`head_seq`, `head_hash`) and the hash before it
(`prior_hash`), which PostgreSQL's UPDATE ... RETURNING, seeing new values
only, needs for an entry's first of two postings. The same encoding is computed
in SQL on PostgreSQL (`soma_link`, `soma_head` and `soma_prior`, migration 0009,
called from the wallet's UPDATE), and in Python on SQLite and by the audit (`chain_link`,
`wallet_links`); a posting edited past the append-only triggers no longer hashes
to what it says, and the audit names the first such link.

A platform account is several wallets, its shards (see soma.ledger.shards): a
leg that names the account alone is posted to the shard its entry's reference
(or key) hashes to, so concurrent purchases lock different issuance rows. A
debit from a sink account (redemption, fees) must name its shard.

The fixed lock order holds within one entry; a transaction that posts several
entries touching the same wallets in different orders can deadlock (PostgreSQL
then aborts it and nothing moves), so a money operation is best one entry per
transaction.
"""

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import NoReturn

import psycopg
from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from soma.extensions import db
from soma.fastread import autocommit_row
from soma.ledger.errors import (
    AlreadySettled,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidPosting,
    LedgerError,
)
from soma.ledger.pricing import cents_at_rate, rate_in_force_sql, value_cents_sql
from soma.ledger.shards import shard_count, shard_for, shard_key
from soma.models import (
    SOURCE_ACCOUNTS,
    Bucket,
    EntryKind,
    JournalEntry,
    PlatformAccount,
    Posting,
    PricingUserType,
    UTCDateTime,
    Wallet,
    utcnow,
)
from soma.money import is_whole

entries = JournalEntry.__table__
postings = Posting.__table__
wallets = Wallet.__table__


@dataclass(frozen=True, order=True)
class Account:
    """A wallet named the one way it is always named: a platform code or a user id.

    A platform account's `shard` is None until `post` places the entry on one.
    """

    platform: str | None = None
    user_id: int | None = None
    shard: int | None = None

    @property
    def sort_key(self) -> tuple:
        # Users first, platform accounts last: a purchase waiting on a busy
        # user's wallet then does not hold an issuance row, which every
        # purchase needs. One total order either way, so no deadlocks.
        return (1, self.platform, self.shard or 0) if self.platform else (0, "", self.user_id)

    def describe(self) -> str:
        # The account, not its shard: an entry's digest is the same whatever shard it took.
        return self.platform or f"user:{self.user_id}"

    def name(self) -> str:
        return self.describe() if self.shard is None else f"{self.platform}:{self.shard}"


def user_account(user_id: int) -> Account:
    return Account(user_id=int(user_id))


def platform_account(code: PlatformAccount | str, shard: int | None = None) -> Account:
    """A platform account; on `shard` if given, else on the shard `post` picks."""
    if shard is not None and (not is_whole(shard) or shard < 0):
        raise InvalidPosting(f"a shard is a whole number, not negative, not {shard!r}")
    return Account(platform=PlatformAccount(code).value, shard=shard)


@dataclass(frozen=True)
class Leg:
    """One posting asked for: `amount` tokens on `bucket` of `account`."""

    account: Account
    bucket: Bucket
    amount: int


@dataclass(frozen=True)
class PostedEntry:
    """What an operation returns. `replayed` is True when the key had been used already."""

    id: int
    kind: str
    tokens: int
    idempotency_key: str
    replayed: bool = False


def _placed(legs: list[Leg], key: str, reference) -> list[Leg]:
    """The legs with every platform account on a shard (see soma.ledger.shards).

    An account the caller left unplaced goes to the shard the entry's reference (or
    key) hashes to. A debit from a sink must say which shard: any other could hold
    fewer tokens than the account as a whole.
    """
    placed = []
    chosen = None
    for leg in legs:
        account = leg.account
        if account.platform is not None and account.shard is None:
            if leg.amount < 0 and PlatformAccount(account.platform) not in SOURCE_ACCOUNTS:
                raise InvalidPosting(
                    f"a debit from {account.platform} names the shard it takes from"
                )
            if chosen is None:
                chosen = shard_for(shard_key(key, reference), shard_count())
            leg = Leg(Account(platform=account.platform, shard=chosen), leg.bucket, leg.amount)
        placed.append(leg)
    return placed


def _digest(kind: str, tokens: int, legs: list[Leg], reference, closes: int | None) -> str:
    canonical = _canonical(kind, tokens, legs, reference, closes)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(kind: str, tokens: int, legs: list[Leg], reference, closes: int | None) -> str:
    """What an entry's request digest is the SHA-256 of."""
    return json.dumps(
        {
            "kind": kind,
            "tokens": tokens,
            "legs": sorted((leg.account.describe(), leg.bucket, leg.amount) for leg in legs),
            "reference": list(reference) if reference else None,
            "closes": closes,
        },
        sort_keys=True,
    )


def _validate(kind: str, key: str, tokens: int, legs: list[Leg]) -> None:
    EntryKind(kind)
    if not key or len(key) > 200:
        raise InvalidPosting("an entry needs an idempotency key of 1 to 200 characters")
    if not is_whole(tokens) or tokens < 0:
        raise InvalidPosting("an entry's tokens are a whole number, not negative")
    if len(legs) < 2:
        raise InvalidPosting("an entry has two or more postings")
    for leg in legs:
        if not is_whole(leg.amount) or leg.amount == 0:
            raise InvalidPosting("a posting is a whole, non-zero number of tokens")
        Bucket(leg.bucket)
    if sum(leg.amount for leg in legs) != 0:
        raise InvalidPosting("an entry's postings must sum to zero")
    if len({(leg.account, leg.bucket) for leg in legs}) != len(legs):
        raise InvalidPosting("an entry posts once to each bucket of a wallet")


BUCKET_ORDER = (Bucket.AVAILABLE.value, Bucket.LOCKED.value)  # within one wallet's entry


def chain_link(
    previous: str,
    entry_id: int,
    wallet_id: int,
    seq: int,
    bucket: str,
    amount: int,
    available_after: int,
    locked_after: int,
) -> str:
    """The hash of one posting chained to `previous` (see the module's docstring)."""
    fields = (previous, entry_id, wallet_id, seq, bucket, amount, available_after, locked_after)
    return hashlib.sha256("|".join(map(str, fields)).encode()).hexdigest()


def wallet_links(
    head_seq: int, head_hash: str, wallet_id: int, entry_id: int, deltas: dict, after: tuple
) -> list[tuple[int, str]]:
    """The (seq, hash) of each posting an entry makes to one wallet, in BUCKET_ORDER.

    `deltas` maps a bucket to its amount, `after` is (available, locked) once the
    entry applied. What `soma_head` and `soma_prior` (migration 0009) compute in PostgreSQL.
    """
    links = []
    for bucket in BUCKET_ORDER:
        if deltas.get(bucket):
            head_seq += 1
            head_hash = chain_link(
                head_hash, entry_id, wallet_id, head_seq, bucket, deltas[bucket], *after
            )
            links.append((head_seq, head_hash))
    return links


# Every statement is built once, with bound parameters (named `p_...`), so that
# SQLAlchemy's compiled cache and psycopg's prepared statements serve every entry.


def _entry_binds() -> dict:
    """The parameters an entry's INSERT shares with the postings of one statement."""
    return {
        "kind": bindparam("p_kind", type_=String()),
        "tokens": bindparam("p_tokens", type_=BigInteger()),
        "now": bindparam("p_now", type_=UTCDateTime()),
    }


def _entry_insert(dialect_module, binds: dict, only_if=None, given: dict | None = None):
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id of the entry; with `only_if`
    (a condition), INSERT ... SELECT ... WHERE it, so no entry unless it holds.
    `given` holds SQL for columns in place of their parameters (`id` among them: the
    entry's id, else its sequence's next)."""
    columns = _entry_columns(binds, given)
    statement = dialect_module.insert(entries)
    if only_if is None:
        statement = statement.values(**columns)
    else:
        statement = statement.from_select(list(columns), select(*columns.values()).where(only_if))
    return statement.on_conflict_do_nothing().returning(entries.c.id)


def _entry_columns(binds: dict, given: dict | None = None) -> dict:
    """An entry's columns as `_entry_insert` writes them: SQL for each, by name."""
    tokens, now = binds["tokens"], binds["now"]
    columns = dict(
        kind=binds["kind"],
        idempotency_key=bindparam("p_key", type_=String()),
        request_digest=bindparam("p_digest", type_=String()),
        tokens=tokens,
        usd_cents=value_cents_sql(PricingUserType.STUDENT, tokens, now),
        teacher_usd_cents=value_cents_sql(PricingUserType.TEACHER, tokens, now),
        reference_type=bindparam("p_reference_type", type_=String()),
        reference_id=bindparam("p_reference_id", type_=BigInteger()),
        closes_entry_id=bindparam("p_closes_entry_id", type_=BigInteger()),
        memo=bindparam("p_memo", type_=String()),
        actor_id=bindparam("p_actor_id", type_=Integer()),
        created_at=now,
    )
    columns.update(given or {})
    return columns


def _wallet_update(platform: bool, suffix: str = "", chain: tuple | None = None, d_available=None):
    """UPDATE one wallet by its owner, RETURNING its new state; no row if refused.

    The deltas are `p_available<suffix>` and `p_locked<suffix>` (0 for a bucket
    not posted to); the WHERE clause refuses a balance going negative. With
    `chain` (the buckets posted, in BUCKET_ORDER, and the SQL of the entry's id),
    the UPDATE also moves the wallet's chain head past those postings, computed
    from the head it replaces (PostgreSQL); without it the head is left as it is,
    for the caller to move (SQLite). `d_available`, if given, is SQL for that delta
    in place of its parameter.
    """
    if d_available is None:
        d_available = bindparam(f"p_{Bucket.AVAILABLE.value}{suffix}", type_=BigInteger())
    d_locked = bindparam(f"p_{Bucket.LOCKED.value}{suffix}", type_=BigInteger())
    if platform:
        owner = and_(
            wallets.c.code == bindparam(f"p_owner{suffix}", type_=String()),
            wallets.c.shard == bindparam(f"p_shard{suffix}", type_=Integer()),
        )
        available_ok = or_(wallets.c.available + d_available >= 0, wallets.c.is_source)
    else:
        owner = wallets.c.user_id == bindparam(f"p_owner{suffix}", type_=Integer())
        available_ok = wallets.c.available + d_available >= 0
    values = {
        "available": wallets.c.available + d_available,
        "locked": wallets.c.locked + d_locked,
    }
    if chain is not None:
        buckets, entry_id = chain
        # The functions (migration 0009) take the row as it was before this UPDATE.
        links = (literal_column(wallets.name), entry_id, d_available, d_locked)
        values.update(
            head_seq=wallets.c.head_seq + len(buckets),
            head_hash=func.soma_head(*links, type_=String()),
            prior_hash=func.soma_prior(*links, type_=String()),
        )
    return (
        update(wallets)
        .where(owner, and_(available_ok, wallets.c.locked + d_locked >= 0))
        .values(**values)
        .returning(*(wallets.c[name] for name in _WALLET_STATE))
    )


@cache
def _entry_insert_alone(dialect: str):
    return _entry_insert(postgresql if dialect == "postgresql" else sqlite, _entry_binds())


# What a wallet's UPDATE returns: its new state (see `_wallet_update`).
_WALLET_STATE = ("id", "available", "locked", "head_seq", "head_hash", "prior_hash")


@cache
def _wallet_update_alone(platform: bool):
    return _wallet_update(platform)


def _hold_matches():
    """SQL: entry `p_closes_entry_id` is a `p_hold_kind` hold of `p_held` tokens of `p_holder`.

    Postings are append-only, so what this reads cannot change once it is true.
    The hold's locked posting (a hold has one) is looked up by its entry alone,
    and its wallet compared after: a probe that also named the wallet could be
    planned as a walk of the holder's history (the wallet's indexes lead with
    it), which PostgreSQL did with a generic plan made while the tables were
    small, so every settle grew slower with the student's classes.
    """
    closes = bindparam("p_closes_entry_id", type_=BigInteger())
    holder_wallet = (
        select(wallets.c.id)
        .where(wallets.c.user_id == bindparam("p_holder", type_=Integer()))
        .scalar_subquery()
    )
    held_from = (
        select(postings.c.wallet_id)
        .where(
            postings.c.entry_id == closes,
            postings.c.bucket == Bucket.LOCKED.value,
            postings.c.amount == bindparam("p_held", type_=BigInteger()),
        )
        .limit(1)
        .scalar_subquery()
    )
    is_hold = exists().where(
        entries.c.id == closes, entries.c.kind == bindparam("p_hold_kind", type_=String())
    )
    # No such posting is NULL, which must read as false (a refusal), not as unknown.
    return and_(is_hold, func.coalesce(held_from == holder_wallet, false()))


@cache
def _hold_check_alone():
    return select(_hold_matches())


# The SQLSTATE of `soma_refuse_entry` (migration 0004).
REFUSED_SQLSTATE = "SM001"


# The columns of a posting a statement writes, in the order its legs give them.
_POSTING_COLUMNS = [
    "entry_id",
    "wallet_id",
    "bucket",
    "amount",
    "available_after",
    "locked_after",
    "kind",
    "created_at",
    "seq",
    "hash",
]


@cache
def _whole_entry_statement(
    shape: tuple[tuple[bool, tuple[str, ...]], ...], guarded: bool, strict: bool
):
    """PostgreSQL: the entry's INSERT, its wallets' UPDATEs and its postings, in one statement.

    `shape` gives, for each account in lock order, whether it is a platform
    account and the buckets posted to. The statement is a chain of CTEs:

        entry   INSERT the entry ON CONFLICT DO NOTHING
        wallet0 UPDATE the first wallet,  only if `entry` inserted a row
        wallet1 UPDATE the second wallet, only if `wallet0` updated its row
        ...
        written INSERT the postings from `entry` joined with every wallet

    Each UPDATE waits for the one before it (its WHERE reads the previous CTE),
    so the rows are locked in the fixed order, as by separate statements. A
    refused UPDATE returns no row, which stops every later UPDATE and the
    postings. It returns the entry id (NULL on conflict) and the step that
    refused it: NULL if none; when `guarded`, the number of wallets if the hold
    the entry closes is not what the caller said (see `_hold_matches`); else the
    index of the first wallet not updated.

    When `strict`, a refusal is raised instead: the statement passes the step
    to `soma_refuse_entry` (migration 0004), which fails the whole statement
    unless the step is NULL. That is what lets the entry run in autocommit.
    """
    binds = _entry_binds()
    entry = _entry_insert(postgresql, binds).cte("entry")
    previous, updated = entry, []
    for i, (platform, buckets) in enumerate(shape):
        # entry.id makes it UPDATE ... FROM entry: no row to update without an entry.
        statement = _wallet_update(platform, str(i), (buckets, entry.c.id))
        statement = statement.where(exists().select_from(previous))
        previous = statement.cte(f"wallet{i}")
        updated.append(previous)
    every_row = entry
    for wallet in updated:
        every_row = every_row.join(wallet, true())
    # The wallet's UPDATE returned its new head: its last posting here is the head,
    # and the one before (of two) is the prior link.
    legs = [
        select(
            entry.c.id,
            wallet.c.id,
            literal(bucket, String()),
            bindparam(f"p_{bucket}{i}", type_=BigInteger()),
            wallet.c.available,
            wallet.c.locked,
            binds["kind"],
            binds["now"],
            wallet.c.head_seq - (len(buckets) - n) if n < len(buckets) else wallet.c.head_seq,
            wallet.c.head_hash if n == len(buckets) else wallet.c.prior_hash,
        ).select_from(every_row)
        for i, (wallet, (_, buckets)) in enumerate(zip(updated, shape, strict=True))
        for n, bucket in enumerate(buckets, start=1)
    ]
    written = (
        insert(postings)
        .from_select(_POSTING_COLUMNS, union_all(*legs))
        .returning(postings.c.id)
        .cte("written")
    )
    # Step i is wallet i; step len(shape) is the hold, checked first: a caller
    # wrong about the hold is told so, whatever the wallets would have said.
    checks = [(step, exists().select_from(wallet)) for step, wallet in enumerate(updated)]
    if guarded:
        checks.insert(0, (len(updated), _hold_matches()))
    no_entry = [(~exists().select_from(entry), null())]
    refused_at = case(*no_entry, *((~check, step) for step, check in checks))
    if strict:
        refused_at = func.soma_refuse_entry(refused_at, type_=Integer())
    statement = select(
        select(entry.c.id).scalar_subquery(),
        refused_at,
        select(func.count()).select_from(written).scalar_subquery(),
    )
    return statement


def post(
    kind: str,
    key: str,
    legs: list[Leg],
    *,
    tokens: int,
    reference: tuple[str, int] | None = None,
    memo: str = "",
    actor_id: int | None = None,
    closes_entry_id: int | None = None,
    hold_check: tuple[int, int, str] | None = None,
    now: datetime | None = None,
    own_transaction: bool = False,
) -> PostedEntry:
    """Write one balanced entry in the current transaction; repeat-safe by `key`.

    `hold_check` (holder's user id, tokens held, kind of hold) makes the entry verify, in the
    same statement, that `closes_entry_id` is that hold; InvalidPosting if not.

    With `own_transaction`, the entry is written and committed in a transaction of
    its own on a connection of its own, whatever the session is doing, and is
    durable when this returns (one round trip on PostgreSQL). Use it for an entry
    that is a whole money operation; never for one that must commit or roll back
    together with other writes. On SQLite it waits for any write the session holds.

    Raises InsufficientTokens when a wallet would go negative, IdempotencyConflict
    when `key` was used with other content, AlreadySettled when the hold named by
    `closes_entry_id` is already closed. On any of them nothing was written; in
    the session's transaction, the caller must roll back.
    """
    values, accounts = _entry_values(
        kind, key, legs, tokens, reference, memo, actor_id, closes_entry_id, hold_check, now
    )
    digest = values["p_digest"]
    if own_transaction:
        session = db.session()
        if session.in_transaction() and _session_has_written(session.connection()):
            # The entry would wait for the session's row locks, which the session
            # releases only after this returns: it would wait forever.
            raise InvalidPosting(
                "an entry of its own cannot be posted while the session's transaction "
                "holds writes: commit them first, or post the entry in that transaction"
            )
        entry_id = _post_alone(values, accounts)
        if entry_id is None:
            with db.engine.connect() as connection:
                return _replay(connection, key, digest, closes_entry_id)
        return PostedEntry(entry_id, kind, tokens, key)
    connection = db.session.connection()
    try:
        if connection.dialect.name == "postgresql":
            entry_id = _post_in_one_statement(connection, values, accounts)
        else:
            entry_id = _post_step_by_step(connection, values, accounts)
    except LedgerError:
        # The entry and some wallets may already be written when a later wallet
        # refuses. Dropping the connection rolls all of it back in the database,
        # and the session refuses any further work until the caller rolls back,
        # so half an entry can never be committed.
        connection.invalidate()
        raise
    if entry_id is None:
        return _replay(connection, key, digest, closes_entry_id)
    return PostedEntry(entry_id, kind, tokens, key)


def _entry_values(
    kind, key, legs, tokens, reference, memo, actor_id, closes_entry_id, hold_check, now
) -> tuple[dict, list]:
    """An entry checked: its statement's values, and its accounts in lock order with
    their deltas."""
    _validate(kind, key, tokens, legs)
    if now is not None and now.tzinfo is None:
        raise InvalidPosting("an entry's time is an aware datetime, not a naive one")
    if hold_check is not None and closes_entry_id is None:
        raise InvalidPosting("a hold check needs the hold the entry closes")
    now = (now or utcnow()).astimezone(UTC)
    # The digest is of the legs as asked for: where a shard was left to the entry,
    # a replay matches however many shards there are by then.
    digest = _digest(kind, tokens, legs, reference, closes_entry_id)
    legs = _placed(legs, key, reference)
    accounts = sorted(_deltas_by_account(legs).items(), key=lambda item: item[0].sort_key)
    values = {
        "p_kind": kind,
        "p_key": key,
        "p_digest": digest,
        "p_tokens": tokens,
        "p_reference_type": reference[0] if reference else None,
        "p_reference_id": reference[1] if reference else None,
        "p_closes_entry_id": closes_entry_id,
        "p_memo": memo[:500],
        "p_actor_id": actor_id,
        "p_now": now,
    }
    if hold_check is not None:
        values["p_holder"], values["p_held"], values["p_hold_kind"] = hold_check
    return values, accounts


@dataclass(frozen=True)
class Guard:
    """Writes to other tables made in a row credit's own statement, around it (PostgreSQL).

    `build(*shape)` returns a CTE that must return a row for the credits to be
    written (a compare-and-set of the row they are for, say); a tuple of CTEs that
    write from that row (its history, say); the credits' facts, SQL over that row
    (see `post_row_credits`); and columns the statement returns too. The statement is
    built once per (build, shape), so `shape` names all that changes its SQL. The
    guard's parameters are named `p_g_...` and their values are in `values`.
    """

    build: Callable[..., tuple]
    shape: tuple
    values: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class RowCredit:
    """One credit of `post_row_credits`: its entry's kind and key, and the platform
    source account it is taken from."""

    kind: str
    key: str
    source: PlatformAccount


@dataclass(frozen=True)
class Guarded:
    """What `post_row_credits` wrote: each credit's entry id (None for one not written),
    and the guard's columns as the statement returned them (None if its row was not
    found)."""

    entries: list
    shown: tuple | None


def post_row_credits(
    guard: Guard, credits: tuple[RowCredit, RowCredit], reference: tuple[str, int], now: datetime
) -> Guarded:
    """Credit one user twice (the second of 0: once), of amounts the statement itself
    reads from the row its guard returns: one statement in autocommit, one round trip
    (PostgreSQL).

    `guard.build(*guard.shape)` returns its CTE of one row or none, the CTEs written
    from it, its facts and the columns to show (see `Guard`). The facts are SQL over
    that row: `user_id` (the user credited), and for each credit `tokens` (how many;
    for the second, 0 is no entry), `memo` and optionally `entry_id` (the entry's id,
    taken by the guard from the entries' sequence so the row can name its entry in the
    same statement). So the caller need not read the row first: its facts go from the
    row to the entries, their postings, the wallets and the digests (the same digest
    `post` computes for the same credit, see `credit_digest_sql`) inside the statement.
    The entries are written only if the guard's row exists, and then they must be: a
    key used before refuses the whole (IdempotencyConflict). The user's wallet is
    updated once, its chain moved past both postings.
    """
    if db.engine.dialect.name != "postgresql":
        raise InvalidPosting("a row credit is one statement: PostgreSQL only")
    session = db.session()
    if session.in_transaction() and _session_has_written(session.connection()):
        raise InvalidPosting("commit the session's writes before a row credit")
    first, second = credits
    shape = tuple((credit.kind, PlatformAccount(credit.source)) for credit in credits)
    sql = _row_credits_sql(guard.build, guard.shape, reference[0], shape)
    values = _row_credits_values(guard, credits, reference, now)
    try:
        row = autocommit_row(sql, values, keep=lambda e: e.sqlstate == REFUSED_SQLSTATE)
    except psycopg.Error as error:  # only a refusal is kept raw
        step = int(error.diag.message_detail)
        if step == _KEY_USED:
            raise IdempotencyConflict(f"{first.key} or {second.key}") from None
        # Refused only for a wallet that does not exist (step 0 the user's, 1 and 2
        # the sources' shards).
        named = "the user credited" if step == 0 else f"a shard of {credits[step - 1].source}"
        raise InvalidPosting(f"no wallet for {named} by {first.key}") from None
    if row is None:  # the guard's row was not found: nothing was written
        return Guarded([None, None], None)
    _, after, *_ = guard.build(*guard.shape)
    # (The first column of each row the guard's CTEs wrote, returned so the statement
    # names, and so writes, them; then the ids, the refusal and the postings' count.)
    return Guarded(list(row[len(after) : len(after) + 2]), tuple(row[len(after) + 4 :]))


def _row_credits_values(guard: Guard, credits, reference: tuple[str, int], now) -> dict:
    """The values of `post_row_credits`'s statement."""
    shards = shard_count()
    values = {**guard.values, "p_reference_id": reference[1], "p_now": now.astimezone(UTC)}
    for i, credit in enumerate(credits):
        values[f"p_key{i}"] = credit.key
        values[f"p_owner{i + 1}"] = PlatformAccount(credit.source).value
        values[f"p_shard{i + 1}"] = shard_for(shard_key(credit.key, reference), shards)
        values[f"p_locked{i + 1}"] = 0
    return values


# The entries' id sequence (its default), for an id a statement takes before its INSERT.
ENTRY_SEQUENCE = f"{entries.name}_id_seq"

# The step a used key refuses at: after the user's wallet and the two sources' shards.
_KEY_USED = 3


@cache
def _row_credits_sql(build, shape, reference_type: str, credits: tuple) -> str:
    """The driver SQL of `post_row_credits` for a guard and the (kind, source) of each credit.

        <guard>   the guard's CTEs: its row, and what it writes from it
        rates     the student's and teacher's rates in force (each entry's values)
        made      INSERT both entries (if the guard's row exists), the second only if
                  its amount is not 0
        entry0    the first's id, if it was written (its key not used before)
        entry1    the second's, likewise
        credited  one row: the user, each entry's id and amount (none: NULL and 0)
        wallet0   UPDATE the user's wallet once, its chain past one posting or two
        wallet1   UPDATE the first source's shard (after wallet0: lock order)
        wallet2   UPDATE the second source's shard (after wallet1), if its entry is
        written   INSERT the postings, the user's in its chain's order

    It returns, if the guard's row was found (else no row), the first column of each
    guard CTE's row, each entry's id, the refused step (raised by `soma_refuse_entry`:
    0 to 2 a wallet not found, `_KEY_USED` a key used before), how many postings were
    written and the guard's columns to show. PostgreSQL runs each CTE when the returned
    columns first read it, in their order: so the guard's writes (a history row, a
    notification, its email) come before the entries, and the sources' shards, which
    every credit shares, are locked as late as they can be, for less of the statement
    (with 8 workers: 1.18 ms of server CPU per purchase against 1.28, and 0.50 to 0.51
    of transfers against 0.46 to 0.49).
    """
    moved, after, facts, shown = build(*shape)
    user_id = facts["user_id"]
    now = bindparam("p_now", type_=UTCDateTime())
    # The rates in force, read once for both entries (each reads them otherwise).
    rates = select(
        rate_in_force_sql(PricingUserType.STUDENT, now).label("k_student"),
        rate_in_force_sql(PricingUserType.TEACHER, now).label("k_teacher"),
    ).cte("rates")
    rows = []
    for i, ((kind, source), credit) in enumerate(zip(credits, facts["credits"], strict=True)):
        tokens = credit["tokens"]
        given = {
            "usd_cents": cents_at_rate(tokens, rates.c.k_student[1], rates.c.k_student[2]),
            "teacher_usd_cents": cents_at_rate(tokens, rates.c.k_teacher[1], rates.c.k_teacher[2]),
            "idempotency_key": bindparam(f"p_key{i}", type_=String()),
            "request_digest": credit_digest_sql(kind, source, user_id, tokens, reference_type),
            "reference_type": literal(reference_type, String()),
            # (Typed: a NULL in a UNION is text unless told.)
            "closes_entry_id": literal_column("NULL::bigint"),
            "memo": func.left(credit["memo"], 500),
            "actor_id": literal_column("NULL::integer"),
            # The first's id may be taken by the guard; else the sequence's next, as
            # the column's default would (so the second's is above the first's).
            "id": credit.get("entry_id", func.nextval(literal(ENTRY_SEQUENCE, String()))),
        }
        binds = {"kind": literal(kind, String()), "tokens": tokens, "now": now}
        columns = _entry_columns(binds, given)
        # The first if the guard's row exists; the second too if its amount is not 0.
        rows.append(select(*columns.values()).where(tokens > 0 if i else true()))
    # Both entries in one INSERT (one node for the executor to set up, not two), the
    # first written first; the statement reads FROM the guard's row (each row's facts
    # are its columns), so it writes none without it. A key used before writes no row
    # of its own, and the statement is then refused (`refused_at`), whatever was written.
    made = (
        postgresql.insert(entries)
        .from_select(list(columns), union_all(*rows))
        .on_conflict_do_nothing()
        .returning(entries.c.id, entries.c.idempotency_key)
        .cte("made")
    )
    entry0, entry1 = (
        select(made.c.id)
        .where(made.c.idempotency_key == bindparam(f"p_key{i}", type_=String()))
        .cte(f"entry{i}")
        for i in range(2)
    )
    (kind0, _), (kind1, _) = credits
    tokens0, tokens1 = (credit["tokens"] for credit in facts["credits"])

    # The credit's facts as columns of one row, which the statement's parts read FROM it:
    # not sub-selects, since the wallets' UPDATEs pass them to soma_link and soma_head,
    # which PostgreSQL inlines only for arguments without one (else each is a call of a
    # SQL function, planned on every run).
    credited = (
        select(
            user_id.label("k_user"),
            entry0.c.id.label("k_id0"),
            tokens0.label("k_t0"),
            entry1.c.id.label("k_id1"),
            case((entry1.c.id.is_(None), 0), else_=tokens1).label("k_t1"),
        )
        .select_from(moved.join(entry0, true()).outerjoin(entry1, true()))
        .cte("credited")
    )
    c, w = credited.c, wallets
    available = Bucket.AVAILABLE.value

    def link(previous, entry_id, seq, amount, available_after):
        return func.soma_link(
            previous, entry_id, w.c.id, seq, literal(available, String()), amount,
            available_after, w.c.locked, type_=String(),
        )  # fmt: skip

    # The user's wallet, once: available chains the first posting, then the second if any.
    two = c.k_id1.is_not(None)
    total = w.c.available + c.k_t0 + c.k_t1
    first_link = link(w.c.head_hash, c.k_id0, w.c.head_seq + 1, c.k_t0, w.c.available + c.k_t0)
    second_link = link(first_link, c.k_id1, w.c.head_seq + 2, c.k_t1, total)
    wallet0 = (
        update(w)
        .where(w.c.user_id == c.k_user)
        .values(
            available=total,
            head_seq=w.c.head_seq + 1 + case((two, 1), else_=0),
            head_hash=case((two, second_link), else_=first_link),
            prior_hash=case((two, first_link), else_=w.c.head_hash),
        )
        .returning(*(w.c[name] for name in _WALLET_STATE))
        .cte("wallet0")
    )
    # Each source's shard, after the wallet before it (lock order); the second only if
    # its entry was written (UPDATE ... FROM entry1).
    source0 = (
        _wallet_update(True, "1", ((available,), entry0.c.id), -c.k_t0)
        .where(exists().select_from(wallet0))
        .cte("wallet1")
    )
    source1 = (
        _wallet_update(True, "2", ((available,), entry1.c.id), -c.k_t1)
        .where(exists().select_from(source0))
        .cte("wallet2")
    )

    def leg(entry_id, wallet, amount, available_after, kind, seq, chained):
        # (A refused wallet fails the whole statement, so a leg need not wait for the rest.)
        return select(
            entry_id, wallet.c.id, literal(available, String()), amount, available_after,
            wallet.c.locked, literal(kind, String()), now, seq, chained,
        ).select_from(credited.join(wallet, true()))  # fmt: skip

    legs = [
        # The user's first posting is the link before its head when the second was written.
        leg(c.k_id0, wallet0, c.k_t0, wallet0.c.available - c.k_t1, kind0,
            wallet0.c.head_seq - case((two, 1), else_=0),
            case((two, wallet0.c.prior_hash), else_=wallet0.c.head_hash)),
        leg(c.k_id0, source0, -c.k_t0, source0.c.available, kind0, source0.c.head_seq,
            source0.c.head_hash),
        leg(c.k_id1, wallet0, c.k_t1, wallet0.c.available, kind1, wallet0.c.head_seq,
            wallet0.c.head_hash).where(two),
        leg(c.k_id1, source1, -c.k_t1, source1.c.available, kind1, source1.c.head_seq,
            source1.c.head_hash),
    ]  # fmt: skip
    written = (
        insert(postings)
        .from_select(_POSTING_COLUMNS, union_all(*legs))
        .returning(postings.c.id)
        .cte("written")
    )
    # (The statement reads FROM the guard's row: these run only when it was found.)
    refused_at = case(
        (~exists().select_from(entry0), _KEY_USED),
        (and_(tokens1 > 0, ~exists().select_from(entry1)), _KEY_USED),
        (~exists().select_from(wallet0), 0),
        (~exists().select_from(source0), 1),
        (and_(exists().select_from(entry1), ~exists().select_from(source1)), 2),
    )
    statement = select(
        *(select(next(iter(cte.c))).scalar_subquery() for cte in after),
        select(entry0.c.id).scalar_subquery(),
        select(entry1.c.id).scalar_subquery(),
        func.soma_refuse_entry(refused_at, type_=Integer()),
        select(func.count()).select_from(written).scalar_subquery(),
        *shown,
    ).select_from(moved)  # (no row if the guard's row was not found: nothing written)
    return _driver_sql(statement)


# Stand-ins for a credit's numbers in its canonical text (see `credit_digest_sql`).
_STAND_INS = {"tokens": 987654321987654321, "user": 987654321987654322, "ref": 987654321987654323}


def credit_digest_sql(kind: str, source, user_id, tokens, reference_type: str):
    """SQL: the request digest `post` computes for a credit of `tokens` to user `user_id`
    from `source`, referring to (`reference_type`, the `p_reference_id` parameter).

    The canonical text is `post`'s own, made with stand-in numbers and each stand-in
    then replaced by its SQL, so the two cannot drift apart."""
    source = PlatformAccount(source)
    if not source.value < "user:":  # the legs' sort order, fixed into the text
        raise InvalidPosting(f"cannot digest a credit from {source.value} in SQL")
    fake = _STAND_INS
    legs = [
        Leg(platform_account(source), Bucket.AVAILABLE, -fake["tokens"]),
        Leg(user_account(fake["user"]), Bucket.AVAILABLE, fake["tokens"]),
    ]
    text = _canonical(kind, fake["tokens"], legs, (reference_type, fake["ref"]), None)
    by_number = {
        str(fake["tokens"]): tokens,
        str(fake["user"]): user_id,
        str(fake["ref"]): bindparam("p_reference_id", type_=BigInteger()),
    }
    parts = re.split("(" + "|".join(by_number) + ")", text)
    # concat() writes each number in decimal, as Python does (no CAST: see _ALIAS).
    pieces = [by_number.get(part, literal(part, String())) for part in parts if part]
    return func.encode(func.sha256(func.convert_to(func.concat(*pieces), "UTF8")), "hex")


@cache
def _whole_entry_sql(shape: tuple, guarded: bool, strict: bool = False) -> str:
    """The statement's SQL text for the driver, its constants written in.

    Compiled once per shape: running the text skips SQLAlchemy's per-execution
    cache-key walk of a large statement, the ledger's hottest path.
    """
    return _driver_sql(_whole_entry_statement(shape, guarded, strict))


def _driver_sql(statement) -> str:
    """A ledger statement's SQL text for the driver (PostgreSQL), its constants written in."""
    dialect = PGDialect_psycopg()
    compiled = statement.compile(dialect=dialect)
    ours = {name: None for name in compiled.binds if name.startswith("p_")}
    # One line: the driver caches its parsing of statements up to 4 kB only.
    # Column aliases are dropped too: the INSERT and the result read columns by
    # position. (Before the constants are written in: they may hold spaces.)
    sql = " ".join(str(compiled).split())
    sql = _ALIAS.sub("", sql).replace(", ", ",")
    # The statement's own constants (0, 'locked', the pricing user types, the
    # words of a memo) are written into the text, so the driver adapts only each
    # entry's values.
    # In one pass, so a constant's own text is never searched for another's mark. The
    # dialect's literal processor already doubles a `%` for the driver's paramstyle.
    constants = {}
    for name, value in compiled.construct_params(ours).items():
        if name in ours:
            continue
        render = compiled.binds[name].type.literal_processor(dialect)
        if render is None:
            raise InvalidPosting(f"cannot write the constant {name} into the statement")
        constants[name] = render(value)

    def constant(mark: re.Match) -> str:
        return constants.get(mark.group(1), mark.group(0))

    return _MARK.sub(constant, sql)


# (Not a `k_` alias: a statement's own name for a CTE's column, which it reads by name.)
_ALIAS = re.compile(r" AS (?!k_)\w+(?=[,) ]|$)")
_MARK = re.compile(r"%\((\w+)\)s")


def _one_statement(values: dict, accounts, strict: bool) -> str:
    """The entry's statement for PostgreSQL; adds each wallet's values to `values`."""
    shape = tuple((account.platform is not None, tuple(deltas)) for account, deltas in accounts)
    for i, (account, deltas) in enumerate(accounts):
        values[f"p_owner{i}"] = account.platform or account.user_id
        if account.platform:
            values[f"p_shard{i}"] = account.shard
        values[f"p_available{i}"] = deltas.get(Bucket.AVAILABLE, 0)
        values[f"p_locked{i}"] = deltas.get(Bucket.LOCKED, 0)
    return _whole_entry_sql(shape, "p_held" in values, strict)


def _post_in_one_statement(connection, values: dict, accounts) -> int | None:
    """Steps 1 to 3 in one round trip (PostgreSQL); return the entry id, None on conflict."""
    sql = _one_statement(values, accounts, strict=False)
    entry_id, refused_at, _ = connection.exec_driver_sql(sql, values).one()
    if refused_at is not None:
        _refused_at(connection, refused_at, values, accounts)
    return entry_id


def _refused_at(connection, step: int, values: dict, accounts) -> NoReturn:
    """Raise for the entry's first failed check: a wallet's UPDATE, or the hold after them."""
    if step == len(accounts):
        _wrong_hold(values)
    _refuse(connection, *accounts[step])


def _post_alone(values: dict, accounts) -> int | None:
    """Write and commit the entry in a transaction of its own; the entry id, None on conflict."""
    if db.engine.dialect.name != "postgresql":
        with db.engine.begin() as connection:
            return _post_step_by_step(connection, values, accounts)
    sql = _one_statement(values, accounts, strict=True)
    try:
        return _autocommit_row(sql, values)[0]
    except _Refused as refused:
        with db.engine.connect() as connection:
            _refused_at(connection, refused.step, values, accounts)


class _Refused(Exception):
    def __init__(self, step: int):
        self.step = step


def _autocommit_row(sql: str, values: dict) -> tuple:
    """The entry's statement in autocommit (see soma.fastread); SM001 becomes _Refused."""
    try:
        return autocommit_row(sql, values, keep=lambda e: e.sqlstate == REFUSED_SQLSTATE)
    except psycopg.Error as error:  # only the refusal is kept raw
        raise _Refused(int(error.diag.message_detail)) from None


def _session_has_written(connection) -> bool:
    """Whether the session's open transaction holds writes (so row locks) of its own."""
    if connection.dialect.name == "postgresql":
        return connection.exec_driver_sql(
            "SELECT pg_current_xact_id_if_assigned() IS NOT NULL"
        ).scalar()
    return connection.connection.dbapi_connection.in_transaction  # SQLite: a write began it


def _wrong_hold(values: dict) -> NoReturn:
    raise InvalidPosting(
        f"entry {values['p_closes_entry_id']} is not a {values['p_hold_kind']} of "
        f"{values['p_held']} tokens by user {values['p_holder']}"
    )


def _post_step_by_step(connection, values: dict, accounts) -> int | None:
    """Steps 1 to 3 as separate statements (SQLite); return the entry id, None on conflict."""
    if "p_held" in values and not connection.execute(_hold_check_alone(), values).scalar():
        _wrong_hold(values)
    entry_id = connection.execute(_entry_insert_alone(connection.dialect.name), values).scalar()
    if entry_id is None:
        return None
    rows = []
    for account, deltas in accounts:
        wallet = _apply(connection, account, deltas)
        # SQLite has one writer at a time: the head read with the UPDATE stays ours.
        after = (wallet.available, wallet.locked)
        links = wallet_links(wallet.head_seq, wallet.head_hash, wallet.id, entry_id, deltas, after)
        prior = links[-2][1] if len(links) > 1 else wallet.head_hash
        for (bucket, amount), (seq, link) in zip(deltas.items(), links, strict=True):
            rows.append(
                {
                    "entry_id": entry_id,
                    "wallet_id": wallet.id,
                    "bucket": bucket,
                    "amount": amount,
                    "available_after": wallet.available,
                    "locked_after": wallet.locked,
                    "kind": values["p_kind"],
                    "created_at": values["p_now"],
                    "seq": seq,
                    "hash": link,
                }
            )
        seq, head = links[-1]
        connection.execute(
            _HEAD_UPDATE, {"p_wallet": wallet.id, "p_seq": seq, "p_head": head, "p_prior": prior}
        )
    connection.execute(insert(postings), rows)
    return entry_id


_HEAD_UPDATE = (
    update(wallets)
    .where(wallets.c.id == bindparam("p_wallet"))
    .values(
        head_seq=bindparam("p_seq"),
        head_hash=bindparam("p_head"),
        prior_hash=bindparam("p_prior"),
    )
)


def _deltas_by_account(legs: list[Leg]) -> dict[Account, dict[str, int]]:
    """Each account's deltas by bucket, in BUCKET_ORDER: the order its postings chain in."""
    deltas: dict[Account, dict[str, int]] = {}
    for leg in legs:
        deltas.setdefault(leg.account, {})[Bucket(leg.bucket).value] = leg.amount
    return {
        account: {bucket: by_bucket[bucket] for bucket in BUCKET_ORDER if bucket in by_bucket}
        for account, by_bucket in deltas.items()
    }


def _apply(connection, account: Account, deltas: dict[str, int]):
    """Add `deltas` to the wallet unless a balance would go negative; return its new row.

    The row's chain head is the one before this entry: this UPDATE leaves it alone.
    """
    row = connection.execute(
        _wallet_update_alone(account.platform is not None),
        {
            "p_owner": account.platform or account.user_id,
            "p_shard": account.shard,
            "p_available": deltas.get(Bucket.AVAILABLE, 0),
            "p_locked": deltas.get(Bucket.LOCKED, 0),
        },
    ).first()
    if row is None:
        _refuse(connection, account, deltas)
    return row


@cache
def _balances_query(platform: bool):
    """The wallet's balances, read to explain a refused UPDATE."""
    if platform:
        owner = and_(
            wallets.c.code == bindparam("p_owner"), wallets.c.shard == bindparam("p_shard")
        )
    else:
        owner = wallets.c.user_id == bindparam("p_owner")
    return select(wallets.c.available, wallets.c.locked).where(owner)


def _refuse(connection, account: Account, deltas: dict[str, int]) -> NoReturn:
    """Raise why the wallet's UPDATE matched no row: no such wallet, or a bucket too low.

    The bucket at fault is one the entry takes from. The balances are read again
    only to say how much there is; another transaction may have changed them
    since the UPDATE was refused, so they never decide which bucket it was.
    """
    d_available = deltas.get(Bucket.AVAILABLE, 0)
    d_locked = deltas.get(Bucket.LOCKED, 0)
    current = connection.execute(
        _balances_query(account.platform is not None),
        {"p_owner": account.platform or account.user_id, "p_shard": account.shard},
    ).first()
    if current is None:
        raise InvalidPosting(f"no wallet for {account.name()}")
    locked_at_fault = d_locked < 0 and (d_available >= 0 or current.locked + d_locked < 0)
    if locked_at_fault:
        raise InsufficientTokens(needed=-d_locked, available=current.locked)
    raise InsufficientTokens(needed=-d_available, available=current.available)


_REPLAY = select(entries.c.id, entries.c.kind, entries.c.tokens, entries.c.request_digest).where(
    entries.c.idempotency_key == bindparam("p_key")
)


def _replay(connection, key: str, digest: str, closes_entry_id: int | None) -> PostedEntry:
    existing = connection.execute(_REPLAY, {"p_key": key}).first()
    if existing is None:
        if closes_entry_id is not None:
            raise AlreadySettled(closes_entry_id)
        raise InvalidPosting("the entry conflicts with another but its key is unused")
    if existing.request_digest != digest:
        raise IdempotencyConflict(key)
    return PostedEntry(existing.id, existing.kind, existing.tokens, key, replayed=True)


def open_wallet(user_id: int) -> None:
    """Create the empty wallet of a new user, in the current transaction."""
    db.session.execute(insert(wallets).values(user_id=user_id, created_at=utcnow()))


@contextmanager
def atomic() -> Iterator[None]:
    """Commit the money operation inside on success; roll all of it back on any error."""
    try:
        yield
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise


__all__ = [
    "Account",
    "Guard",
    "Guarded",
    "Leg",
    "PostedEntry",
    "RowCredit",
    "atomic",
    "chain_link",
    "credit_digest_sql",
    "open_wallet",
    "platform_account",
    "post",
    "post_row_credits",
    "user_account",
]
