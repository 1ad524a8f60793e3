"""Money shown the same way everywhere: "$1.00" and "10 tokens"; times in the viewer's zone.

Amounts are integers (tokens, US cents); these only format them.
"""

from soma import timezones


def is_whole(value) -> bool:
    """Whether `value` is an integer amount: an int, and not a bool (which is one in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def usd(cents: int, signed: bool = False) -> str:
    """Format integer cents as dollars: 1234 -> "$12.34", -5 -> "-$0.05"."""
    if not is_whole(cents):
        raise TypeError(f"money is integer cents, not {type(cents).__name__}")
    sign = "-" if cents < 0 else ("+" if signed and cents > 0 else "")
    dollars, rest = divmod(abs(cents), 100)
    return f"{sign}${dollars:,}.{rest:02d}"


def kes(shillings: int) -> str:
    """Format whole shillings: 1295 -> "KES 1,295"."""
    if not is_whole(shillings):
        raise TypeError(f"shillings are whole numbers, not {type(shillings).__name__}")
    return f"KES {shillings:,}"


def amount(minor: int, currency: str) -> str:
    """An amount in its currency's minor unit: 1000 USD -> "$10.00", 1295 KES -> "KES 1,295"."""
    if currency == "USD":
        return usd(minor)
    if currency == "KES":
        return kes(minor)
    raise ValueError(f"no format for {currency}")


def tokens(count: int, signed: bool = False) -> str:
    """Format a token count: 1 -> "1 token", 1500 -> "1,500 tokens", signed -> "+10 tokens"."""
    if not is_whole(count):
        raise TypeError(f"tokens are whole numbers, not {type(count).__name__}")
    sign = "-" if count < 0 else ("+" if signed and count > 0 else "")
    unit = "token" if abs(count) == 1 else "tokens"
    return f"{sign}{abs(count):,} {unit}"


def when(moment, zone: str | None = None, seconds: bool = False) -> str:
    """A stored time as its reader reads it: "24 Nov 2026, 16:27 EAT".

    In `zone`, or the viewer's (the logged-in user's; UTC for the sweeper, the command
    line and anonymous pages), always with the zone's abbreviation.
    """
    at = timezones.local(moment, zone or timezones.viewer_zone())
    layout = "%d %b %Y, %H:%M:%S" if seconds else "%d %b %Y, %H:%M"
    return f"{at.strftime(layout)} {at.tzname()}"


def day(moment, zone: str | None = None) -> str:
    """A stored time's date in the viewer's zone (or `zone`): "24 November 2026"."""
    at = timezones.local(moment, zone or timezones.viewer_zone())
    return f"{at.day} {at:%B %Y}"


def register_money_filters(app) -> None:
    """Add the `usd`, `kes`, `amount`, `tokens`, `when` and `day` template filters."""
    app.add_template_filter(usd, "usd")
    app.add_template_filter(kes, "kes")
    app.add_template_filter(amount, "amount")
    app.add_template_filter(tokens, "tokens")
    app.add_template_filter(when, "when")
    app.add_template_filter(day, "day")
