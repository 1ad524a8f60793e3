"""The booking form and the class's meeting link. The start is a local date and time in the
student's own zone (the form says which); the route turns it into UTC
(soma.timezones.to_utc), refusing a time the clocks skip or repeat."""

from urllib.parse import urlsplit

from flask_wtf import FlaskForm
from wtforms import DateTimeLocalField, SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, InputRequired, ValidationError

from soma.forms import (
    ActionForm,  # noqa: F401 (the controls' form)
    IdSelectField,
    KeyField,
    bounded,
    strip,
)
from soma.models import ClassSession, User
from soma.models.classes import DURATIONS


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class BookingForm(FlaskForm):
    teacher = IdSelectField(
        "Teacher",
        column=User.id,
        message="Choose a teacher.",
        validators=[InputRequired("Choose a teacher.")],
    )
    title = StringField(
        "What the class is about (optional)",
        filters=[strip],
        validators=bounded(ClassSession.title, "the title"),
    )
    start = DateTimeLocalField(
        "Start",
        format=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"],
        validators=[DataRequired("Choose a date and a time.")],
    )
    duration = SelectField(
        "Duration",
        coerce=_int_or_none,
        choices=[SelectChoice(minutes, f"{minutes} minutes") for minutes in DURATIONS],
        default=60,
        validate_choice=False,  # the service says which durations exist
        validators=[InputRequired("Choose a duration.")],
    )
    key = KeyField(ClassSession.booking_key)

    def __init__(self, *args, teachers=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher.choices = [SelectChoice("", "Choose a teacher")] + [
            SelectChoice(teacher.id, teacher.display_name) for teacher in teachers
        ]
        self.teacher.validate_choice = False  # the service says who is a teacher


# Hosts a meeting link may name over plain http: a teacher's own machine, in development.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def meeting_url_problem(url: str) -> str | None:
    """Why `url` cannot be a class's meeting link, or None: an https:// address of a
    host (http:// only for this machine), no spaces, no user name or password in it."""
    bad = "Give the meeting's full https:// address, such as https://meet.example.com/abc."
    if any(char.isspace() for char in url):
        return "Remove the spaces from the link."
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return bad
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        return bad
    if scheme == "http" and host not in LOCAL_HOSTS:
        return "Use an https:// link: the class's link must be a secure address."
    if parts.username is not None or parts.password is not None:
        return "Remove the user name or password from the link."
    return None


class MeetingLinkForm(FlaskForm):
    """The teacher's link to where the class happens; empty removes it."""

    meeting_url = StringField(
        "Meeting link",
        filters=[strip],
        validators=bounded(ClassSession.meeting_url, "the link"),
    )

    def validate_meeting_url(self, field) -> None:
        if field.data:
            problem = meeting_url_problem(field.data)
            if problem:
                raise ValidationError(problem)
