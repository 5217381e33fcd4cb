"""Forms of the admin blueprint."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import SelectChoice
from wtforms import SelectField
from wtforms import StringField
from wtforms.validators import DataRequired
from wtforms.validators import Length

from app.services.scim_tokens import MAX_NAME_LENGTH


class ScimTokenForm(FlaskForm):
    """Issue a SCIM token: a label, and optionally the SSO provider whose users it
    provisions (that provider then cannot be deleted while the token is live)."""

    name = StringField(
        "Name",
        validators=[DataRequired("Name must not be empty."), Length(max=MAX_NAME_LENGTH)],
        description="For example the identity provider that will use it: “Entra ID”.",
    )
    provider = SelectField("Linked SSO provider", choices=[SelectChoice("", "None")], default="")


class ActionForm(FlaskForm):
    """Only the CSRF token: revoke names the token in the URL."""
