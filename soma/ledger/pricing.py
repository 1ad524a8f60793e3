"""Versioned pricing: the rate in force at a time, conversions, and class cost."""

from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from sqlalchemy import select

from soma.extensions import db
from soma.models import PricingUserType, TokenPricing, utcnow
from soma.money import is_whole

ROUNDINGS = {"half_up": ROUND_HALF_UP, "up": ROUND_CEILING, "down": ROUND_FLOOR}


class PricingMissing(LookupError):
    """No pricing version was in force at the time asked."""


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
    cents = (tokens * TokenPricing.usd_cents * 2 + TokenPricing.tokens) // (TokenPricing.tokens * 2)
    return pricing_in_force_query(user_type, at).with_only_columns(cents).scalar_subquery()


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
) -> TokenPricing:
    """Add a new pricing version for `user_type`; old versions are never edited."""
    user_type = PricingUserType(user_type)
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
