"""Money shown the same way everywhere: "$1,234.56" and "1,500 tokens"."""

from decimal import Decimal

import pytest
from flask import render_template_string

from soma.money import register_money_filters, tokens, usd


@pytest.mark.parametrize(
    ("cents", "signed", "shown"),
    [
        (0, False, "$0.00"),
        (0, True, "$0.00"),
        (1, False, "$0.01"),
        (99, False, "$0.99"),
        (100, False, "$1.00"),
        (123456, False, "$1,234.56"),
        (100_000_000, False, "$1,000,000.00"),
        (-5, False, "-$0.05"),
        (-5, True, "-$0.05"),
        (-123456, False, "-$1,234.56"),
        (5, True, "+$0.05"),
        (150, True, "+$1.50"),
    ],
)
def test_usd_formats_integer_cents(cents, signed, shown):
    assert usd(cents, signed=signed) == shown


@pytest.mark.parametrize(
    ("count", "signed", "shown"),
    [
        (0, False, "0 tokens"),
        (0, True, "0 tokens"),
        (1, False, "1 token"),
        (1, True, "+1 token"),
        (-1, False, "-1 token"),
        (10, False, "10 tokens"),
        (1500, False, "1,500 tokens"),
        (-3, False, "-3 tokens"),
        (-3, True, "-3 tokens"),
        (3, True, "+3 tokens"),
        (1_000_000, True, "+1,000,000 tokens"),
    ],
)
def test_tokens_formats_a_count_with_its_unit(count, signed, shown):
    assert tokens(count, signed=signed) == shown


@pytest.mark.parametrize("amount", [1.0, 0.5, True, False, Decimal("1.00"), "100", None])
def test_money_is_never_formatted_from_a_float_or_a_bool(amount):
    with pytest.raises(TypeError):
        usd(amount)
    with pytest.raises(TypeError):
        tokens(amount)


def test_templates_use_the_usd_and_tokens_filters(app):
    register_money_filters(app)
    with app.app_context():
        shown = render_template_string(
            "{{ 123456|usd }} {{ 5|usd(signed=True) }} {{ 1|tokens }} {{ -3|tokens(True) }}"
        )
    assert shown == "$1,234.56 +$0.05 1 token -3 tokens"


def test_amounts_are_shown_in_their_own_currency():
    from soma.money import amount, kes

    assert amount(1000, "USD") == "$10.00"
    assert amount(1295, "KES") == kes(1295) == "KES 1,295"
    with pytest.raises(ValueError):
        amount(100, "EUR")
    with pytest.raises(TypeError):
        kes(12.5)
