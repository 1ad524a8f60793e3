"""The one place that writes journal entries, postings and wallet balances.

An entry is written in the caller's transaction, in this order:

1. INSERT the entry, ON CONFLICT DO NOTHING. A conflict means the idempotency
   key was used before (return that entry, or refuse different content), or
   that the hold it closes is already closed (AlreadySettled).
2. One conditional UPDATE per wallet, in a fixed order (platform accounts by
   code, then users by id) so that concurrent entries never deadlock. The
   WHERE clause refuses an overdraft; the CHECK constraints are the backstop.
3. INSERT the postings, with the balances the UPDATEs returned.

Nothing here commits: the caller commits the whole money operation at once,
or rolls it all back (see `atomic`).
"""

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, insert, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from soma.extensions import db
from soma.ledger.errors import (
    AlreadySettled,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidPosting,
)
from soma.ledger.pricing import pricing_in_force_query
from soma.models import (
    Bucket,
    EntryKind,
    JournalEntry,
    PlatformAccount,
    Posting,
    PricingUserType,
    Wallet,
    utcnow,
)

entries = JournalEntry.__table__
postings = Posting.__table__
wallets = Wallet.__table__


@dataclass(frozen=True, order=True)
class Account:
    """A wallet named the one way it is always named: a platform code or a user id."""

    platform: str | None = None
    user_id: int | None = None

    @property
    def sort_key(self) -> tuple:
        return (0, self.platform, 0) if self.platform else (1, "", self.user_id)

    def describe(self) -> str:
        return self.platform or f"user:{self.user_id}"


def user_account(user_id: int) -> Account:
    return Account(user_id=int(user_id))


def platform_account(code: PlatformAccount | str) -> Account:
    return Account(platform=PlatformAccount(code).value)


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _digest(kind: str, tokens: int, legs: list[Leg], reference, closes: int | None) -> str:
    canonical = json.dumps(
        {
            "kind": kind,
            "tokens": tokens,
            "legs": sorted((leg.account.describe(), leg.bucket, leg.amount) for leg in legs),
            "reference": list(reference) if reference else None,
            "closes": closes,
        },
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _validate(kind: str, key: str, tokens: int, legs: list[Leg]) -> None:
    EntryKind(kind)
    if not key or len(key) > 200:
        raise InvalidPosting("an entry needs an idempotency key of 1 to 200 characters")
    if not _is_int(tokens) or tokens < 0:
        raise InvalidPosting("an entry's tokens are a whole number, not negative")
    if len(legs) < 2:
        raise InvalidPosting("an entry has two or more postings")
    for leg in legs:
        if not _is_int(leg.amount) or leg.amount == 0:
            raise InvalidPosting("a posting is a whole, non-zero number of tokens")
        Bucket(leg.bucket)
    if sum(leg.amount for leg in legs) != 0:
        raise InvalidPosting("an entry's postings must sum to zero")
    if len({(leg.account, leg.bucket) for leg in legs}) != len(legs):
        raise InvalidPosting("an entry posts once to each bucket of a wallet")


def _value_cents(user_type: str, tokens: int, at: datetime):
    """SQL for the value of `tokens` at the rate in force at `at`, rounded half up."""
    pricing = pricing_in_force_query(user_type, at).subquery()
    return (
        select(
            (literal(tokens) * pricing.c.usd_cents * 2 + pricing.c.tokens) // (pricing.c.tokens * 2)
        )
        .select_from(pricing)
        .scalar_subquery()
    )


def _insert_ignoring_conflicts(table):
    dialect = db.session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()


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
    now: datetime | None = None,
) -> PostedEntry:
    """Write one balanced entry in the current transaction; repeat-safe by `key`.

    Raises InsufficientTokens when a wallet would go negative, IdempotencyConflict
    when `key` was used with other content, AlreadySettled when the hold named by
    `closes_entry_id` is already closed. On any of them the caller must roll back.
    """
    _validate(kind, key, tokens, legs)
    now = now or utcnow()
    digest = _digest(kind, tokens, legs, reference, closes_entry_id)

    entry_id = db.session.execute(
        _insert_ignoring_conflicts(entries)
        .values(
            kind=kind,
            idempotency_key=key,
            request_digest=digest,
            tokens=tokens,
            usd_cents=_value_cents(PricingUserType.STUDENT, tokens, now),
            teacher_usd_cents=_value_cents(PricingUserType.TEACHER, tokens, now),
            reference_type=reference[0] if reference else None,
            reference_id=reference[1] if reference else None,
            closes_entry_id=closes_entry_id,
            memo=memo[:500],
            actor_id=actor_id,
            created_at=now,
        )
        .returning(entries.c.id)
    ).scalar()
    if entry_id is None:
        return _replay(key, digest, closes_entry_id)

    rows = []
    for account, deltas in sorted(_deltas_by_account(legs).items(), key=lambda i: i[0].sort_key):
        wallet_id, available, locked = _apply(account, deltas)
        for bucket, amount in deltas.items():
            rows.append(
                {
                    "entry_id": entry_id,
                    "wallet_id": wallet_id,
                    "bucket": bucket,
                    "amount": amount,
                    "available_after": available,
                    "locked_after": locked,
                    "kind": kind,
                    "created_at": now,
                }
            )
    db.session.execute(insert(postings), rows)
    return PostedEntry(entry_id, kind, tokens, key)


def _deltas_by_account(legs: list[Leg]) -> dict[Account, dict[str, int]]:
    deltas: dict[Account, dict[str, int]] = {}
    for leg in legs:
        deltas.setdefault(leg.account, {})[Bucket(leg.bucket).value] = leg.amount
    return deltas


def _apply(account: Account, deltas: dict[str, int]) -> tuple[int, int, int]:
    """Add `deltas` to the wallet unless a balance would go negative; return its new state."""
    d_available = deltas.get(Bucket.AVAILABLE, 0)
    d_locked = deltas.get(Bucket.LOCKED, 0)
    if account.platform:
        owner = wallets.c.code == account.platform
        available_ok = or_(wallets.c.available + d_available >= 0, wallets.c.is_source)
    else:
        owner = wallets.c.user_id == account.user_id
        available_ok = wallets.c.available + d_available >= 0
    row = db.session.execute(
        update(wallets)
        .where(owner, and_(available_ok, wallets.c.locked + d_locked >= 0))
        .values(
            available=wallets.c.available + d_available,
            locked=wallets.c.locked + d_locked,
        )
        .returning(wallets.c.id, wallets.c.available, wallets.c.locked)
    ).first()
    if row is not None:
        return row.id, row.available, row.locked

    current = db.session.execute(select(wallets.c.available, wallets.c.locked).where(owner)).first()
    if current is None:
        raise InvalidPosting(f"no wallet for {account.describe()}")
    if current.available + d_available < 0:
        raise InsufficientTokens(needed=-d_available, available=current.available)
    raise InsufficientTokens(needed=-d_locked, available=current.locked)


def _replay(key: str, digest: str, closes_entry_id: int | None) -> PostedEntry:
    existing = db.session.execute(
        select(entries.c.id, entries.c.kind, entries.c.tokens, entries.c.request_digest).where(
            entries.c.idempotency_key == key
        )
    ).first()
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
    "Leg",
    "PostedEntry",
    "atomic",
    "open_wallet",
    "platform_account",
    "post",
    "user_account",
]
