"""What a withdrawal of some US dollars holds, costs and pays: integers only (cents, tokens).

The teacher asks for `usd_cents`. Rates are the teacher pricing's `tokens` per
`usd_cents` (10 tokens = 40 ¢ by default: 4 ¢ a token).

- Tokens held = ceil(usd_cents * tokens / rate_cents). Rounding up means the tokens
  retired are always worth at least the dollars paid for them, so the platform never
  pays out more than the tokens are worth; $10.01 holds 251 tokens (worth $10.04),
  never 250 (worth $10.00). The confirmation page shows the tokens before anything is held.
- Fee = 2 % of the amount asked, rounded DOWN to the cent, and at least 50 ¢. Rounding
  in the teacher's favour keeps the promise simple: the fee is never more than 2 %
  (above the minimum). It is taken from the payout: net = asked - fee.
- Fee tokens = floor(fee * tokens / rate_cents): what goes to the fees account when the
  withdrawal is paid; the other tokens go to redemption. Rounding down keeps the tokens
  retired to redemption worth at least the net paid out.
"""

from dataclasses import dataclass

from soma import money
from soma.inputs import plain_amount

MINIMUM_CENTS = 1_000  # $10.00
# The most one withdrawal asks for; bounds the numbers before anything is read.
MAXIMUM_CENTS = 10_000_000  # $100,000.00
FEE_PERCENT = 2
FEE_MINIMUM_CENTS = 50  # $0.50
# Above this a withdrawal waits for an admin, whatever its method.
REVIEW_ABOVE_CENTS = 50_000  # $500.00


class AmountRefused(ValueError):
    """An amount that cannot be withdrawn; the message says why, for the teacher."""


@dataclass(frozen=True)
class WithdrawalQuote:
    usd_cents: int  # asked for
    tokens: int  # held, then retired
    fee_cents: int
    net_cents: int  # sent to the teacher
    fee_tokens: int  # of `tokens`, to the fees account when paid
    tokens_worth_cents: int  # what `tokens` are worth at the rate, rounded down

    @property
    def over_review_limit(self) -> bool:
        return self.usd_cents > REVIEW_ABOVE_CENTS


def parse_usd(text: str) -> int:
    """The cents a typed amount ("10", "$25.01", "1,000.50") names; AmountRefused if none."""
    try:
        amount = plain_amount(text or "")
    except ValueError:
        raise AmountRefused("Enter an amount in US dollars, such as 25.00.") from None
    cents = amount * 100
    if cents != cents.to_integral_value():
        raise AmountRefused("Enter the amount in whole cents, such as 25.50.")
    return int(cents)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def tokens_for(usd_cents: int, rate_tokens: int, rate_cents: int) -> int:
    """The fewest whole tokens worth at least `usd_cents` at the rate."""
    return _ceil_div(usd_cents * rate_tokens, rate_cents)


def fee_for(usd_cents: int) -> int:
    """2 % of the amount, rounded down to the cent, and never under the minimum."""
    return max(FEE_MINIMUM_CENTS, usd_cents * FEE_PERCENT // 100)


def quote(usd_cents: int, rate_tokens: int, rate_cents: int) -> WithdrawalQuote:
    """The tokens, fee and net of withdrawing `usd_cents`; AmountRefused outside the limits."""
    if isinstance(usd_cents, bool) or not isinstance(usd_cents, int):
        raise TypeError("usd_cents is a whole number of cents")
    if rate_tokens <= 0 or rate_cents <= 0:
        raise ValueError("a rate is positive")
    if usd_cents < MINIMUM_CENTS:
        raise AmountRefused(f"The least you can withdraw is {money.usd(MINIMUM_CENTS)}.")
    if usd_cents > MAXIMUM_CENTS:
        raise AmountRefused(f"Withdraw at most {money.usd(MAXIMUM_CENTS)} at a time.")
    tokens = tokens_for(usd_cents, rate_tokens, rate_cents)
    fee = fee_for(usd_cents)
    fee_tokens = fee * rate_tokens // rate_cents
    return WithdrawalQuote(
        usd_cents=usd_cents,
        tokens=tokens,
        fee_cents=fee,
        net_cents=usd_cents - fee,
        fee_tokens=fee_tokens,
        tokens_worth_cents=tokens * rate_cents // rate_tokens,
    )
