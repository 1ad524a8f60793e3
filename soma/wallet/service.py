"""What the wallet page shows: balances, their value at the user's own rate, the banner."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from soma.extensions import db
from soma.ledger.pricing import class_cost_at, get_token_pricing, tokens_to_cents
from soma.models import PricingUserType, Role, TokenPricing, User, Wallet, utcnow

LOW_BALANCE_MINUTES = 60


@dataclass(frozen=True)
class WalletSummary:
    wallet_id: int
    available: int
    locked: int
    pricing: TokenPricing
    value_cents: int
    one_hour_cost: int | None  # for students, who see the low-balance banner
    low_balance: bool

    @property
    def total(self) -> int:
        return self.available + self.locked


def pricing_type(user: User) -> str:
    """The rate a user's tokens are valued at: the teacher rate for teachers, else the student's."""
    return PricingUserType.TEACHER if user.role == Role.TEACHER else PricingUserType.STUDENT


def wallet_of(user_id: int) -> Wallet:
    """The user's wallet; every user has one from sign-up."""
    wallet = db.session.scalar(select(Wallet).where(Wallet.user_id == user_id))
    if wallet is None:
        raise LookupError(f"user {user_id} has no wallet")
    return wallet


def wallet_summary(user: User, now: datetime | None = None) -> WalletSummary:
    """Balances of `user`'s wallet, their USD value at the user's rate, and the low-balance flag.

    A student's balance is low when what they can spend is below one hour of class.
    """
    now = now or utcnow()
    wallet = wallet_of(user.id)
    pricing = get_token_pricing(pricing_type(user), now)
    # A student's own pricing row carries the class rate; teachers see no banner.
    is_student = user.role == Role.STUDENT
    one_hour = class_cost_at(LOW_BALANCE_MINUTES, pricing) if is_student else None
    total = wallet.available + wallet.locked
    return WalletSummary(
        wallet_id=wallet.id,
        available=wallet.available,
        locked=wallet.locked,
        pricing=pricing,
        value_cents=tokens_to_cents(total, pricing),
        one_hour_cost=one_hour,
        low_balance=is_student and wallet.available < one_hour,
    )
