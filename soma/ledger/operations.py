"""The money operations every feature calls: credit, debit, hold, settle, retire, release,
transfer.

Each writes one entry through `core.post` in the caller's transaction and takes
an idempotency key: a repeat returns the first entry and moves nothing more.
"""

from datetime import datetime
from typing import TypedDict, Unpack

from sqlalchemy import bindparam, select

from soma.extensions import db
from soma.ledger.core import Leg, PostedEntry, platform_account, post, user_account
from soma.ledger.errors import InvalidPosting
from soma.ledger.shards import shard_count, shard_for, shard_key
from soma.models import Bucket, EntryKind, JournalEntry, PlatformAccount, Posting, Wallet
from soma.money import is_whole


class EntryDetails(TypedDict, total=False):
    """What every operation passes on to its entry unchanged (see `core.post`)."""

    reference: tuple[str, int] | None  # the object the entry concerns
    memo: str
    actor_id: int | None  # who asked for it
    now: datetime | None  # when it happened (default: now)
    # Write and commit the entry in a transaction of its own, apart from the
    # session's: one round trip on PostgreSQL. Only for an entry that is a whole
    # money operation (see `core.post`).
    own_transaction: bool


HOLD_KINDS = {EntryKind.CLASS_HOLD, EntryKind.WITHDRAWAL_HOLD}

# What kind of hold each closing kind closes: a class payment never closes a
# withdrawal's hold, nor the other way round.
CLOSES = {
    EntryKind.CLASS_SETTLE: EntryKind.CLASS_HOLD,
    EntryKind.CLASS_RELEASE: EntryKind.CLASS_HOLD,
    EntryKind.WITHDRAWAL_PAID: EntryKind.WITHDRAWAL_HOLD,
    EntryKind.WITHDRAWAL_RELEASE: EntryKind.WITHDRAWAL_HOLD,
}


def _positive(tokens: int) -> int:
    if not is_whole(tokens) or tokens <= 0:
        raise InvalidPosting("an amount of tokens is a positive whole number")
    return tokens


def credit(
    user_id: int,
    tokens: int,
    *,
    key: str,
    kind: str = EntryKind.PURCHASE,
    source: PlatformAccount = PlatformAccount.ISSUANCE,
    **details: Unpack[EntryDetails],
) -> PostedEntry:
    """Add `tokens` to a user's available balance from a platform account."""
    tokens = _positive(tokens)
    return post(kind, key, credit_legs(user_id, tokens, source), tokens=tokens, **details)


def credit_legs(user_id: int, tokens: int, source: PlatformAccount) -> list[Leg]:
    """The postings of a credit: from `source` to the user's available tokens."""
    return [
        Leg(platform_account(source), Bucket.AVAILABLE, -_positive(tokens)),
        Leg(user_account(user_id), Bucket.AVAILABLE, tokens),
    ]


def debit(
    user_id: int,
    tokens: int,
    *,
    key: str,
    kind: str = EntryKind.REFUND,
    to: PlatformAccount = PlatformAccount.ISSUANCE,
    **details: Unpack[EntryDetails],
) -> PostedEntry:
    """Take `tokens` out of a user's available balance back to a platform account."""
    tokens = _positive(tokens)
    legs = [
        Leg(user_account(user_id), Bucket.AVAILABLE, -tokens),
        Leg(platform_account(to), Bucket.AVAILABLE, tokens),
    ]
    return post(kind, key, legs, tokens=tokens, **details)


def hold(
    user_id: int,
    tokens: int,
    *,
    key: str,
    kind: str = EntryKind.CLASS_HOLD,
    **details: Unpack[EntryDetails],
) -> PostedEntry:
    """Move `tokens` of a user's available balance to locked."""
    if kind not in HOLD_KINDS:
        raise InvalidPosting(f"{kind} is not a kind of hold")
    tokens = _positive(tokens)
    account = user_account(user_id)
    legs = [Leg(account, Bucket.AVAILABLE, -tokens), Leg(account, Bucket.LOCKED, tokens)]
    return post(kind, key, legs, tokens=tokens, **details)


# Built once: settling is hot, and a prebuilt statement skips SQLAlchemy's query building.
_HELD = (
    select(Wallet.user_id, Posting.amount, JournalEntry.kind)
    .join(Wallet, Wallet.id == Posting.wallet_id)
    .join(JournalEntry, JournalEntry.id == Posting.entry_id)
    .where(Posting.entry_id == bindparam("p_hold"), Posting.bucket == Bucket.LOCKED.value)
)


