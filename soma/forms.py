"""Form pieces every feature shares."""

from flask_wtf import FlaskForm
from wtforms import EmailField
from wtforms.validators import DataRequired, Email, Length


def strip(value: str | None) -> str | None:
    """Drop the spaces a user typed around a value."""
    return value.strip() if isinstance(value, str) else value


def email_field(label: str, missing: str) -> EmailField:
    """A required, trimmed email field; `missing` is what an empty one says."""
    return EmailField(
        label,
        filters=[strip],
        validators=[
            DataRequired(message=missing),
            Email(message="Enter a valid email address.", check_deliverability=False),
            Length(max=254),
        ],
    )


class ActionForm(FlaskForm):
    """A button that changes something: only its CSRF token."""
