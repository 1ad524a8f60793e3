"""Bounded input, in one place: what a request may carry before it reaches the database.

Ids fit their column (an INTEGER holds 1 to 2**31-1, a BIGINT 1 to 2**63-1), text fits
its column's length and holds no control characters, idempotency keys use a small
alphabet, and amounts of money are plain decimal numbers. Each limit is read from the
model's column, never copied: a column that grows moves its limit with it.

The URL converter `id` (registered by `register`) parses an id path segment:
`/classes/<id(class_sessions):class_id>` matches only an id the table's `id` column can
hold, so any other number is a 404 before the view runs.
"""

import re
import unicodedata
from collections.abc import Callable
from decimal import Decimal

from flask import Flask
from sqlalchemy import BigInteger, Column, Integer, SmallInteger
from sqlalchemy.orm import InstrumentedAttribute
from werkzeug.routing import BaseConverter, ValidationError

from soma.models.base import Base

# An id as it appears in a URL or a form: ASCII digits, no sign, no leading zero.
_ID_TEXT = re.compile(r"[1-9][0-9]{0,18}")
# A whole number a form carries (a quoted count of tokens): ASCII digits, no sign, no
# leading zero.
_COUNT_TEXT = re.compile(r"0|[1-9][0-9]{0,18}")
# A one-time form key (an idempotency key): URL-safe base64, as secrets.token_urlsafe makes.
_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]+")
# The whitespace a multi-line text (a textarea) may hold; nothing else below U+0020.
_MULTILINE_WHITESPACE = frozenset("\n\r\t")
# An amount of money as a person types it: digits, and a fraction after a point.
_AMOUNT_TEXT = re.compile(r"\$?[0-9]{1,15}(?:\.[0-9]{1,15})?")

ColumnLike = Column | InstrumentedAttribute


def _column(column: ColumnLike) -> Column:
    """The table column of a model attribute (User.id) or a column itself."""
    return column.property.columns[0] if isinstance(column, InstrumentedAttribute) else column


def id_limit(column: ColumnLike) -> int:
    """The largest id `column` holds: its integer type's largest value."""
    column_type = _column(column).type
    if isinstance(column_type, BigInteger):
        return 2**63 - 1
    if isinstance(column_type, SmallInteger):
        return 2**15 - 1
    if isinstance(column_type, Integer):
        return 2**31 - 1
    raise TypeError(f"{column} is not an integer column")


def parse_id(text, column: ColumnLike) -> int | None:
    """The id `text` names if `column` can hold it (1 to its limit), else None."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str) or not _ID_TEXT.fullmatch(text):
        return None
    number = int(text)
    return number if number <= id_limit(column) else None


def parse_count(text, column: ColumnLike) -> int | None:
    """The whole number `text` names if `column` can hold it (0 to its limit), else None:
    a confirmation's quoted amount, never a sign, a fraction or an exponent."""
    if not isinstance(text, str) or not _COUNT_TEXT.fullmatch(text):
        return None
    number = int(text)
    return number if number <= id_limit(column) else None


def query_id(column: ColumnLike) -> Callable[[str], int]:
    """A `type=` for request.args.get / request.form.get: an id `column` holds, or the
    default (werkzeug turns the ValueError into the default)."""

    def parse(text: str) -> int:
        number = parse_id(text, column)
        if number is None:
            raise ValueError("not an id")
        return number

    return parse


def column_length(column: ColumnLike) -> int:
    """The number of characters a String column holds."""
    length = getattr(_column(column).type, "length", None)
    if not length:
        raise TypeError(f"{column} has no length")
    return length


def control_characters(text: str, multiline: bool = False) -> list[str]:
    """The control characters in `text` (NUL and the like), as U+XXXX, in order.

    A multi-line text may hold newlines, carriage returns and tabs; nothing else of
    category Cc, no surrogate and no line or paragraph separator is ever allowed.
    """
    found = []
    for character in text:
        if multiline and character in _MULTILINE_WHITESPACE:
            continue
        if unicodedata.category(character) in ("Cc", "Cs", "Zl", "Zp"):
            found.append(f"U+{ord(character):04X}")
    return found


def text_fits(value, column: ColumnLike) -> bool:
    """Whether `value` is text `column` can hold: 1 to its length, no control characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= column_length(column)
        and not control_characters(value)
    )


def is_key(text, column: ColumnLike) -> bool:
    """Whether `text` is a one-time form key that fits `column`."""
    return text_fits(text, column) and _KEY_TEXT.fullmatch(text) is not None


def plain_amount(text: str) -> Decimal:
    """An amount typed as digits, with a fraction after a point if any ("5.00", "$1,250").

    ValueError for anything else: NaN, sNaN, infinities, exponents (1e999999999), signs,
    or more than 15 digits on either side of the point. Whether the fraction fits the
    currency is the caller's to say.
    """
    text = text.strip().replace(",", "")
    if not _AMOUNT_TEXT.fullmatch(text):
        raise ValueError("not a plain amount")
    return Decimal(text.lstrip("$"))


class IdConverter(BaseConverter):
    """`<id(table):name>`: an id the table's `id` column holds; any other text is a 404."""

    regex = r"[1-9][0-9]{0,18}"
    part_isolating = True

    def __init__(self, url_map, table: str, column: str = "id"):
        super().__init__(url_map)
        self.column = Base.metadata.tables[table].c[column]

    def to_python(self, value: str) -> int:
        number = parse_id(value, self.column)
        if number is None:
            raise ValidationError()
        return number

    def to_url(self, value) -> str:
        return str(int(value))


def register(app: Flask) -> None:
    """Add the `id` URL converter (before any blueprint uses it)."""
    app.url_map.converters["id"] = IdConverter