def _held(hold_entry_id: int) -> tuple[int, int, str]:
    """Return (user id, tokens held, kind) of the hold entry."""
    row = db.session.connection().execute(_HELD, {"p_hold": hold_entry_id}).first()
    if row is None or row.kind not in HOLD_KINDS or row.amount <= 0:
        raise InvalidPosting(f"entry {hold_entry_id} is not a hold")
    return row.user_id, row.amount, row.kind


def _hold_facts(
    kind: str, hold_entry_id: int, holder_id: int | None, held: int | None
) -> tuple[int, int, tuple[int, int, str] | None]:
    """(holder, tokens held, what `post` must verify): told by the caller, or read here.

    `kind` is the closing entry's kind; the hold must be the kind it closes.
    """
    if kind not in CLOSES:
        raise InvalidPosting(f"{kind} does not close a hold")
    hold_kind = CLOSES[EntryKind(kind)].value
    if holder_id is None and held is None:
        user_id, held, found_kind = _held(hold_entry_id)
        if found_kind != hold_kind:
            raise InvalidPosting(f"a {kind} entry cannot close a {found_kind} entry")
        return user_id, held, None
    if holder_id is None or held is None:
        raise InvalidPosting("pass both holder_id and held, or neither")
    held = _positive(held)
    return holder_id, held, (holder_id, held, hold_kind)


def settle(
    hold_entry_id: int,
    charge: int,
    *,
    key: str,
    to_user_id: int | None = None,
    to_platform: PlatformAccount | None = None,
    kind: str = EntryKind.CLASS_SETTLE,
    holder_id: int | None = None,
    held: int | None = None,
    **details: Unpack[EntryDetails],
) -> PostedEntry:
    """Close a hold: `charge` tokens go to the payee, the rest back to available.

    The payee is a user (`to_user_id`) or a platform account (`to_platform`). A
    hold closes once; a second settle or release raises AlreadySettled. A caller
    that recorded the hold passes its `holder_id` and `held` tokens: the entry
    then checks them as it is written instead of reading the hold first.
    """
    if (to_user_id is None) == (to_platform is None):
        raise InvalidPosting("settle pays exactly one payee")
    user_id, held, hold_check = _hold_facts(kind, hold_entry_id, holder_id, held)
    if not is_whole(charge) or not 0 < charge <= held:
        raise InvalidPosting(f"a settle charges 1 to {held} tokens, not {charge}")
    payer = user_account(user_id)
    payee = user_account(to_user_id) if to_user_id is not None else platform_account(to_platform)
    if payee == payer:
        raise InvalidPosting("a hold is not settled to its own wallet")
    legs = [Leg(payer, Bucket.LOCKED, -held), Leg(payee, Bucket.AVAILABLE, charge)]
    if held > charge:
        legs.append(Leg(payer, Bucket.AVAILABLE, held - charge))
    return post(
        kind,
        key,
        legs,
        tokens=charge,
        closes_entry_id=hold_entry_id,
        hold_check=hold_check,
        **details,
    )


def retire(
    hold_entry_id: int,
    fee_tokens: int,
    *,
    key: str,
    kind: str = EntryKind.WITHDRAWAL_PAID,
    holder_id: int | None = None,
    held: int | None = None,
    **details: Unpack[EntryDetails],
) -> PostedEntry:
    """Close a withdrawal's hold by retiring all of it: `fee_tokens` to the fees account,
    the rest to redemption. The tokens leave the user's wallet for good (paid out in money).

    `fee_tokens` is 0 to fewer than the tokens held; `holder_id` and `held` are checked
    as in `settle`. A hold closes once: AlreadySettled after a settle, release or retire.
    """
    user_id, held, hold_check = _hold_facts(kind, hold_entry_id, holder_id, held)
    if not is_whole(fee_tokens) or not 0 <= fee_tokens < held:
        raise InvalidPosting(f"a retire's fee is 0 to {held - 1} tokens, not {fee_tokens}")
    legs = [
        Leg(user_account(user_id), Bucket.LOCKED, -held),
        Leg(platform_account(PlatformAccount.REDEMPTION), Bucket.AVAILABLE, held - fee_tokens),
    ]
    if fee_tokens:
        legs.append(Leg(platform_account(PlatformAccount.FEES), Bucket.AVAILABLE, fee_tokens))
    return post(
        kind,
        key,
        legs,
        tokens=held,
        closes_entry_id=hold_entry_id,
        hold_check=hold_check,
        **details,
    )


