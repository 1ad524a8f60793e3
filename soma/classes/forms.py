"""The booking form. The start is a local date and time in the student's own zone (the form
says which); the route turns it into UTC (soma.timezones.to_utc), refusing a time the clocks
skip or repeat."""

from flask_wtf import FlaskForm
from wtforms import DateTimeLocalField, SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, InputRequired

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
