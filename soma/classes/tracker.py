"""What the class tracker shows, for one viewer at one moment: pure, no database.

The timer fragment is rendered from this on every poll, so the server tells the
truth in every state; static/js/timer.js only ticks the figures marked `tick`
between two polls. Each state shows what matters in it:

- scheduled: a countdown to the start and to when the teacher may start it (the
  machine's START_WINDOW), then how long it may still be started;
- in progress: elapsed and time left;
- paused: elapsed and time left, both still, how long it has been paused and when
  the pause limit ends it;
- final: the active time, what was charged and what was returned; never "time left".

It speaks to the viewer: the student reads "you" and "your teacher", the teacher
"you" and "your student", an admin the third person.
"""

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from soma.classes.machine import START_WINDOW, EndReason, active_at, pro_rata
from soma.classes.service import clock_of
from soma.models.classes import ClassStatus
from soma.money import tokens

# How often an open tracker asks the server, in seconds: every second while the class
# runs or may be started at any moment; less often while it can only wait (its start
# window not yet open, or past): then only a cancel can change it.
POLL_LIVE = 1
POLL_WAITING = 10
# The start window must be this near for the tracker to poll every second again.
NEAR = timedelta(minutes=2)
# A page without JavaScript reloads itself this often while the class is not final.
NO_SCRIPT_REFRESH = 15


class Viewer(enum.StrEnum):
    STUDENT = "student"
    TEACHER = "teacher"
    ADMIN = "admin"  # an admin, or anyone not in the class


def viewer_of(session, user_id: int) -> Viewer:
    if user_id == session.student_id:
        return Viewer.STUDENT
    if user_id == session.teacher_id:
        return Viewer.TEACHER
    return Viewer.ADMIN


# Plain slotted dataclasses, not frozen ones: built on every poll of every open tracker.
@dataclass(slots=True)
class Figure:
    """One figure of the timer: a duration (`seconds`) or a text (tokens)."""

    label: str
    testid: str
    seconds: int | None = None
    text: str | None = None
    # "up" or "down": the script moves it by a second a second until the next poll.
    tick: str = ""
    # "clock" (mm:ss, minutes unbounded) or "countdown" (days, hours when needed).
    style: str = "clock"
    note: str = ""

    @property
    def shown(self) -> str:
        if self.text is not None:
            return self.text
        return countdown_text(self.seconds) if self.style == "countdown" else mm_ss(self.seconds)