def release(
    hold_entry_id: int,
    *,
    key: str,
    kind: str = EntryKind.CLASS_RELEASE,
    holder_id: int | None = None,
    held: int | None = None,
    **details: Unpack[EntryDetails],
) -> PostedEntry:
    """Close a hold by returning all of it to the user's available balance.

    `holder_id` and `held`, when the caller knows them, are checked as in `settle`.
    """
    user_id, held, hold_check = _hold_facts(kind, hold_entry_id, holder_id, held)
    account = user_account(user_id)
    legs = [Leg(account, Bucket.LOCKED, -held), Leg(account, Bucket.AVAILABLE, held)]
    return post(
        kind,
        key,
        legs,
        tokens=held,
        closes_entry_id=hold_entry_id,
        hold_check=hold_check,
        **details,
    )


def transfer(
    from_user_id: int,
    to_user_id: int,
    tokens: int,
    *,
    key: str,
    kind: str = EntryKind.GIFT,
    **details: Unpack[EntryDetails],
) -> PostedEntry:
    """Move `tokens` from one user's available balance to another's."""
    tokens = _positive(tokens)
    if from_user_id == to_user_id:
        raise InvalidPosting("a transfer goes to another wallet")
    legs = [
        Leg(user_account(from_user_id), Bucket.AVAILABLE, -tokens),
        Leg(user_account(to_user_id), Bucket.AVAILABLE, tokens),
    ]
    return post(kind, key, legs, tokens=tokens, **details)


def unretire(
    user_id: int,
    tokens: int,
    fee_tokens: int,
    *,
    key: str,
    kind: str = EntryKind.ADJUSTMENT,
    retired_entry_id: int | None = None,
    **details: Unpack[EntryDetails],
) -> PostedEntry:
    """Undo a `retire` whose money came back (a payout reversed): `tokens` return to the
    user's available balance, `fee_tokens` of them from the fees account and the rest
    from redemption. Keyed by the caller (the reversal): once.

    The tokens come back from the shards of redemption and fees the retire credited
    (soma.ledger.shards): those of `retired_entry_id`, the retire entry, when given;
    else the shards its reference hashes to, which are the retire's when it has the
    retire's reference (and the number of shards has not changed since)."""
    tokens = _positive(tokens)
    if not is_whole(fee_tokens) or not 0 <= fee_tokens < tokens:
        raise InvalidPosting(f"an unretire's fee is 0 to {tokens - 1} tokens, not {fee_tokens}")
    if retired_entry_id is not None:
        shards = _retired_shards(retired_entry_id)
    else:
        shard = shard_for(shard_key(key, details.get("reference")), shard_count())
        shards = {PlatformAccount.REDEMPTION: shard, PlatformAccount.FEES: shard}
    redemption = platform_account(PlatformAccount.REDEMPTION, shards[PlatformAccount.REDEMPTION])
    legs = [
        Leg(redemption, Bucket.AVAILABLE, -(tokens - fee_tokens)),
        Leg(user_account(user_id), Bucket.AVAILABLE, tokens),
    ]
    if fee_tokens:
        fees = platform_account(PlatformAccount.FEES, shards.get(PlatformAccount.FEES))
        legs.insert(1, Leg(fees, Bucket.AVAILABLE, -fee_tokens))
    return post(kind, key, legs, tokens=tokens, **details)


def _retired_shards(entry_id: int) -> dict[PlatformAccount, int]:
    """The shard of redemption (and of fees, if it took a fee) the retire `entry_id` credited."""
    rows = db.session.execute(
        select(Wallet.code, Wallet.shard)
        .join(Posting, Posting.wallet_id == Wallet.id)
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(
            Posting.entry_id == entry_id,
            Wallet.code.is_not(None),
            JournalEntry.kind == EntryKind.WITHDRAWAL_PAID.value,
        )
    ).all()
    shards = {PlatformAccount(code): shard for code, shard in rows}
    if PlatformAccount.REDEMPTION not in shards:
        raise InvalidPosting(f"entry {entry_id} is not a retire")
    return shards
