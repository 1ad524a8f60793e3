"""Withdrawal amounts (pure): tokens never worth less than the dollars paid, the fee's minimum
and rounding at the edges, and the typed amount's parsing. No database."""

import pytest

from soma.payouts import amounts
from soma.payouts.amounts import AmountRefused, parse_usd, quote

RATE = (10, 40)  # the default teacher rate: 10 tokens = 40 ¢


def test_ten_dollars_is_the_minimum_and_holds_250_tokens():
    ten = quote(1000, *RATE)
    assert (ten.tokens, ten.fee_cents, ten.net_cents) == (250, 50, 950)
    assert ten.tokens_worth_cents == 1000
    assert ten.fee_tokens == 12  # 50 ¢ is 12.5 tokens: 12 to fees, 238 to redemption
    with pytest.raises(AmountRefused, match=r"least you can withdraw is \$10.00"):
        quote(999, *RATE)


def test_the_fee_is_its_minimum_up_to_25_dollars_and_2_percent_rounded_down_after():
    at_25 = quote(2500, *RATE)
    assert (at_25.tokens, at_25.fee_cents, at_25.net_cents) == (625, 50, 2450)
    at_2501 = quote(2501, *RATE)
    # 2 % of $25.01 is 50.02 ¢: rounded down to 50 ¢, in the teacher's favour.
    assert (at_2501.fee_cents, at_2501.net_cents) == (50, 2451)
    # 2501 ¢ is 625.25 tokens: 626 are held, worth $25.04, never 625 worth $25.00.
    assert (at_2501.tokens, at_2501.tokens_worth_cents) == (626, 2504)
    assert quote(2549, *RATE).fee_cents == 50  # 50.98 ¢
    assert quote(2550, *RATE).fee_cents == 51
    assert quote(10_000, *RATE).fee_cents == 200


@pytest.mark.parametrize("cents", range(1000, 3000, 7))
def test_the_tokens_held_are_the_fewest_worth_at_least_the_amount(cents):
    held = quote(cents, *RATE)
    tokens_per, cents_per = RATE
    assert held.tokens * cents_per >= cents * tokens_per  # never worth less than paid
    assert (held.tokens - 1) * cents_per < cents * tokens_per  # and not one more than needed
    assert held.net_cents + held.fee_cents == cents
    assert held.fee_cents == max(50, cents * 2 // 100)
    # What goes to redemption is worth at least the net paid out.
    assert (held.tokens - held.fee_tokens) * cents_per >= held.net_cents * tokens_per
    assert 0 <= held.fee_tokens < held.tokens


def test_other_rates_round_the_same_way():
    # 3 tokens = 10 ¢: $10.00 is 300 tokens exactly; $10.01 needs 300.3, so 301.
    assert quote(1000, 3, 10).tokens == 300
    assert quote(1001, 3, 10).tokens == 301
    assert quote(1000, 3, 10).fee_tokens == 15  # 50 ¢ is exactly 15 tokens


def test_a_withdrawal_is_bounded_above():
    assert quote(amounts.MAXIMUM_CENTS, *RATE).tokens == 2_500_000
    with pytest.raises(AmountRefused, match="at most"):
        quote(amounts.MAXIMUM_CENTS + 1, *RATE)


def test_amounts_are_integers_never_floats():
    with pytest.raises(TypeError):
        quote(10.0, *RATE)
    with pytest.raises(TypeError):
        quote(True, *RATE)


@pytest.mark.parametrize(
    ("text", "cents"),
    [("10", 1000), ("10.00", 1000), ("$25.01", 2501), ("1,000.5", 100050), (" 12.3 ", 1230)],
)
def test_a_typed_amount_is_read_in_cents(text, cents):
    assert parse_usd(text) == cents


@pytest.mark.parametrize(
    "text", ["", "ten", "10.001", "-10", "1e3", "NaN", "Infinity", "10,00.0.0", "\x00", "9" * 40]
)
def test_anything_else_is_refused_with_a_message(text):
    with pytest.raises(AmountRefused):
        parse_usd(text)


def test_an_amount_over_review_limit_is_flagged():
    assert not quote(50_000, *RATE).over_review_limit
    assert quote(50_001, *RATE).over_review_limit
