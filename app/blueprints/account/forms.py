"""Forms of the profile pages."""

from flask_wtf import FlaskForm
from wtforms import PasswordField
from wtforms.validators import DataRequired
from wtforms.validators import EqualTo
from wtforms.validators import Length


class PasswordChangeForm(FlaskForm):
    current_password = PasswordField("Current password", validators=[Length(max=256)])
    new_password = PasswordField("New password", validators=[DataRequired(), Length(max=256)])
    confirm_password = PasswordField(
        "Repeat new password",
        validators=[DataRequired(), EqualTo("new_password", message="The passwords differ.")],
    )


class EndSessionForm(FlaskForm):
    """Only the CSRF token: the session id is in the URL."""


class ReauthenticateForm(FlaskForm):
    """The password again, before linking when the last sign-in is not recent."""

    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
