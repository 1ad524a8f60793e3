"""The buy form: a package or a custom number of tokens, and a payment method."""

from flask_wtf import FlaskForm
from wtforms import RadioField, SelectChoice, StringField
from wtforms.validators import InputRequired, Optional

from soma.forms import KeyField, Printable, strip
from soma.gifts.forms import StrictIntegerField
from soma.models import Purchase
from soma.models.purchase import PROVIDER_LABELS

CUSTOM = "custom"


class BuyForm(FlaskForm):
    package = RadioField("What to buy", validators=[InputRequired("Choose what to buy.")])
    custom_tokens = StrictIntegerField("Tokens", validators=[Optional()])
    provider = RadioField("Pay with", validators=[InputRequired("Choose how to pay.")])
    # (no column length: a number is typed with spaces and dashes; daraja.normalise_phone
    # decides, and the stored number is its 12 digits)
    phone = StringField("M-Pesa phone number", filters=[strip], validators=[Printable()])
    key = KeyField(Purchase.idempotency_key)

    def __init__(self, *args, quotes=(), providers=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.package.choices = [SelectChoice(str(q.package_id), str(q.package_id)) for q in quotes]
        self.package.choices.append(SelectChoice(CUSTOM, "Another amount"))
        self.provider.choices = [SelectChoice(p.value, PROVIDER_LABELS[p]) for p in providers]
        if providers and not self.provider.data:
            self.provider.data = providers[0].value
        self.package.validate_choice = False  # the service says what is on sale
        self.provider.validate_choice = False  # and which providers are offered
