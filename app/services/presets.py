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

# --- SAML 2.0 ---------------------------------------------------------------------------------
# Step URL keys of SAML presets (see SAML_URLS in blueprints/providers/routes.py).
_ENTITY_ID = "Identifier (SP entity ID):"
_ACS = "Reply URL (assertion consumer service URL):"
_SLO = "Logout URL (single logout URL):"
_SP_METADATA = "SP metadata URL:"
# Claim URIs Entra ID and ADFS send by default.
_CLAIMS = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims"
_MS_CLAIMS = "http://schemas.microsoft.com/identity/claims"
_MS_ROLE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
_PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
_EMAIL_FORMAT = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"

SAML_PRESETS: tuple[Preset, ...] = (
    Preset(
        key="saml-entra",
        label="SAML: Microsoft Entra ID",
        summary="An Entra ID enterprise application with SAML single sign-on.",
        defaults={
            "protocol": "saml",
            "display_name": "Microsoft Entra ID",
            "scheme": "entra-saml",
            "saml_metadata_url": (
                "https://login.microsoftonline.com/{tenant}/federationmetadata/2007-06/"
                "federationmetadata.xml?appid={application-id}"
            ),
            # Entra signs the assertion by default ("Sign SAML assertion").
            "saml_signed": "assertion",
            "saml_email_attribute": f"{_CLAIMS}/emailaddress",
            "saml_given_name_attribute": f"{_CLAIMS}/givenname",
            "saml_family_name_attribute": f"{_CLAIMS}/surname",
            "saml_name_attribute": f"{_MS_CLAIMS}/displayname",
            # The object id never changes: Entra's SCIM sends it as externalId.
            "external_id_claim": f"{_MS_CLAIMS}/objectidentifier",
            "trust_email_verified": False,
            "role_claim": _MS_ROLE,
        },
        steps=(
            Step(
                "In the Entra admin center, open Identity → Applications → Enterprise "
                "applications → New application → Create your own application (non-gallery), "
                "then Single sign-on → SAML."
            ),
            Step("Under Basic SAML Configuration, set the " + _ENTITY_ID, "entity_id"),
            Step("Set the " + _ACS, "acs"),
            Step("Set the " + _SLO, "slo"),
            Step(
                "Under Attributes & Claims, set the Unique User Identifier (Name ID) to "
                "user.objectid with the Persistent format."
            ),
            Step(
                "Under SAML Certificates, copy the App Federation Metadata Url into the "
                "metadata URL (it holds your tenant and application ids): Keyward keeps the "
                "certificates fresh from it."
            ),
            Step(
                "For role mapping, define App roles and assign them; they arrive in the role claim."
            ),
        ),
    ),
    Preset(
        key="saml-okta",
        label="SAML: Okta",
        summary="An Okta SAML 2.0 app integration, with Okta groups.",
        defaults={
            "protocol": "saml",
            "display_name": "Okta",
            "scheme": "okta-saml",
            "saml_metadata_url": "https://{your-domain}.okta.com/app/{app-id}/sso/saml/metadata",
            "saml_signed": "assertion",
            "saml_nameid_format": _PERSISTENT,
            # The attribute statements the steps below create.
            "saml_email_attribute": "email",
            "saml_given_name_attribute": "firstName",
            "saml_family_name_attribute": "lastName",
            "role_claim": "groups",
            # Okta's single logout accepts only signed logout requests.
            "saml_sign_requests": True,
        },
        steps=(
            Step(
                "In the Okta Admin Console, open Applications → Create App Integration and "
                "choose SAML 2.0."
            ),
            Step("As Single sign-on URL, paste the " + _ACS, "acs"),
            Step("As Audience URI (SP Entity ID), paste the " + _ENTITY_ID, "entity_id"),
            Step("Set Name ID format to Persistent and Application username to Okta username."),
            Step(
                "Add the attribute statements email = user.email, firstName = user.firstName, "
                "lastName = user.lastName, and a group attribute statement groups "
                "(filter: Matches regex .*)."
            ),
            Step("Under Advanced Settings, enable Single Logout and set the " + _SLO, "slo"),
            Step(
                "Set SP Issuer to the entity ID above, and upload as Signature Certificate the "
                "signing certificate in the " + _SP_METADATA,
                "sp_metadata",
            ),
            Step(
                "On the Sign On tab, copy the Metadata URL into the metadata URL below "
                "(replacing {your-domain} and {app-id})."
            ),
        ),
    ),
    Preset(
        key="saml-google",
        label="SAML: Google Workspace",
        summary="A Google Workspace custom SAML app of your own domain.",
        defaults={
            "protocol": "saml",
            "display_name": "Google Workspace",
            "scheme": "google-saml",
            # Google publishes no metadata URL: the document is downloaded and pasted.
            "saml_signed": "assertion",
            "saml_nameid_format": _EMAIL_FORMAT,
            "saml_email_attribute": "email",
            "saml_given_name_attribute": "firstName",
            "saml_family_name_attribute": "lastName",
            # Workspace primary emails belong to your domain.
            "trust_email_verified": True,
            "role_claim": "groups",
        },
        steps=(
            Step(
                "In the Google Admin console, open Apps → Web and mobile apps → Add app → Add "
                "custom SAML app."
            ),
            Step(
                "On the Google Identity Provider details page, download the IdP metadata and "
                "paste the file's contents into IdP metadata XML below."
            ),
            Step("As ACS URL, paste the " + _ACS, "acs"),
            Step("As Entity ID, paste the " + _ENTITY_ID, "entity_id"),
            Step("Set Name ID format to EMAIL and Name ID to Basic Information → Primary email."),
            Step(
                "Under Attribute mapping, map Primary email → email, First name → firstName, "
                "Last name → lastName, and for role mapping Group membership → groups."
            ),
            Step(
                "Turn the app on for your organisational units. Google has no single logout: "
                "signing out of Keyward does not sign the user out of Google."
            ),
        ),
    ),
    Preset(
        key="saml-adfs",
        label="SAML: ADFS",
        summary="Active Directory Federation Services (a relying party trust).",
        defaults={
            "protocol": "saml",
            "display_name": "ADFS",
            "scheme": "adfs",
            "saml_metadata_url": "https://{adfs-host}/FederationMetadata/2007-06/FederationMetadata.xml",
            # ADFS signs the assertion by default (SamlResponseSignature AssertionOnly).
            "saml_signed": "assertion",
            "saml_nameid_format": _PERSISTENT,
            "saml_email_attribute": f"{_CLAIMS}/emailaddress",
            "saml_given_name_attribute": f"{_CLAIMS}/givenname",
            "saml_family_name_attribute": f"{_CLAIMS}/surname",
            "saml_name_attribute": f"{_CLAIMS}/name",
            "role_claim": _MS_ROLE,
            # ADFS refuses unsigned logout requests.
            "saml_sign_requests": True,
        },
        steps=(
            Step(
                "In AD FS Management, open Relying Party Trusts → Add Relying Party Trust "
                "(claims aware), choose Import data about the relying party published online, "
                "and enter the " + _SP_METADATA,
                "sp_metadata",
            ),
            Step(
                "(It carries the entity ID, the assertion consumer service and logout URLs, "
                "and the request-signing certificate.) The identifier is the " + _ENTITY_ID,
                "entity_id",
            ),
            Step(
                "Edit the claim issuance policy: Send LDAP Attributes as Claims (E-Mail-"
                "Addresses → E-Mail Address, Given-Name → Given Name, Surname → Surname, "
                "Display-Name → Name), and Transform an Incoming Claim from Windows account "
                "name to Name ID with the Persistent Identifier format."
            ),
            Step(
                "For role mapping, add Send Group Membership as a Claim with the outgoing "
                "claim type Role."
            ),
            Step("Replace {adfs-host} in the metadata URL with your AD FS host name."),
        ),
    ),
)
PRESETS = PRESETS + SAML_PRESETS

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