def mm_ss(seconds: int) -> str:
    """Active time as the tracker shows it: 05:07, 75:00."""
    seconds = max(0, seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def countdown_text(seconds: int) -> str:
    """A wait: 04:05, 1:04:05, 2 d 01:04:05 (the script writes it the same way)."""
    seconds = max(0, seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes:02d}:{secs:02d}"


@dataclass(slots=True)
class Tracker:
    """The timer of a class for one viewer at `now`."""

    session: object  # a ClassSession or a service.ClassView
    viewer: Viewer
    phase: str  # scheduled, open, late, expired, in_progress, paused, final
    figures: list[Figure]
    active: int
    percent: int
    show_progress: bool
    token_status: str
    lines: list[str]
    end_reason: str | None
    poll: int | None  # seconds between polls; None once final

    @property
    def is_final(self) -> bool:
        return self.poll is None


def _whose(viewer: Viewer, student: str, teacher: str, admin: str) -> str:
    if viewer is Viewer.STUDENT:
        return student
    return teacher if viewer is Viewer.TEACHER else admin


def tracker_for(session, viewer: Viewer, now: datetime, pause_limit: timedelta) -> Tracker:
    """The timer of `session` as `viewer` sees it at `now`."""
    clock = clock_of(session)
    status = ClassStatus(session.status)
    planned = session.planned_seconds
    active = active_at(clock, now)
    build = _BUILDERS.get(status, _final)
    phase, figures, token_status, lines, poll = build(session, viewer, now, active, pause_limit)
    return Tracker(
        session=session,
        viewer=viewer,
        phase=phase,
        figures=figures,
        active=active,
        percent=100 * active // planned,
        show_progress=status not in (ClassStatus.SCHEDULED, ClassStatus.CANCELLED),
        token_status=token_status,
        lines=lines,
        end_reason=_end_reason(session, viewer, pause_limit),
        poll=poll,
    )


def _scheduled(session, viewer, now, active, pause_limit):
    start = session.scheduled_start
    opens = start - START_WINDOW
    closes = start + timedelta(seconds=session.planned_seconds)
    cost = tokens(session.cost_tokens)
    token_status = _whose(
        viewer,
        f"{cost} of yours will be held when the class starts; you pay only for its active time.",
        f"You will earn {cost} if the class runs its full time.",
        f"{cost} will be held from the student when the class starts.",
    )
    if now >= closes:
        lines = [
            _whose(
                viewer,
                "Your teacher did not start this class by its booked end, and it can no "
                "longer start. Cancel it to free the time; nothing of yours was held.",
                "You did not start this class by its booked end, and it can no longer start. "
                "Cancel it; your student was charged nothing.",
                "The teacher did not start this class by its booked end, and it can no "
                "longer start. Nothing was held.",
            )
        ]
        return "expired", [], "No tokens were held.", lines, POLL_WAITING
    figures, lines = [], []
    if now < start:
        figures.append(
            Figure(
                "Starts in",
                "starts-in",
                int((start - now).total_seconds()),
                tick="down",
                style="countdown",
            )
        )
    else:
        figures.append(
            Figure(
                "Due to start",
                "late",
                int((now - start).total_seconds()),
                tick="up",
                style="countdown",
                note="ago",
            )
        )
    if now < opens:
        label = _whose(
            viewer,
            "Your teacher can start it in",
            "You can start it in",
            "The teacher can start it in",
        )
        figures.append(
            Figure(
                label,
                "start-opens-in",
                int((opens - now).total_seconds()),
                tick="down",
                style="countdown",
            )
        )
        lines.append(
            _whose(
                viewer,
                "Your teacher can start the class from 10 minutes before its start.",
                "You can start the class from 10 minutes before its start.",
                "The teacher can start the class from 10 minutes before its start.",
            )
        )
        poll = POLL_LIVE if opens - now <= NEAR else POLL_WAITING
        return "scheduled", figures, token_status, lines, poll
    label = _whose(
        viewer,
        "Your teacher can start it for",
        "You can start it for",
        "The teacher can start it for",
    )
    figures.append(
        Figure(
            label,
            "start-closes-in",
            int((closes - now).total_seconds()),
            tick="down",
            style="countdown",
        )
    )
    lines.append(
        _whose(
            viewer,
            "Your teacher can start the class now.",
            "You can start the class now.",
            "The teacher can start the class now.",
        )
    )
    return ("open" if now < start else "late"), figures, token_status, lines, POLL_LIVE


def _running_figures(session, active: int, ticking: bool, left_note: str = "") -> list[Figure]:
    left = session.planned_seconds - active
    return [
        Figure("Elapsed", "elapsed", active, tick="up" if ticking else ""),
        Figure("Time left", "left", left, tick="down" if ticking else "", note=left_note),
    ]


def _so_far(session, viewer, active: int) -> str:
    cost = session.cost_tokens
    so_far = tokens(pro_rata(cost, active, session.planned_seconds))
    return _whose(
        viewer,
        f"{tokens(cost)} of yours are held for this class. Ended now, it would cost you "
        f"{so_far}, and the rest would come back to you.",
        f"Ended now, this class would earn you {so_far}; {tokens(cost)} if it runs its full time.",
        f"{tokens(cost)} held from the student; {so_far} charged if it ended now.",
    )


def _in_progress(session, viewer, now, active, pause_limit):
    return (
        "in_progress",
        _running_figures(session, active, True),
        _so_far(session, viewer, active),
        [],
        POLL_LIVE,
    )


def _paused(session, viewer, now, active, pause_limit):
    paused_for = max(0, int((now - session.paused_at).total_seconds()))
    limit = int(pause_limit.total_seconds())
    figures = [
        *_running_figures(session, active, False, left_note="paused"),
        Figure("Paused for", "paused-for", paused_for, tick="up"),
        Figure("Ends on its own in", "pause-ends-in", limit - paused_for, tick="down"),
    ]
    lines = [
        _whose(
            viewer,
            "Your teacher paused the class: its clock is stopped and paused time is not charged.",
            "You paused the class: its clock is stopped and paused time is not charged.",
            "The class is paused: its clock is stopped and paused time is not charged.",
        ),
        f"A class paused for {limit // 60} minutes ends early, charged for its active time.",
    ]
    return "paused", figures, _so_far(session, viewer, active), lines, POLL_LIVE


def _final(session, viewer, now, active, pause_limit):
    cost = session.cost_tokens
    charged = session.charged_tokens or 0
    cancelled = session.status == ClassStatus.CANCELLED
    returned = 0 if cancelled else cost - charged
    figures = [
        Figure(
            "Active time",
            "active",
            session.active_seconds,
            note=f"of {mm_ss(session.planned_seconds)}",
        ),
        Figure(
            _whose(viewer, "You paid", "You earned", "Paid to the teacher"),
            "charged",
            text=tokens(charged),
        ),
        Figure(
            _whose(
                viewer, "Returned to you", "Returned to your student", "Returned to the student"
            ),
            "returned",
            text=tokens(returned),
        ),
    ]
    # The figures say what moved; the line only a cancel's "nothing".
    status_line = "No tokens moved: nothing was held and nothing was charged." if cancelled else ""
    return "final", figures, status_line, [], None


_BUILDERS = {
    ClassStatus.SCHEDULED: _scheduled,
    ClassStatus.IN_PROGRESS: _in_progress,
    ClassStatus.PAUSED: _paused,
}


def _end_reason(session, viewer, pause_limit) -> str | None:
    if not session.end_reason:
        return None
    reason = EndReason(session.end_reason)
    if reason == EndReason.COMPLETED:
        return "The class ran its full time."
    if reason == EndReason.ENDED_BY_TEACHER:
        return _whose(
            viewer,
            "Your teacher ended the class early; you paid for its active time only.",
            "You ended the class early; you earned for its active time.",
            "The teacher ended the class early.",
        )
    if reason == EndReason.PAUSED_TOO_LONG:
        minutes = int(pause_limit.total_seconds()) // 60
        return (
            f"The class stayed paused for {minutes} minutes and ended early, "
            "charged for its active time."
        )
    if reason == EndReason.ABORTED:
        return _whose(
            viewer,
            "The class was aborted: you paid nothing, and every held token came back to you.",
            "The class was aborted: your student paid nothing, and you earned nothing.",
            "The class was aborted: the student paid nothing.",
        )
    return "The class was cancelled before it started."
