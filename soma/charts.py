"""Bar charts as plain geometry, for templates/partials/_chart.html to draw as SVG.

One drawing for every chart of the app (a teacher's earnings, the operator's metrics):
no script and no style attribute (the CSP allows neither). The macro writes these
numbers into SVG attributes, and static/css/soma.css colours the shapes by class. The
drawing is laid out for a phone (VIEW_WIDTH user units across ~360 px) and scales up.
Coordinates are geometry, not figures: the figures are in the labels and titles, each
chart's own code formats them, and the table beneath each chart repeats them.

Bars may go below zero (a month whose refunds outweigh its revenue): the axis then
runs from a round figure below zero to one above, with a line at zero.
"""

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from soma.money import usd

VIEW_WIDTH = 360
VIEW_HEIGHT = 204
PLOT_LEFT = 46  # room for the axis labels
PLOT_RIGHT = VIEW_WIDTH - 4
PLOT_TOP = 10
PLOT_BOTTOM = 166
LABEL_Y = 181
SUBLABEL_Y = 197
BAR_GAP = 6  # between bars, at most a quarter of a bar's slot
# The scale's top: the first of these hundredths times a power of ten that holds the highest bar.
NICE_STEPS = (100, 150, 200, 250, 300, 400, 500, 750)


@dataclass(frozen=True)
class Point:
    """One bar's figure and words: what the chart's own code says of it."""

    value: int
    label: str | None  # under the bar ("Jan"), or None
    title: str  # what the bar says, for a pointer's tooltip and screen readers
    sublabel: str | None = None  # a second line under the label ("2026")
    current: bool = False  # still running (this month, today)


@dataclass(frozen=True)
class Bar:
    x: str
    y: str
    width: str
    height: str
    label_x: str
    label: str | None
    sublabel: str | None
    title: str
    current: bool
    negative: bool

    @property
    def year(self) -> str | None:
        """The second line, which a chart by month uses for the year."""
        return self.sublabel


@dataclass(frozen=True)
class Tick:
    y: str
    label: str


@dataclass(frozen=True)
class BarChart:
    bars: list[Bar]
    ticks: list[Tick]
    empty: bool
    zero_y: str  # the zero line, at the bottom unless a bar goes below zero
    unit: str = "month"  # the bars' class: chart-month, chart-day
    width: int = VIEW_WIDTH
    height: int = VIEW_HEIGHT
    left: int = PLOT_LEFT
    right: int = PLOT_RIGHT
    bottom: int = PLOT_BOTTOM
    label_y: int = LABEL_Y
    sublabel_y: int = SUBLABEL_Y

    @property
    def below_zero(self) -> bool:
        return any(bar.negative for bar in self.bars)


def units(value: Decimal | int) -> str:
    """A coordinate to one decimal place."""
    return str(Decimal(value).quantize(Decimal("0.1")))


def scale_top(highest: int, smallest: int) -> int:
    """A round figure at or above `highest`, and at least `smallest`: 1, 2, 3, 4, 5, 10, 15,
    20, 25, 30, 40, 50, 75, 100, 150... (a whole number from NICE_STEPS' hundredths)."""
    magnitude = 1
    while True:
        for step in NICE_STEPS:
            if step * magnitude % 100 == 0:
                top = step * magnitude // 100
                if top >= max(highest, smallest):
                    return top
        magnitude *= 10


def short_usd(cents: int) -> str:
    """An axis label in dollars: "$0", "$12.50", "$250", "$2.5k", "$12k", "-$40"."""
    if cents < 0:
        return "-" + short_usd(-cents)
    if cents < 100_000:
        text = usd(cents)
        return text.removesuffix(".00")
    thousands = (Decimal(cents) / 100_000).quantize(Decimal("0.01")).normalize()
    return f"${thousands:f}k"


def short_count(count: int) -> str:
    """An axis label for a count: "0", "750", "1.5k", "25k", "1.2M"."""
    if count < 0:
        return "-" + short_count(-count)
    if count < 1000:
        return str(count)
    for divisor, suffix in ((1_000_000, "M"), (1000, "k")):
        if count >= divisor:
            value = (Decimal(count) / divisor).quantize(Decimal("0.1")).normalize()
            return f"{value:f}{suffix}"
    return str(count)  # (unreachable)


def bar_chart(
    points: list[Point],
    axis_label: Callable[[int], str],
    smallest_top: int,
    unit: str = "month",
) -> BarChart:
    """The bars of `points` (in order, left to right) and the axis ticks.

    The axis tops at a round figure of at least `smallest_top` (so that a chart of
    nothing still has one), and drops below zero only when a bar does.
    """
    highest = max((p.value for p in points), default=0)
    lowest = min((p.value for p in points), default=0)
    top = scale_top(max(highest, 0), smallest_top)
    floor = -scale_top(-lowest, 1) if lowest < 0 else 0
    plot_height = Decimal(PLOT_BOTTOM - PLOT_TOP)
    per_unit = plot_height / (top - floor)
    zero_y = PLOT_TOP + per_unit * top
    slot = Decimal(PLOT_RIGHT - PLOT_LEFT) / max(len(points), 1)
    gap = min(Decimal(BAR_GAP), slot / 4)
    bars = []
    for i, point in enumerate(points):
        height = per_unit * abs(point.value)
        if point.value and height < 1:
            height = Decimal(1)  # a bar of anything shows
        x = PLOT_LEFT + slot * i + gap / 2
        negative = point.value < 0
        bars.append(
            Bar(
                x=units(x),
                y=units(zero_y if negative else zero_y - height),
                width=units(slot - gap),
                height=units(height),
                label_x=units(x + (slot - gap) / 2),
                label=point.label,
                sublabel=point.sublabel,
                title=point.title,
                current=point.current,
                negative=negative,
            )
        )
    figures = [floor, 0, top] if floor < 0 else [0, top // 2, top]
    ticks = [
        Tick(y=units(zero_y - per_unit * figure), label=axis_label(figure)) for figure in figures
    ]
    return BarChart(
        bars=bars,
        ticks=ticks,
        empty=highest == 0 and lowest == 0,
        zero_y=units(zero_y),
        unit=unit,
    )
