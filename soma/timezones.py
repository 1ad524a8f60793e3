"""Users' time zones: the IANA names, a stored time in a viewer's zone, a local time as UTC.

The database stores UTC (soma.models.base.UTCDateTime); people read and type their own
zone's wall-clock time. The zone rules come from the pinned `tzdata` package where the
machine has none of its own, so the same names work everywhere.

A local time is not always one instant: when the clocks go forward an hour of wall-clock
times never happens (a gap), and when they go back an hour happens twice (an overlap).
`to_utc` refuses both, saying which, rather than guessing which instant was meant.
"""

from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

DEFAULT = "UTC"
MAX_NAME_LENGTH = 64  # users.time_zone; the longest IANA name is about half of it


@cache
def zone_names() -> tuple[str, ...]:
    """Every IANA zone name this machine knows, sorted; not the aliases that name no place
    ("localtime" is whatever the server's zone is, "Factory" no zone at all)."""
    return tuple(sorted(available_timezones() - {"localtime", "Factory"}))


@cache
def _known() -> frozenset[str]:
    return frozenset(zone_names())


def is_zone(name) -> bool:
    """Whether `name` is a zone name we accept (checked before anything is loaded)."""
    return isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and name in _known()


def zone_or_default(name) -> str:
    """`name` when it is a known zone, else UTC: a browser's guess never fails a form."""
    return name if is_zone(name) else DEFAULT


@cache
def zone(name: str) -> ZoneInfo:
    """The rules of a known zone (UTC for anything else)."""
    try:
        return ZoneInfo(zone_or_default(name))
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT)


def zone_of(user) -> str:
    """The zone `user` reads times in: their own, or UTC for nobody or an anonymous user."""
    if user is None or not getattr(user, "is_authenticated", False):
        return DEFAULT
    return zone_or_default(getattr(user, "time_zone", None))


def viewer_zone() -> str:
    """The zone of whoever is looking: the logged-in user in a request, else UTC (the
    sweeper, the command line, an anonymous visitor)."""
    from flask import has_request_context
    from flask_login import current_user

    if not has_request_context():
        return DEFAULT
    return zone_of(current_user)


def local(moment: datetime, name: str) -> datetime:
    """A stored (aware) time as the wall-clock time in zone `name`."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # stored times are UTC by contract
    return moment.astimezone(zone(name))


def abbreviation(moment: datetime, name: str) -> str:
    """The zone's short name at `moment`: "EAT", "BST", or an offset such as "+04"."""
    return local(moment, name).tzname() or name


def label(name: str, at: datetime | None = None) -> str:
    """A zone as a form names it: "Africa/Nairobi (EAT)"."""
    short = abbreviation(at or datetime.now(UTC), name)
    return name if short == name else f"{name} ({short})"


def grouped() -> list[tuple[str, list[str]]]:
    """The zone names grouped by their region ("Africa", "America", ...), for a select."""
    groups: dict[str, list[str]] = {}
    for name in zone_names():
        region = name.split("/", 1)[0] if "/" in name else "Other"
        groups.setdefault(region, []).append(name)
    return sorted(groups.items())


class LocalTimeProblem(ValueError):
    """A local date and time that is not exactly one instant in its zone."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _change(naive: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """Around `naive` (a gap or an overlap), the wall-clock times just before and just
    after the clocks change: (01:00, 02:00) for London's spring night."""
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    low, high = min(first, second), max(first, second)
    before = low.astimezone(tz).utcoffset()
    moment = low
    while moment <= high and moment.astimezone(tz).utcoffset() == before:
        moment += timedelta(minutes=1)
    after = moment.astimezone(tz).utcoffset()
    wall = moment.replace(tzinfo=None)
    return wall + before, wall + after


def _spoken(naive: datetime) -> str:
    return f"{naive:%H:%M} on {naive.day} {naive:%B %Y}"


def to_utc(naive: datetime, name: str) -> datetime:
    """The UTC instant of wall-clock time `naive` in zone `name`.

    Raises LocalTimeProblem when that time never happens there (the clocks go forward
    over it) or happens twice (they go back over it).
    """
    tz = zone(name)
    naive = naive.replace(tzinfo=None, fold=0)
    early = naive.replace(tzinfo=tz, fold=0)
    late = naive.replace(tzinfo=tz, fold=1)
    if early.utcoffset() == late.utcoffset():
        try:
            return early.astimezone(UTC)
        except OverflowError:  # the first or last day a datetime holds
            raise LocalTimeProblem("Choose a date between the years 1 and 9999.") from None
    before, after = _change(naive, tz)
    round_trip = early.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    if round_trip != naive:
        raise LocalTimeProblem(
            f"{_spoken(naive)} does not exist in {name}: the clocks go forward from "
            f"{before:%H:%M} to {after:%H:%M} that night. Choose a time outside that gap."
        )
    raise LocalTimeProblem(
        f"{_spoken(naive)} happens twice in {name}: the clocks go back from "
        f"{before:%H:%M} to {after:%H:%M} that night. Choose a time outside that hour."
    )
