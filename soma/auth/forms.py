"""Sign-up, log-in and password forms."""

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    EmailField,
    HiddenField,
    PasswordField,
    RadioField,
    SelectChoice,
    SelectField,
    StringField,
)
from wtforms.validators import DataRequired, EqualTo, Length, ValidationError

from soma import timezones
from soma.auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, password_problem
from soma.forms import bounded, email_field, strip
from soma.models import User

NEW_PASSWORD_HINT = (
    f"At least {MIN_PASSWORD_LENGTH} characters, and not a common password: "
    "a few unrelated words work well."
)


class AcceptablePassword:
    """Refuse a new password that the password rule refuses, saying why.

    The form's `account_details()` gives the account's own email and name, which
    the password must not be made of.
    """

    def __call__(self, form, field):
        problem = password_problem(field.data or "", form.account_details())
        if problem is not None:
            raise ValidationError(problem)


def new_password_field(label: str) -> PasswordField:
    return PasswordField(
        label, validators=[DataRequired(message="Choose a password."), AcceptablePassword()]
    )


def repeat_password_field(label: str, of: str) -> PasswordField:
    return PasswordField(label, validators=[EqualTo(of, message="The two passwords differ.")])


class SignupForm(FlaskForm):
    password_hint = NEW_PASSWORD_HINT
    role = RadioField(
        "I am a",
        choices=[
            SelectChoice("student", "Student: I want to learn"),
            SelectChoice("teacher", "Teacher: I want to teach"),
        ],
        default="student",
        validators=[DataRequired(message="Choose student or teacher.")],
    )
    display_name = StringField(
        "Display name",
        filters=[strip],
        validators=[
            DataRequired(message="Tell us your name."),
            *bounded(User.display_name, "your name"),
        ],
    )
    email = email_field("Email", missing="Enter your email address.")
    password = new_password_field("Password")
    confirm = repeat_password_field("Repeat password", of="password")
    # Filled by static/js/timezone.js with the browser's zone. Only a guess: anything
    # that is not a zone we know (no script, a made-up or oversized value) becomes UTC,
    # and the user can change it at /account.
    time_zone = HiddenField(filters=[timezones.zone_or_default], default=timezones.DEFAULT)

    def account_details(self) -> tuple[str, ...]:
        return (self.email.data or "", self.display_name.data or "")


class KnownZone:
    """Refuse a time zone that is not one of the listed IANA names (checked in memory)."""

    def __call__(self, form, field) -> None:
        if not timezones.is_zone(field.data):
            raise ValidationError("Choose a time zone from the list.")


class AccountForm(FlaskForm):
    """The account's settings: its time zone and whether notifications go by email."""

    time_zone = SelectField(
        "Time zone",
        validate_choice=False,  # KnownZone checks against the same list, in a set
        validators=[DataRequired("Choose a time zone."), KnownZone()],
    )
    email_notifications = BooleanField("Email me my notifications")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.time_zone.choices = {
            region: [SelectChoice(name, name.replace("_", " ")) for name in names]
            for region, names in timezones.grouped()
        }


class LoginForm(FlaskForm):
    email = EmailField(
        "Email",
        filters=[strip],
        validators=[DataRequired(message="Enter your email address."), *bounded(User.email)],
    )
    password = PasswordField(
        "Password",
        validators=[
            DataRequired(message="Enter your password."),
            Length(max=MAX_PASSWORD_LENGTH, message="That password is longer than any we keep."),
        ],
    )


class ForgotPasswordForm(FlaskForm):
    email = email_field("Email", missing="Enter the email address of your account.")


class ResetPasswordForm(FlaskForm):
    password_hint = NEW_PASSWORD_HINT
    password = new_password_field("New password")
    confirm = repeat_password_field("Repeat the new password", of="password")

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def account_details(self) -> tuple[str, ...]:
        return (self.user.email, self.user.display_name)


class PasswordChangeForm(FlaskForm):
    password_hint = NEW_PASSWORD_HINT
    current = PasswordField(
        "Current password",
        validators=[
            DataRequired(message="Enter your current password."),
            Length(max=MAX_PASSWORD_LENGTH, message="That password is longer than any we keep."),
        ],
    )
    password = new_password_field("New password")
    confirm = repeat_password_field("Repeat the new password", of="password")

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def account_details(self) -> tuple[str, ...]:
        return (self.user.email, self.user.display_name)
