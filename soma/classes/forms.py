"""The booking form. Times are UTC: the form says so, and the server's clock decides."""

from flask_wtf import FlaskForm
from wtforms import DateTimeLocalField, HiddenField, SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, InputRequired, Length

from soma.forms import ActionForm, strip  # noqa: F401 (the controls' form)
from soma.models.classes import DURATIONS


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class BookingForm(FlaskForm):
    teacher = SelectField(
        "Teacher", coerce=_int_or_none, validators=[InputRequired("Choose a teacher.")]
    )
    title = StringField(
        "What the class is about (optional)",
        filters=[strip],
        validators=[Length(max=120, message="Keep the title under 120 characters.")],
    )
    start = DateTimeLocalField(
        "Start (UTC)",
        format=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"],
        validators=[DataRequired("Choose a date and a time, in UTC.")],
    )
    duration = SelectField(
        "Duration",
        coerce=_int_or_none,
        choices=[SelectChoice(minutes, f"{minutes} minutes") for minutes in DURATIONS],
        default=60,
        validate_choice=False,  # the service says which durations exist
        validators=[InputRequired("Choose a duration.")],
    )
    key = HiddenField()

    def __init__(self, *args, teachers=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher.choices = [SelectChoice("", "Choose a teacher")] + [
            SelectChoice(teacher.id, teacher.display_name) for teacher in teachers
        ]
        self.teacher.validate_choice = False  # the service says who is a teacher
