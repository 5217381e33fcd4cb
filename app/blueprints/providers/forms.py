"""Forms of the provider management pages."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from flask_wtf import FlaskForm
from wtforms import BooleanField
from wtforms import PasswordField
from wtforms import SelectChoice
from wtforms import SelectField
from wtforms import StringField
from wtforms import TextAreaField
from wtforms.validators import Length
from wtforms.validators import ValidationError as FormValidationError

from app.services.providers import ProviderFields

ROLE_CHOICES = [
    SelectChoice("member", "Member"),
    SelectChoice("admin", "Admin"),
    SelectChoice("owner", "Owner"),
]
# Template parts a preset leaves in a URL ({tenant}, {your-domain}): saving them would only
# fail later with a DNS error, so they are named here instead.
_PLACEHOLDER = re.compile(r"\{[^}]*\}")
_URL_FIELDS = ("authority", "authorization_endpoint", "token_endpoint", "userinfo_endpoint")
MAX_ROLE_MAPPING_LINES = 200
# What the IdP must sign, and the NameID formats an admin may ask for (transient cannot name
# a login: it changes at every sign-in).
SAML_SIGNED_CHOICES = [
    SelectChoice("assertion", "The assertion (recommended; the default of most IdPs)"),
    SelectChoice("response", "The whole response"),
    SelectChoice("both", "Both the response and the assertion"),
]
SAML_NAMEID_CHOICES = [
    SelectChoice("", "Let the identity provider choose"),
    SelectChoice(
        "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent", "Persistent (recommended)"
    ),
    SelectChoice("urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress", "Email address"),
    SelectChoice("urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified", "Unspecified"),
]
# Form fields that are SAML settings (ProviderFields names), strings then booleans.
SAML_TEXT_FIELDS = (
    "saml_metadata_url",
    "saml_email_attribute",
    "saml_given_name_attribute",
    "saml_family_name_attribute",
    "saml_name_attribute",
)
SAML_FLAGS = ("saml_allow_idp_initiated", "saml_sign_requests")


def _no_placeholder(form: FlaskForm, field) -> None:
    match = _PLACEHOLDER.search(field.data or "")
    if match:
        raise FormValidationError(f"Replace {match.group(0)} with your own value.")


def parse_role_mappings(text: str | None) -> tuple[tuple[str, str], ...]:
    """ "value = role" lines -> ((value, role), ...). The last "=" separates them (claim values
    such as LDAP DNs contain "="); blank lines and lines starting with # are skipped. Raises
    wtforms' ValidationError naming the first malformed line."""
    rows: list[tuple[str, str]] = []
    lines = (text or "").splitlines()
    if len(lines) > MAX_ROLE_MAPPING_LINES:
        raise FormValidationError(f"At most {MAX_ROLE_MAPPING_LINES} lines.")
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        value, sep, role = line.rpartition("=")
        if not sep or not value.strip() or not role.strip():
            raise FormValidationError(f"Line {number}: write it as “claim value = role”.")
        rows.append((value.strip(), role.strip().lower()))
    return tuple(rows)


def format_role_mappings(rows: Any) -> str:
    """The provider's mapping rows as the textarea shows them."""
    return "\n".join(f"{row.claim_value} = {row.role}" for row in rows or ())


