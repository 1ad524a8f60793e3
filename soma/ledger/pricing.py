"""Versioned pricing: the rate in force at a time, conversions, and class cost."""

from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from sqlalchemy import BigInteger, func, select, type_coerce
from sqlalchemy.dialects import postgresql

from soma import clock
from soma.extensions import db
from soma.models import JournalEntry, PricingUserType, TokenPricing, utcnow
from soma.money import is_whole, when

ROUNDINGS = {"half_up": ROUND_HALF_UP, "up": ROUND_CEILING, "down": ROUND_FLOOR}


class PricingMissing(LookupError):
    """No pricing version was in force at the time asked."""


class PricingRefused(ValueError):
    """A version that cannot be published; `message` says why, for the admin."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# A new version takes effect at least this long after it is published. An entry's value
# is frozen with the versions its transaction sees: one that took effect a moment after
# publishing could be in force for an entry posted while the publish was committing, and
# the audit (which sees every committed version) would recompute that entry differently.
PUBLISH_LEAD = timedelta(minutes=1)


def pricing_in_force_query(user_type: str, at: datetime):
    """The SELECT for the pricing row of `user_type` in force at `at`."""
    return (
        select(TokenPricing)
        .where(TokenPricing.user_type == user_type, TokenPricing.effective_at <= at)
        .order_by(TokenPricing.effective_at.desc(), TokenPricing.version.desc())
        .limit(1)
    )


def value_cents_sql(user_type: str, tokens, at):
    """SQL for the value of `tokens` at the rate in force at `at`, rounded half up.

    `tokens` and `at` may be parameters or columns: the ledger freezes an entry's value
    with it, and the audit recomputes every entry's value with it.
    """
    cents = cents_at_rate(tokens, TokenPricing.usd_cents, TokenPricing.tokens)
    return pricing_in_force_query(user_type, at).with_only_columns(cents).scalar_subquery()


def cents_at_rate(tokens, rate_cents, rate_tokens):
    """SQL: `tokens` worth `rate_cents` per `rate_tokens` tokens, in cents rounded half up."""
    # A version's tokens are a 32-bit column, doubled here: typed as 64 bits, so the 2 is
    # a bigint and PostgreSQL multiplies in 64 bits (a rate of 2**30 tokens or more would
    # overflow 32). No CAST: the ledger's statements drop " AS ..." (see core._ALIAS).
    rate_tokens = type_coerce(rate_tokens, BigInteger())
    return (tokens * rate_cents * 2 + rate_tokens) // (rate_tokens * 2)


def rate_in_force_sql(user_type: str, at):
    """SQL: the rate of `user_type` in force at `at` as an array [usd_cents, tokens] (NULL
    if none), for a statement that values several entries to read once (`cents_at_rate`
    of its elements 1 and 2 is `value_cents_sql`)."""
    # (bigint and integer: PostgreSQL makes the array bigint[].)
    rate = postgresql.array([TokenPricing.usd_cents, TokenPricing.tokens])
    return pricing_in_force_query(user_type, at).with_only_columns(rate).scalar_subquery()


def get_token_pricing(user_type: str, at: datetime | None = None) -> TokenPricing:
    """Return the pricing of `user_type` in force at `at` (now); raises PricingMissing."""
    user_type = PricingUserType(user_type)
    pricing = db.session.scalar(pricing_in_force_query(user_type, at or utcnow()))
    if pricing is None:
        raise PricingMissing(f"no {user_type} pricing in force at {at}")
    return pricing


def _round(value: Decimal, rounding: str) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUNDINGS[rounding]))


def tokens_to_cents(tokens: int, pricing: TokenPricing, rounding: str = "half_up") -> int:
    """The value in US cents of `tokens` at `pricing`, rounded as asked."""
    return _round(Decimal(tokens) * pricing.usd_cents / pricing.tokens, rounding)


def cents_to_tokens(cents: int, pricing: TokenPricing, rounding: str = "up") -> int:
    """How many tokens `cents` US cents is at `pricing`, rounded as asked (up by default)."""
    return _round(Decimal(cents) * pricing.tokens / pricing.usd_cents, rounding)


def tokens_value_cents(
    tokens: int, user_type: str, at: datetime | None = None, rounding: str = "half_up"
) -> int:
    """The value of `tokens` at the `user_type` rate in force at `at`."""
    return tokens_to_cents(tokens, get_token_pricing(user_type, at), rounding)


def class_cost(minutes: int, at: datetime | None = None) -> int:
    """Tokens a class of `minutes` costs: ceil(minutes * tokens per hour / 60)."""
    return class_cost_at(minutes, get_token_pricing(PricingUserType.STUDENT, at))


def class_cost_at(minutes: int, pricing: TokenPricing) -> int:
    """`class_cost` at a student pricing row the caller already holds."""
    if not is_whole(minutes) or minutes <= 0:
        raise ValueError("a class lasts a positive whole number of minutes")
    return -(-minutes * pricing.class_tokens_per_hour // 60)


def publish_pricing(
    user_type: str,
    tokens: int,
    usd_cents: int,
    class_tokens_per_hour: int,
    effective_at: datetime,
    created_by_id: int | None = None,
    *,
    backdate: bool = False,
) -> TokenPricing:
    """Add a new pricing version for `user_type`; old versions are never edited.

    A version takes effect in the future, at least PUBLISH_LEAD after the app's clock and
    after every journal entry already written (whatever clock dated it): an entry's USD
    value is frozen when it is written, so a version in force before it would make the
    audit's recomputation disagree (entry-value-mismatch). Two versions of one user type
    never take effect at the same time. PricingRefused says why not.

    `backdate=True` skips these checks: only for tests and the demo, which lay down a
    history before anything is written. No route passes it.
    """
    user_type = PricingUserType(user_type)
    if effective_at.tzinfo is None:
        raise ValueError("a version's time is an aware datetime, not a naive one")
    if not backdate:
        _check_publishable(user_type, effective_at)
    latest = db.session.scalar(
        select(TokenPricing.version)
        .where(TokenPricing.user_type == user_type)
        .order_by(TokenPricing.version.desc())
        .limit(1)
    )
    pricing = TokenPricing(
        user_type=user_type,
        version=(latest or 0) + 1,
        tokens=tokens,
        usd_cents=usd_cents,
        class_tokens_per_hour=class_tokens_per_hour,
        effective_at=effective_at,
        created_by_id=created_by_id,
    )
    db.session.add(pricing)
    db.session.flush()
    return pricing


def _check_publishable(user_type: PricingUserType, effective_at: datetime) -> None:
    earliest = clock.now() + PUBLISH_LEAD
    if effective_at < earliest:
        raise PricingRefused(
            "A new price takes effect in the future: choose a time at least a minute from "
            f"now (after {when(earliest)}). Old prices are never changed."
        )
    last_entry = db.session.scalar(select(func.max(JournalEntry.created_at)))
    if last_entry is not None and effective_at <= last_entry:
        raise PricingRefused(
            f"The ledger already has an entry dated {when(last_entry, seconds=True)}, "
            "at or after that time; a new price takes effect after it."
        )
    tie = db.session.scalar(
        select(TokenPricing.version).where(
            TokenPricing.user_type == user_type, TokenPricing.effective_at == effective_at
        )
    )
    if tie is not None:
        raise PricingRefused(
            f"Version {tie} of the {user_type} pricing already takes effect at that time. "
            "Choose another time."
        )
