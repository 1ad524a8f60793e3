"""The twelve-month earnings chart: a bar per month, drawn by the shared chart (soma.charts)."""

from soma import charts
from soma.earnings.service import Month
from soma.money import usd

# The scale's top in cents is at least $10, so that an empty year still has an axis.
SMALLEST_TOP = 1000


def scale_top(highest_cents: int) -> int:
    """The axis's top in cents: a round figure at or above the highest month."""
    return charts.scale_top(highest_cents, SMALLEST_TOP)


short_usd = charts.short_usd


def bar_chart(months: list[Month]) -> charts.BarChart:
    """The bars of `months` (oldest first; the last is this month) and the axis ticks."""
    points = []
    for i, month in enumerate(months):
        totals = month.totals
        # The year under each January, and under the first month unless a January is
        # close enough to say it (the labels would touch).
        first_of_year = month.start.month == 1 or (i == 0 and months[0].start.month < 11)
        classes = f"{totals.classes:,} class{'es' if totals.classes != 1 else ''}"
        so_far = " so far" if i == len(months) - 1 else ""
        points.append(
            charts.Point(
                value=totals.cents,
                label=month.start.strftime("%b"),
                sublabel=month.start.strftime("%Y") if first_of_year else None,
                title=f"{month.start:%B %Y}{so_far}: {usd(totals.cents)} from {classes}",
                current=i == len(months) - 1,
            )
        )
    return charts.bar_chart(points, charts.short_usd, SMALLEST_TOP)
