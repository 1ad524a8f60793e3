"""soma.inputs: the limits every form and route shares, read from the columns."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from soma import inputs
from soma.models import ClassSession, Gift, Notification, Purchase, User, Withdrawal


def test_an_id_limit_is_its_column_type_s_largest_value():
    assert inputs.id_limit(User.id) == 2**31 - 1  # INTEGER
    assert inputs.id_limit(Purchase.id) == 2**63 - 1  # BIGINT (INTEGER only on SQLite)
    assert inputs.id_limit(Notification.__table__.c.id) == 2**63 - 1


@pytest.mark.parametrize(
    ("text", "column", "parsed"),
    [("1", User.id, 1), (str(2**31 - 1), User.id, 2**31 - 1), (str(2**31), User.id, None),
     (str(2**31), Purchase.id, 2**31), (str(2**63 - 1), Purchase.id, 2**63 - 1),
     (str(2**63), Purchase.id, None), ("0", User.id, None), ("-1", User.id, None),
     ("+1", User.id, None), ("007", User.id, None), (" 1", User.id, None), ("1.0", User.id, None),
     ("\u00b2", User.id, None), ("\u0661", User.id, None), ("", User.id, None),
     (None, User.id, None), (["1"], User.id, None), (5, User.id, 5), (True, User.id, None)],
)  # fmt: skip
def test_an_id_is_ascii_digits_within_its_column(text, column, parsed):
    assert inputs.parse_id(text, column) == parsed


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("0", 0), ("250", 250), (str(2**63 - 1), 2**63 - 1), (str(2**63), None), ("-1", None),
     ("+1", None), ("007", None), (" 250", None), ("250.0", None), ("2.5e2", None),
     ("\u0661", None), ("", None), (None, None), (250, None), ("9" * 40, None)],
)  # fmt: skip
def test_a_count_is_ascii_digits_within_its_column(text, parsed):
    """A confirmation's quoted tokens (Withdrawal.tokens, a BIGINT): compared, never stored."""
    assert inputs.parse_count(text, Withdrawal.tokens) == parsed


def test_a_query_id_raises_what_werkzeug_turns_into_the_default():
    parse = inputs.query_id(User.id)
    assert parse("12") == 12
    with pytest.raises(ValueError):
        parse(str(2**31))


def test_text_limits_are_the_columns_lengths():
    assert inputs.column_length(User.display_name) == User.__table__.c.display_name.type.length
    assert inputs.column_length(ClassSession.title) == 120
    assert inputs.column_length(Gift.note) == 200
    with pytest.raises(TypeError):
        inputs.column_length(User.id)


@pytest.mark.parametrize(
    ("text", "multiline", "found"),
    [("Amina", False, []), ("A\x00", False, ["U+0000"]), ("a\nb", False, ["U+000A"]),
     ("a\nb\tc\r", True, []), ("a\x07", True, ["U+0007"]), ("\x7f", False, ["U+007F"]),
     ("\u2028", True, ["U+2028"]), ("Zoë 日本", False, [])],
)  # fmt: skip
def test_control_characters_are_named(text, multiline, found):
    assert inputs.control_characters(text, multiline) == found


@pytest.mark.parametrize(
    ("text", "ok"),
    [("abc-DEF_123", True), ("k" * 200, True), ("k" * 201, False), ("", False),
     ("a b", False), ("a\x00", False), ("é", False), (None, False)],
)  # fmt: skip
def test_a_key_fits_its_column_and_alphabet(text, ok):
    assert inputs.is_key(text, Purchase.idempotency_key) is ok


@pytest.mark.parametrize(
    ("text", "amount"),
    [("5", Decimal("5")), ("5.00", Decimal("5.00")), ("$1,250.5", Decimal("1250.5")),
     (" 0.01 ", Decimal("0.01"))],
)  # fmt: skip
def test_a_plain_amount_is_read(text, amount):
    assert inputs.plain_amount(text) == amount


@pytest.mark.parametrize(
    "text",
    ["NaN", "sNaN", "-sNaN", "Infinity", "-inf", "1e999999999", "1E-999999999", "5e0", "-5",
     "+5", "0x10", "1" * 16, "1." + "0" * 16, "", ".5", "5.", "\u0665"],
)  # fmt: skip
def test_anything_but_a_plain_amount_is_refused(text):
    with pytest.raises(ValueError):
        inputs.plain_amount(text)


@given(st.text(max_size=30))
def test_a_plain_amount_is_finite_or_refused(text):
    try:
        amount = inputs.plain_amount(text)
    except ValueError:
        return
    assert amount.is_finite() and amount >= 0 and amount.adjusted() < 15
