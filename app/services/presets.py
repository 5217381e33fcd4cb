"""Provider presets: defaults and IdP-side setup steps for the common identity providers."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Any

from app.services.errors import NotFound


@dataclass(frozen=True)
class Step:
    """One thing to do at the identity provider. ``url`` names the callback URL to paste
    there (a key of providers.callback_urls), shown after ``text``."""

    text: str
    url: str | None = None


@dataclass(frozen=True)
class Preset:
    """Defaults for one kind of identity provider.

    ``defaults`` uses the provider form's field names, so the create view pre-fills the
    form with it as is."""

    key: str
    label: str
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()

    @property
    def protocol(self) -> str:
        return self.defaults.get("protocol", "oidc")

    def form_data(self) -> dict[str, Any]:
        """Values for every form field the preset sets (fresh dict: forms may change it)."""
        return {"enabled": True, "visible": True, **self.defaults}


_REDIRECT = "Redirect URI (sign-in callback):"
_POST_LOGOUT = "Post-logout redirect URI (sign-out callback):"
_FRONT_CHANNEL = "Front-channel logout URL:"
_BACK_CHANNEL = "Back-channel logout URI (optional):"

PRESETS: tuple[Preset, ...] = (
    Preset(
        key="entra",
        label="Microsoft Entra ID",
        summary="Microsoft Entra ID (Azure AD) tenants, with app roles or groups.",
        defaults={
            "protocol": "oidc",
            "display_name": "Microsoft Entra ID",
            "scheme": "entra",
            "authority": "https://login.microsoftonline.com/{tenant}/v2.0",
            "response_type": "code",
            # The object id never changes, unlike the email or UPN: Entra's SCIM sends it as
            # externalId, so matching on it links provisioned users safely.
            "external_id_claim": "oid",
            # Entra ID lets tenant admins set any email on a user: never trust it as verified.
            "trust_email_verified": False,
            "role_claim": "roles",
        },
        steps=(
            Step(
                "In the Entra admin center, open Identity → Applications → App registrations "
                "and choose New registration (single tenant)."
            ),
            Step(
                "Under Redirect URI, choose the Web platform and paste the " + _REDIRECT, "signin"
            ),
            Step(
                "Under Authentication → Front-channel logout URL, paste the " + _FRONT_CHANNEL,
                "signout",
            ),
            Step(
                "Under Authentication → Web → Redirect URIs, add the " + _POST_LOGOUT,
                "signout_callback",
            ),
            Step(
                "Copy the Directory (tenant) ID into the authority URL in place of {tenant}, "
                "and the Application (client) ID into Client ID."
            ),
            Step(
                "Under Certificates & secrets, create a client secret and paste its Value "
                "(not its ID) into Client secret."
            ),
            Step(
                "For role mapping, define App roles and assign them; they arrive in the "
                "roles claim."
            ),
        ),
    ),
    Preset(
        key="okta",
        label="Okta",
        summary="Okta Workforce Identity, with Okta groups.",
        defaults={
            "protocol": "oidc",
            "display_name": "Okta",
            "scheme": "okta",
            "authority": "https://{your-domain}.okta.com",
            "response_type": "code",
            # Okta only sends the groups claim when the groups scope is requested (and a
            # groups claim filter is set on the authorization server).
            "additional_scopes": "groups",
            "role_claim": "groups",
        },
        steps=(
            Step(
                "In the Okta Admin Console, open Applications → Create App Integration, choose "
                "OIDC - OpenID Connect and Web Application."
            ),
            Step("Under Sign-in redirect URIs, paste the " + _REDIRECT, "signin"),
            Step("Under Sign-out redirect URIs, paste the " + _POST_LOGOUT, "signout_callback"),
            Step(
                "Under General → Logout, turn on front-channel logout and paste the "
                + _FRONT_CHANNEL,
                "signout",
            ),
            Step(
                "Replace {your-domain} in the authority URL with your Okta domain, and copy "
                "the Client ID and Client secret."
            ),
            Step(
                "Under Sign On → OpenID Connect ID Token, set a Groups claim filter named "
                "groups (for example: Matches regex .*)."
            ),
        ),
    ),
    Preset(
        key="google",
        label="Google Workspace",
        summary="Google Workspace accounts of your own domain.",
        defaults={
            "protocol": "oidc",
            "display_name": "Google Workspace",
            "scheme": "google-workspace",
            "authority": "https://accounts.google.com",
            "response_type": "code",
            # Google only issues verified addresses for Workspace users.
            "trust_email_verified": True,
            # Any Google account can sign in to a Google OAuth client: keep out those not in
            # your Workspace domain (the hd claim).
            "authorization_expression": 'has(claims.hd) && claims.hd == "your-domain.example"',
        },
        steps=(
            Step(
                "In the Google Cloud console, open APIs & Services → Credentials → Create "
                "credentials → OAuth client ID, type Web application."
            ),
            Step("Under Authorized redirect URIs, paste the " + _REDIRECT, "signin"),
            Step(
                "Copy the Client ID and Client secret. Google has no front-channel logout; "
                "signing out of Keyward does not sign the user out of Google."
            ),
            Step(
                "Replace your-domain.example in the authorisation expression with your "
                "Workspace domain, so that only its accounts may sign in."
            ),
        ),
    ),
    Preset(
        key="auth0",
        label="Auth0",
        summary="An Auth0 tenant (Regular Web Application).",
        defaults={
            "protocol": "oidc",
            "display_name": "Auth0",
            "scheme": "auth0",
            "authority": "https://{tenant}.auth0.com/",
            "response_type": "code",
        },
        steps=(
            Step(
                "In the Auth0 dashboard, open Applications → Create Application and choose "
                "Regular Web Applications."
            ),
            Step("Under Settings → Allowed Callback URLs, paste the " + _REDIRECT, "signin"),
            Step(
                "Under Settings → Allowed Logout URLs, paste the " + _POST_LOGOUT,
                "signout_callback",
            ),
            Step(
                "Replace {tenant} in the authority URL with your tenant (your-tenant.eu.auth0.com "
                "in other regions), and copy the Client ID and Client Secret."
            ),
            Step(
                "For role mapping, add a post-login Action that sets a namespaced claim "
                "(for example https://keyward.example/roles) and enter that name as the role "
                "claim."
            ),
        ),
    ),
    Preset(
        key="keycloak",
        label="Keycloak",
        summary="A Keycloak realm (confidential OpenID Connect client).",
        defaults={
            "protocol": "oidc",
            "display_name": "Keycloak",
            "scheme": "keycloak",
            "authority": "https://{host}/realms/{realm}",
            "response_type": "code",
            "role_claim": "groups",
        },
        steps=(
            Step(
                "In the Keycloak admin console, choose the realm, open Clients → Create client, "
                "type OpenID Connect, and turn on Client authentication."
            ),
            Step("Under Valid redirect URIs, paste the " + _REDIRECT, "signin"),
            Step(
                "Under Valid post logout redirect URIs, paste the " + _POST_LOGOUT,
                "signout_callback",
            ),
            Step(
                "Under Front channel logout, turn it on and paste the " + _FRONT_CHANNEL, "signout"
            ),
            Step(
                "Under Backchannel logout URL, paste the " + _BACK_CHANNEL,
                "backchannel_logout",
            ),
            Step(
                "Replace {host} and {realm} in the authority URL, and copy the client ID and "
                "the secret from the Credentials tab."
            ),
            Step(
                "For role mapping, add a Group Membership mapper to the client's dedicated "
                "scope with token claim name groups and Full group path off."
            ),
        ),
    ),
    Preset(
        key="oidc",
        label="Generic OpenID Connect",
        summary="Any identity provider with OpenID Connect discovery.",
        defaults={
            "protocol": "oidc",
            "display_name": "",
            "scheme": "",
            "authority": "",
            "response_type": "code",
        },
        steps=(
            Step(
                "Register a confidential web client (authorization code flow) at your "
                "identity provider."
            ),
            Step("Register the " + _REDIRECT, "signin"),
            Step("Register the " + _POST_LOGOUT, "signout_callback"),
            Step("If it supports front-channel logout, register the " + _FRONT_CHANNEL, "signout"),
            Step(
                "If it supports back-channel logout, register the " + _BACK_CHANNEL,
                "backchannel_logout",
            ),
            Step(
                "Enter the issuer as authority URL: Keyward reads "
                "<authority>/.well-known/openid-configuration when you save."
            ),
        ),
    ),
    Preset(
        key="oauth2",
        label="Generic OAuth 2.0",
        summary="A plain OAuth 2.0 server without OpenID Connect (identity from userinfo).",
        defaults={
            "protocol": "oauth2",
            "display_name": "",
            "scheme": "",
            "response_type": "code",
            "subject_field": "id",
            "email_field": "email",
            "name_field": "name",
        },
        steps=(
            Step("Register an OAuth 2.0 web application (authorization code flow)."),
            Step("Register the " + _REDIRECT, "signin"),
            Step(
                "Enter its authorization, token and userinfo endpoints, the scopes that give "
                "access to the user's profile and email, and the userinfo field names."
            ),
            Step(
                "Plain OAuth 2.0 has no logout protocol: signing out of Keyward does not sign "
                "the user out there."
            ),
        ),
    ),
)

_BY_KEY = {preset.key: preset for preset in PRESETS}


def list_presets() -> tuple[Preset, ...]:
    """Every preset, in the order the picker shows them."""
    return PRESETS


def get_preset(key: str) -> Preset:
    """The preset named ``key``; raises NotFound for an unknown one."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise NotFound(f"No preset {key!r}.") from None
