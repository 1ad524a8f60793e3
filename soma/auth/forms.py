"""Sign-up and log-in forms."""

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, RadioField, SelectChoice, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from soma.auth.service import MIN_PASSWORD_LENGTH
from soma.forms import bounded, email_field, strip
from soma.models import User


class SignupForm(FlaskForm):
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
    password = PasswordField(
        "Password",
        validators=[
            DataRequired(message="Choose a password."),
            Length(
                min=MIN_PASSWORD_LENGTH,
                max=256,
                message=f"Use at least {MIN_PASSWORD_LENGTH} characters.",
            ),
        ],
    )
    confirm = PasswordField(
        "Repeat password",
        validators=[EqualTo("password", message="The two passwords differ.")],
    )


class LoginForm(FlaskForm):
    email = EmailField(
        "Email",
        filters=[strip],
        validators=[DataRequired(message="Enter your email address."), *bounded(User.email)],
    )
    password = PasswordField("Password", validators=[DataRequired(message="Enter your password.")])