class ProviderForm(FlaskForm):
    """Every setting of an OpenID Connect, OAuth 2.0 or SAML 2.0 provider.

    Field names are ProviderFields' names (plus the role mapping and the secret lock), so the
    service's per-field errors land next to the right input."""

    protocol = SelectField(
        "Protocol",
        choices=[
            SelectChoice("oidc", "OpenID Connect"),
            SelectChoice("oauth2", "OAuth 2.0"),
            SelectChoice("saml", "SAML 2.0"),
        ],
    )
    display_name = StringField(
        "Display name",
        validators=[Length(max=100)],
        description="Shown on the sign-in button, e.g. “Acme Corp SSO”.",
    )
    scheme = StringField(
        "Authentication scheme",
        validators=[Length(max=64)],
        description="Starts with a letter; letters, digits, _ and - only. It is part of the "
        "callback URLs.",
    )
    authority = StringField(
        "Authority URL",
        validators=[Length(max=2048), _no_placeholder],
        description="The issuer, e.g. https://login.microsoftonline.com/<tenant>/v2.0.",
    )
    client_id = StringField("Client ID", validators=[Length(max=255)])
    client_secret = PasswordField(
        "Client secret",
        validators=[Length(max=4096)],
        description="Stored encrypted and never shown again.",
    )
    replace_client_secret = BooleanField("Replace the client secret")
    response_type = SelectField(
        "Response type",
        choices=[
            SelectChoice("code", "code (authorization code with PKCE)"),
            SelectChoice("id_token", "id_token (implicit, form_post)"),
            SelectChoice("code id_token", "code id_token (hybrid)"),
        ],
    )
    icon_url = StringField(
        "Icon URL", validators=[Length(max=2048)], description="Optional http(s) image URL."
    )
    remote_signout_path = StringField(
        "Remote sign-out path",
        validators=[Length(max=255)],
        description="Optional: a path at the IdP to send users to when they sign out.",
    )
    additional_scopes = StringField(
        "Additional scopes",
        validators=[Length(max=1024)],
        description="Space separated, on top of openid profile email (e.g. groups offline_access).",
    )
    additional_claims = StringField(
        "Additional claims",
        validators=[Length(max=1024)],
        description="Space separated claims to request (sent as extra scopes).",
    )
    authorization_expression = TextAreaField(
        "Authorization expression (CEL)",
        validators=[Length(max=4096)],
        description="Optional. Sign-in is allowed only when it evaluates to true, e.g. "
        '"admins" in groups. Claims are variables and entries of claims.',
    )
    jit_provisioning = BooleanField("Create users at their first sign-in (just-in-time)")
    default_role = SelectField("Default role of new users", choices=ROLE_CHOICES)
    trust_email_verified = BooleanField(
        "The identity provider only sends verified email addresses",
        description="Only for directories that own the address (e.g. Google Workspace): "
        "users are then matched by email.",
    )
    external_id_claim = StringField(
        "External id claim",
        validators=[Length(max=100)],
        description="Claim matched to a SCIM user's externalId (Entra ID: oid). Empty: sub.",
    )
    allow_hs256 = BooleanField(
        "Accept HS256 ID tokens (signed with the client secret)",
        description="Leave off unless the identity provider cannot sign with RS256 or ES256.",
    )
    authorization_endpoint = StringField(
        "Authorization endpoint", validators=[Length(max=2048), _no_placeholder]
    )
    token_endpoint = StringField("Token endpoint", validators=[Length(max=2048), _no_placeholder])
    userinfo_endpoint = StringField(
        "Userinfo endpoint", validators=[Length(max=2048), _no_placeholder]
    )
    subject_field = StringField("Subject field", validators=[Length(max=100)])
    email_field = StringField("Email field", validators=[Length(max=100)])
    name_field = StringField("Name field", validators=[Length(max=100)])
    role_claim = StringField(
        "Role claim",
        validators=[Length(max=100)],
        description="The claim holding the user's groups or roles, e.g. groups or roles. "
        "Empty: no role mapping.",
    )
    role_mappings = TextAreaField(
        "Claim value to role",
        description="One per line: claim value = role (member, admin or owner), e.g. "
        "Keyward-Admins = admin.",
    )
    role_mapping_default = SelectField(
        "Role when no value matches",
        choices=[SelectChoice("", "No change (keep the user's role)"), *ROLE_CHOICES],
    )
    saml_metadata_xml = TextAreaField(
        "IdP metadata XML",
        validators=[Length(max=1024 * 1024)],
        description="Paste the identity provider's federation metadata document "
        "(<EntityDescriptor>…). Or leave this empty and enter its URL below.",
    )
    saml_metadata_url = StringField(
        "IdP metadata URL",
        validators=[Length(max=2048), _no_placeholder],
        description="Where the identity provider publishes its metadata (https). Keyward "
        "fetches it now and keeps it fresh, so new signing certificates are picked up.",
    )
    saml_signed = SelectField(
        "What the identity provider signs", choices=SAML_SIGNED_CHOICES, default="assertion"
    )
    saml_allow_idp_initiated = BooleanField(
        "Allow sign-ins started at the identity provider (IdP-initiated)",
        description="Off by default: an answer Keyward did not ask for cannot be tied to the "
        "browser that sends it. Turn on only for IdP app portals (My Apps, Okta dashboard).",
    )
    saml_sign_requests = BooleanField(
        "Sign authentication and logout requests",
        description="Keyward makes a signing key; its certificate is in the SP metadata. "
        "ADFS and Okta need it for single logout.",
    )
    saml_nameid_format = SelectField("NameID format", choices=SAML_NAMEID_CHOICES, default="")
    saml_email_attribute = StringField(
        "Email attribute",
        validators=[Length(max=255)],
        description="Empty: the usual names (Entra and ADFS claim URIs, email, mail, …).",
    )
    saml_given_name_attribute = StringField("Given name attribute", validators=[Length(max=255)])
    saml_family_name_attribute = StringField("Family name attribute", validators=[Length(max=255)])
    saml_name_attribute = StringField("Display name attribute", validators=[Length(max=255)])
    enabled = BooleanField("Enabled", description="Disabled providers refuse every sign-in.")
    visible = BooleanField(
        "Shown on the sign-in page",
        description="Hidden providers still work through their direct SSO link.",
    )

    def validate_role_mappings(self, field) -> None:
        parse_role_mappings(field.data)

    @classmethod
    def data_from_provider(cls, provider: Any) -> dict[str, Any]:
        """The form's initial values for an existing provider (never the secret)."""
        data = {
            f.name: getattr(provider, f.name)
            for f in dataclasses.fields(ProviderFields)
            # The stored metadata document is not shown back: left empty, it is kept.
            if f.name not in ("client_secret", "role_mappings", "saml_metadata_xml")
        }
        data["saml_nameid_format"] = provider.saml_nameid_format or ""
        data["role_mappings"] = format_role_mappings(provider.role_mappings)
        data["role_mapping_default"] = provider.role_mapping_default or ""
        return data

    def to_fields(self, *, secret_stored: bool) -> ProviderFields:
        """ProviderFields from the submitted form.

        The secret lock: with a secret stored, the typed secret is used only when "Replace
        the client secret" is ticked and the input is not empty; otherwise None keeps the
        stored one."""
        secret = self.client_secret.data or None
        if secret_stored and not self.replace_client_secret.data:
            secret = None
        values: dict[str, Any] = {
            "protocol": self.protocol.data,
            "display_name": self.display_name.data or "",
            "scheme": self.scheme.data or "",
            "client_secret": secret,
            "response_type": self.response_type.data,
            "default_role": self.default_role.data,
            "role_mapping_default": self.role_mapping_default.data or None,
            "role_mappings": parse_role_mappings(self.role_mappings.data),
            "saml_metadata_xml": (self.saml_metadata_xml.data or "").strip() or None,
            "saml_signed": self.saml_signed.data or "assertion",
            "saml_nameid_format": self.saml_nameid_format.data or None,
        }
        for name in SAML_TEXT_FIELDS:
            values[name] = (getattr(self, name).data or "").strip() or None
        for name in SAML_FLAGS:
            values[name] = bool(getattr(self, name).data)
        for name in (
            "authority",
            "client_id",
            "icon_url",
            "remote_signout_path",
            "authorization_expression",
            "external_id_claim",
            "authorization_endpoint",
            "token_endpoint",
            "userinfo_endpoint",
            "role_claim",
        ):
            values[name] = (getattr(self, name).data or "").strip() or None
        for name in ("subject_field", "email_field", "name_field"):
            values[name] = (getattr(self, name).data or "").strip()
        for name in (
            "jit_provisioning",
            "trust_email_verified",
            "allow_hs256",
            "enabled",
            "visible",
        ):
            values[name] = bool(getattr(self, name).data)
        # Additional claims have no column of their own: like `flask providers create
        # --additional-claims`, they are requested as extra scopes.
        scopes = (self.additional_scopes.data or "").split()
        scopes += (self.additional_claims.data or "").split()
        values["additional_scopes"] = " ".join(dict.fromkeys(scopes))
        return ProviderFields(**values)

    def add_service_errors(self, errors: dict[str, str]) -> None:
        """Put each of the service's messages next to its field (``role_mappings[2]`` goes to
        ``role_mappings``); messages about no field go to the summary."""
        self.general_errors = list(getattr(self, "general_errors", []))
        for key, message in errors.items():
            name = re.split(r"[\[.]", key or "", maxsplit=1)[0]
            field = self._fields.get(name)
            if field is None or name in ("csrf_token", "replace_client_secret"):
                self.general_errors.append(message)
            else:
                field.errors = [*field.errors, message]

    @property
    def error_summary(self) -> list[tuple[str | None, str, str]]:
        """(field id or None, label, message) of every error, in form order."""
        rows: list[tuple[str | None, str, str]] = [
            (None, "", message) for message in getattr(self, "general_errors", [])
        ]
        for field in self:
            for message in field.errors if isinstance(field.errors, list) else ():
                rows.append((field.id, field.label.text, message))
        return rows


class ActionForm(FlaskForm):
    """Only the CSRF token: enable, disable, show, hide and delete name the provider in the
    URL."""
