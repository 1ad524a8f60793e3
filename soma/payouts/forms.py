"""The payout method form, the withdrawal form and its confirmation, and the admin's forms."""

from flask_wtf import FlaskForm
from wtforms import RadioField, SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, InputRequired, Length

from soma.forms import EXPIRED, CountField, IdSelectField, KeyField, Printable, bounded, strip
from soma.models import PayoutMethod, Withdrawal
from soma.models.payout import METHOD_LABELS, MethodKind
from soma.providers.stripe_connect import CONNECT_COUNTRIES


class AddMethodForm(FlaskForm):
    kind = RadioField("Kind of method", validators=[InputRequired("Choose a kind of method.")])
    account_holder = StringField(
        "Account holder", filters=[strip], validators=bounded(PayoutMethod.account_holder)
    )
    bank_name = StringField("Bank", filters=[strip], validators=bounded(PayoutMethod.bank_name))
    # (typed with spaces and dashes: methods.normalise_account_number decides what is kept)
    account_number = StringField(
        "Account number",
        filters=[strip],
        validators=[Printable(), Length(max=64, message="That is too long for an account number.")],
    )
    phone = StringField(
        "M-Pesa phone number",
        filters=[strip],
        validators=[Printable(), Length(max=32, message="That is too long for a phone number.")],
    )

    # Stripe makes the connected account in this country; it cannot be changed later.
    country = SelectField(
        "Country of the bank account Stripe pays out to",
        choices=[
            SelectChoice("", "Choose a country"),
            *(
                SelectChoice(code, name)
                for code, name in sorted(CONNECT_COUNTRIES.items(), key=lambda c: c[1])
            ),
        ],
        validate_choice=False,  # checked only for Stripe (soma.payouts.routes.add_method)
    )

    def __init__(self, *args, kinds=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.kind.choices = [SelectChoice(kind.value, METHOD_LABELS[kind]) for kind in kinds]
        if kinds and not self.kind.data:
            self.kind.data = kinds[0].value
        self.kind.validate_choice = False  # the service says which kinds are offered


def method_kind(value: str | None) -> MethodKind | None:
    try:
        return MethodKind(value)
    except ValueError:
        return None


class WithdrawForm(FlaskForm):
    amount = StringField(
        "Amount in US dollars",
        filters=[strip],
        validators=[
            DataRequired("Enter how many US dollars to withdraw."),
            Printable(),
            Length(max=32, message="Enter an amount such as 25.00."),
        ],
    )
    method = IdSelectField(
        "Pay to",
        column=PayoutMethod.id,
        message="Choose one of your payout methods.",
        validators=[InputRequired("Choose one of your payout methods.")],
    )

    def __init__(self, *args, methods=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.method.choices = [(method.id, method.describe) for method in methods]
        self.method.validate_choice = False  # the service says which methods are the teacher's


class ConfirmWithdrawalForm(WithdrawForm):
    """The confirmation step: the same fields, hidden, the form's one-time key, and what the
    page quoted (the tokens held, and for M-Pesa the shillings sent), so that a rate that
    moved in between is refused rather than holding what the teacher never saw."""

    key = KeyField(Withdrawal.key, validators=[DataRequired("This form has expired.")])
    tokens = CountField(Withdrawal.tokens, validators=[InputRequired(EXPIRED)])
    shillings = CountField(Withdrawal.amount_kes)

    @property
    def expired(self) -> bool:
        """Whether a field only the confirmation page fills in was refused (reload it)."""
        return bool(self.key.errors or self.tokens.errors or self.shillings.errors)


class RejectWithdrawalForm(FlaskForm):
    reason = StringField(
        "Why is it rejected? (the teacher reads this)",
        filters=[strip],
        validators=[
            DataRequired("Say why the withdrawal is rejected."),
            *bounded(Withdrawal.failure_reason, "the reason"),
        ],
    )


class PaidWithdrawalForm(FlaskForm):
    reference = StringField(
        "The bank's reference for the transfer",
        filters=[strip],
        validators=[
            DataRequired("Enter the bank's reference for the transfer."),
            *bounded(Withdrawal.provider_reference, "the reference"),
        ],
    )
