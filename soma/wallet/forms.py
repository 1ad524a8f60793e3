"""The history filters: a GET form, so the URL carries them and links keep working."""

from flask_wtf import FlaskForm
from wtforms import DateField, SelectChoice, SelectField
from wtforms.validators import Optional, ValidationError

from soma.models import ENTRY_KIND_LABELS


class HistoryFilterForm(FlaskForm):
    class Meta:
        csrf = False  # a GET that changes nothing

    kind = SelectField(
        "Type",
        choices=[SelectChoice("", "All types")]
        + [SelectChoice(kind.value, label) for kind, label in ENTRY_KIND_LABELS.items()],
        default="",
        # (no Optional(): it would clear the "not a valid choice" of a blank " ")
    )
    start = DateField("From", validators=[Optional()])
    end = DateField("To", validators=[Optional()])

    def validate_end(self, field):
        if field.data and self.start.data and field.data < self.start.data:
            raise ValidationError("The end date is before the start date.")
