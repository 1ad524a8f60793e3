"""The twelve-month earnings chart as plain geometry, for the template to draw as SVG.

No script and no style attribute (the CSP allows neither): the template writes these
numbers into SVG attributes, and static/css/soma.css colours the shapes by class. The
drawing is laid out for a phone (VIEW_WIDTH user units across ~360 px) and scales up.
Coordinates are geometry, not money: the money is in the labels, formatted from cents.
"""

from dataclasses import dataclass
from decimal import Decimal

from soma.earnings.service import Month
from soma.money import usd

VIEW_WIDTH = 360
VIEW_HEIGHT = 204
PLOT_LEFT = 46  # room for the axis labels
PLOT_RIGHT = VIEW_WIDTH - 4
PLOT_TOP = 10
PLOT_BOTTOM = 166
MONTH_LABEL_Y = 181
YEAR_LABEL_Y = 197
BAR_GAP = 6
# The scale's top, in cents: the first of these times a power of ten that holds the
# highest month; at least $10, so that an empty year still has an axis.
NICE_STEPS = (100, 150, 200, 250, 300, 400, 500, 750)
SMALLEST_TOP = 1000


@dataclass(frozen=True)
class Bar:
    x: str
    y: str
    width: str
    height: str
    label_x: str
    month: str  # "Jan"
    year: str | None  # "2026" under the first month and each January
    title: str  # what the bar says, for a pointer's tooltip and screen readers
    current: bool  # this month, still running


@dataclass(frozen=True)
class Tick:
    y: str
    label: str


@dataclass(frozen=True)
class BarChart:
    bars: list[Bar]
    ticks: list[Tick]
    empty: bool
    width: int = VIEW_WIDTH
    height: int = VIEW_HEIGHT
    left: int = PLOT_LEFT
    right: int = PLOT_RIGHT
    bottom: int = PLOT_BOTTOM
    month_label_y: int = MONTH_LABEL_Y
    year_label_y: int = YEAR_LABEL_Y


def _units(value: Decimal) -> str:
    """A coordinate to one decimal place."""
    return str(value.quantize(Decimal("0.1")))


def scale_top(highest_cents: int) -> int:
    """The axis's top in cents: a round figure at or above the highest month."""
    magnitude = 1
    while True:
        for step in NICE_STEPS:
            top = step * magnitude
            if top >= max(highest_cents, SMALLEST_TOP):
                return top
        magnitude *= 10


def short_usd(cents: int) -> str:
    """An axis label: "$0", "$12.50", "$250", "$2.5k", "$12k"."""
    if cents < 100_000:
        text = usd(cents)
        return text.removesuffix(".00")
    thousands = (Decimal(cents) / 100_000).quantize(Decimal("0.01")).normalize()
    return f"${thousands:f}k"


def bar_chart(months: list[Month]) -> BarChart:
    """The bars of `months` (oldest first; the last is this month) and the axis ticks."""
    highest = max((month.totals.cents for month in months), default=0)
    top = scale_top(highest)
    plot_height = Decimal(PLOT_BOTTOM - PLOT_TOP)
    slot = Decimal(PLOT_RIGHT - PLOT_LEFT) / len(months)
    bars = []
    for i, month in enumerate(months):
        totals = month.totals
        height = plot_height * totals.cents / top
        if totals.cents and height < 1:
            height = Decimal(1)  # a month that earned anything shows
        x = PLOT_LEFT + slot * i + Decimal(BAR_GAP) / 2
        # The year under each January, and under the first month unless a January is
        # close enough to say it (the labels would touch).
        first_of_year = month.start.month == 1 or (i == 0 and months[0].start.month < 11)
        classes = f"{totals.classes:,} class{'es' if totals.classes != 1 else ''}"
        so_far = " so far" if i == len(months) - 1 else ""
        bars.append(
            Bar(
                x=_units(x),
                y=_units(PLOT_BOTTOM - height),
                width=_units(slot - BAR_GAP),
                height=_units(height),
                label_x=_units(x + (slot - BAR_GAP) / 2),
                month=month.start.strftime("%b"),
                year=month.start.strftime("%Y") if first_of_year else None,
                title=f"{month.start:%B %Y}{so_far}: {usd(totals.cents)} from {classes}",
                current=i == len(months) - 1,
            )
        )
    ticks = [
        Tick(y=_units(PLOT_BOTTOM - plot_height * part / 2), label=short_usd(top * part // 2))
        for part in range(3)
    ]
    return BarChart(bars=bars, ticks=ticks, empty=highest == 0)
