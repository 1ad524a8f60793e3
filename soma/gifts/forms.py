"""The gift form, and its confirmation step, which carries the same fields and a nonce."""

from flask_wtf import FlaskForm
from wtforms import HiddenField, IntegerField, StringField
from wtforms.validators import DataRequired, InputRequired, NumberRange, Regexp

from soma.forms import bounded, email_field, strip
from soma.models import Gift

WHOLE_NUMBER = "Enter a whole number of tokens, 1 or more."


class StrictIntegerField(IntegerField):
    """An integer field that refuses "1.5", "1e3" and "10 tokens" with one clear message."""

    def process_formdata(self, valuelist):
        if valuelist:
            text = valuelist[0].strip()
            if not text.isdigit() or not text.isascii():
                self.data = None
                raise ValueError(WHOLE_NUMBER)
            self.data = int(text)


class GiftForm(FlaskForm):
    email = email_field(
        "Recipient's email", missing="Enter the email of the student you are giving to."
    )
    tokens = StrictIntegerField(
        "Tokens",
        validators=[
            InputRequired(message=WHOLE_NUMBER),
            NumberRange(min=1, max=10**9, message=WHOLE_NUMBER),
        ],
    )
    note = StringField(
        "Note (optional)",
        filters=[strip],
        validators=bounded(Gift.note, "the note"),
    )


class ConfirmGiftForm(GiftForm):
    nonce = HiddenField(
        validators=[DataRequired(), Regexp(r"^[A-Za-z0-9_-]{16,64}$")],
    )
