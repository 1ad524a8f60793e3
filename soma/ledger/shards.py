"""Platform sub-accounts: each platform account is N wallets, so no one row is hot.

Every purchase credits a user from issuance; with one issuance row, every purchase
waited for the one before it to commit. Each platform account (issuance,
promotions, redemption, fees) is instead N wallets with the same `code` and
shards 0 to N-1, each with its own balances and its own posting chain (see
soma.ledger.core). The account's balance is the sum of its shards': every report
sums them, and the audit checks each shard as the wallet it is.

Which shard an entry posts to is a hash of a stable key: the entry's reference
(what it concerns: a purchase, a withdrawal) or, without one, its idempotency
key, modulo N (`shard_for`). A replay of an entry hashes to the same shard; the
entry's digest names the account, not the shard, so a replay matches whatever N.

A source account (issuance, promotions) may go negative, so a debit from it can
use any shard. A sink (redemption, fees) may not, per shard, by CHECK: a debit
from it must take from a shard that holds the tokens. The only such debit is
`unretire`, which undoes a `retire`: it names the shards the retire credited
(read from the retire entry, or the same hash of the same reference), and
`core.post` refuses a debit from a sink that does not name its shard.

N is the setting SOMA_PLATFORM_SHARDS (default 128), capped by the shards that
exist: migration 0024 made 16 of each account, 0030 made them 128, and `flask soma
shards` makes any more the setting asks for (`ensure_shards`). Until it has, the app
uses the shards 0 to k-1 that exist for every account, so a shard that does not exist
is never chosen. Each process reads what exists once (`shard_count`); one that read
fewer shards than exist later only spreads less. Lowering N leaves the shards
above it with their balances; nothing new posts to them, and the reports still
sum them.
"""

import zlib

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from soma.config import DEFAULT_PLATFORM_SHARDS
from soma.extensions import db
from soma.models import SOURCE_ACCOUNTS, PlatformAccount, Wallet, utcnow

DEFAULT_SHARDS = DEFAULT_PLATFORM_SHARDS  # (why so many: see soma.config)
_CACHE = "soma_platform_shards"


def shard_for(key: str, shards: int) -> int:
    """The shard, 0 to `shards` - 1, of an entry keyed by `key` (stable across processes)."""
    return zlib.crc32(key.encode()) % shards


def shard_key(key: str, reference: tuple[str, int] | None) -> str:
    """What an entry's shard is hashed from: its reference if it has one, else its key."""
    return f"{reference[0]}:{reference[1]}" if reference else key


def existing_shards(connection) -> int:
    """The k such that shards 0 to k-1 of every platform account exist (0 if one is missing)."""
    rows = connection.execute(
        select(Wallet.code, Wallet.shard).where(Wallet.code.is_not(None))
    ).all()
    found: dict[str, set[int]] = {account.value: set() for account in PlatformAccount}
    for code, shard in rows:
        found.setdefault(code, set()).add(shard)
    counts = []
    for shards in found.values():
        k = 0
        while k in shards:
            k += 1
        counts.append(k)
    return min(counts)


def shard_count() -> int:
    """N for this app: the setting, capped by the shards that exist (read once, then kept)."""
    extensions = current_app.extensions
    count = extensions.get(_CACHE)
    if count is None:
        wanted = current_app.config.get("SOMA_PLATFORM_SHARDS", DEFAULT_SHARDS)
        with db.engine.connect() as connection:
            count = max(1, min(wanted, existing_shards(connection)))
        extensions[_CACHE] = count
    return count


def forget_shard_count() -> None:
    """Read the shards that exist again at the next entry (after `ensure_shards`)."""
    current_app.extensions.pop(_CACHE, None)


def ensure_shards(shards: int) -> int:
    """Create any missing shard 0 to `shards` - 1 of every platform account; commit.

    Returns how many wallets it created. Safe to run again, and beside a running app.
    """
    dialect = postgresql if db.engine.dialect.name == "postgresql" else sqlite
    now = utcnow()
    rows = [
        {
            "code": account.value,
            "shard": shard,
            "is_source": account in SOURCE_ACCOUNTS,
            "created_at": now,
        }
        for account in PlatformAccount
        for shard in range(shards)
    ]
    before = db.session.scalar(select(func.count()).where(Wallet.code.is_not(None)))
    db.session.execute(
        dialect.insert(Wallet).values(rows).on_conflict_do_nothing(),
    )
    after = db.session.scalar(select(func.count()).where(Wallet.code.is_not(None)))
    db.session.commit()
    forget_shard_count()
    return after - before
