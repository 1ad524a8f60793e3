"""Form pieces every feature shares: bounded text, ids and one-time keys (see soma.inputs)."""

from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, SelectField
from wtforms.validators import DataRequired, Email, Length, ValidationError

from soma import inputs
from soma.models import User

EXPIRED = "This form has expired. Reload the page and try again."


def strip(value: str | None) -> str | None:
    """Drop the spaces a user typed around a value."""
    return value.strip() if isinstance(value, str) else value


class Printable:
    """Refuse NUL and other control characters; a multi-line field may hold newlines and tabs."""

    def __init__(self, multiline: bool = False):
        self.multiline = multiline

    def __call__(self, form, field) -> None:
        if isinstance(field.data, str) and inputs.control_characters(field.data, self.multiline):
            raise ValidationError(
                "Remove the control characters (such as NUL or a line break) from this field."
            )


def fits(column: inputs.ColumnLike, what: str = "it") -> Length:
    """The longest text `column` holds, as a Length validator that says so."""
    limit = inputs.column_length(column)
    return Length(max=limit, message=f"Keep {what} to {limit} characters or fewer.")


def bounded(column: inputs.ColumnLike, what: str = "it", multiline: bool = False) -> list:
    """The validators of a text field stored in `column`: printable, and no longer."""
    return [Printable(multiline), fits(column, what)]


def email_field(label: str, missing: str) -> EmailField:
    """A required, trimmed email field; `missing` is what an empty one says."""
    return EmailField(
        label,
        filters=[strip],
        validators=[
            DataRequired(message=missing),
            *bounded(User.email, "the email"),
            Email(message="Enter a valid email address.", check_deliverability=False),
        ],
    )


class KeyField(HiddenField):
    """A form's one-time key (its idempotency key), stored in `column`.

    A key that is not one this site makes (other characters, too long) is refused with
    "reload", and emptied so the page shows the form again with a fresh key.
    """

    def __init__(self, column: inputs.ColumnLike, **kwargs):
        super().__init__(**kwargs)
        self.column = column

    def pre_validate(self, form) -> None:
        if self.data and not inputs.is_key(self.data, self.column):
            self.data = ""
            raise ValidationError(EXPIRED)


class CountField(HiddenField):
    """A whole number a confirmation step carries back (what it quoted), stored in `column`.

    Anything that is not one (a sign, a fraction, more than the column holds) is refused
    as an expired form, with the data left None: it is compared, never stored.
    """

    def __init__(self, column: inputs.ColumnLike, **kwargs):
        super().__init__(**kwargs)
        self.column = column

    def process_formdata(self, valuelist) -> None:
        if valuelist:
            self.data = inputs.parse_count(valuelist[0], self.column)
            if self.data is None and valuelist[0] != "":
                raise ValueError(EXPIRED)


class IdSelectField(SelectField):
    """A select of rows by id (a teacher, say): a value `column` cannot hold is refused as
    `message`, never sent to the database."""

    def __init__(self, label=None, column: inputs.ColumnLike = User.id, message="", **kwargs):
        kwargs.setdefault("coerce", self._coerce)
        super().__init__(label, **kwargs)
        self.column, self.message = column, message or "Choose one of the options."

    def _coerce(self, value):
        """An id from the form (text) or the choices (an int); None for none, or a bad one."""
        return None if value is None or value == "" else inputs.parse_id(value, self.column)

    def process_formdata(self, valuelist) -> None:
        if valuelist:
            self.data = self._coerce(valuelist[0])
            if self.data is None and valuelist[0] != "":
                raise ValueError(self.message)


class ActionForm(FlaskForm):
    """A button that changes something: only its CSRF token."""
