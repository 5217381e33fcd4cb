"""Forms of the sign-in pages."""

from flask_wtf import FlaskForm
from wtforms import EmailField
from wtforms import HiddenField
from wtforms import PasswordField
from wtforms.validators import DataRequired
from wtforms.validators import Length


class LoginForm(FlaskForm):
    class Meta:
        # CSRFProtect checks the token of every POST, this one included, before the view runs
        # (the template renders csrf_token()); a token field of the form's own would only sign
        # a second token on every sign-in.
        csrf = False

    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    next = HiddenField()


class LogoutForm(FlaskForm):
    """Only the CSRF token: signing out is a POST a third-party page cannot forge."""
