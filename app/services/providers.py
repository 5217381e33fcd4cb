"""SSO provider CRUD and validation; every change bumps ``version``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from typing import NamedTuple
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import bindparam
from sqlalchemy import select

from app.extensions import db
from app.models import Account
from app.models import ExternalLogin
from app.models import Protocol
from app.models import ResponseType
from app.models import Role
from app.models import SsoProvider
from app.models import User
from app.services import audit
from app.services import crypto
from app.services.errors import NotFound
from app.services.errors import ValidationError
from app.services.errors import uuid_or_not_found

SCHEME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
MAX_SCHEME_LENGTH = 64
# Protocol words and the built-in providers' schemes: an account's provider must not look
# like (or take the callback URLs of) a built-in one.
RESERVED_SCHEMES = frozenset({"google", "microsoft", "oidc", "oauth2", "saml", "callback"})

GOOGLE_AUTHORITY = "https://accounts.google.com"
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com/{tenant}/v2.0"


@dataclass(frozen=True)
class ProviderFields:
    """What an admin or operator can set on a provider (None: keep / default)."""

    protocol: str = Protocol.OIDC.value
    display_name: str = ""
    scheme: str = ""
    authority: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    response_type: str = ResponseType.CODE.value
    additional_scopes: str = ""
    authorization_expression: str | None = None
    icon_url: str | None = None
    remote_signout_path: str | None = None
    jit_provisioning: bool = False
    default_role: str = Role.MEMBER.value
    trust_email_verified: bool = False
    external_id_claim: str | None = None
    allow_hs256: bool = False
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    subject_field: str = "sub"
    email_field: str = "email"
    name_field: str = "name"
    enabled: bool = True
    visible: bool = True


def scheme_key(scheme: str) -> str:
    return scheme.strip().lower()


def validate_scheme(scheme: str, *, exclude_id: uuid.UUID | None = None, builtin: bool = False):
    """Raise ValidationError (field ``scheme``) for a malformed, reserved or taken scheme."""
    if not scheme:
        raise ValidationError("Authentication scheme must not be empty.", "scheme")
    if len(scheme) > MAX_SCHEME_LENGTH or not SCHEME_PATTERN.match(scheme):
        raise ValidationError(
            "Authentication scheme must start with a letter and contain only letters, digits, "
            f"underscores and hyphens (at most {MAX_SCHEME_LENGTH} characters).",
            "scheme",
        )
    if not builtin and scheme_key(scheme) in RESERVED_SCHEMES:
        raise ValidationError(f"Authentication scheme {scheme!r} is reserved.", "scheme")
    query = select(SsoProvider.id).where(SsoProvider.scheme_key == scheme_key(scheme))
    if exclude_id is not None:
        query = query.where(SsoProvider.id != exclude_id)
    if db.session.scalar(query) is not None:
        raise ValidationError(
            f"Authentication scheme {scheme!r} is already in use (schemes ignore case).", "scheme"
        )


def _validate_url(url: str | None, field: str, *, required: bool, label: str) -> str | None:
    """Syntax and outbound policy of an admin-entered URL that Keyward will fetch."""
    from app.services import outbound

    url = (url or "").strip() or None
    if url is None:
        if required:
            raise ValidationError(f"{label} is required.", field)
        return None
    if len(url) > 2048:
        raise ValidationError(f"{label} must be at most 2048 characters.", field)
    try:
        outbound.check_url(url)
    except outbound.OutboundError as error:
        raise ValidationError(f"{label}: {error}", field) from None
    return url


def _validate_icon_url(url: str | None) -> str | None:
    url = (url or "").strip() or None
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 2048:
        raise ValidationError("Icon URL must be an http(s) URL.", "icon_url")
    return url


def _validate(fields: ProviderFields, *, exclude_id: uuid.UUID | None, builtin: bool) -> dict:
    """Check every field; return the column values. Nothing is saved on any error."""
    if fields.protocol not in {p.value for p in Protocol}:
        raise ValidationError("Protocol must be oidc, oauth2 or saml.", "protocol")
    if fields.protocol == Protocol.SAML:
        raise ValidationError("SAML providers are not supported yet.", "protocol")
    display_name = (fields.display_name or "").strip()
    if not display_name or len(display_name) > 100:
        raise ValidationError("Display name is required (at most 100 characters).", "display_name")
    scheme = (fields.scheme or "").strip()
    validate_scheme(scheme, exclude_id=exclude_id, builtin=builtin)
    if fields.response_type not in {r.value for r in ResponseType}:
        raise ValidationError(
            "Response type must be one of: code, id_token, code id_token.", "response_type"
        )
    client_id = (fields.client_id or "").strip()
    if not client_id or len(client_id) > 255:
        raise ValidationError("Client ID is required (at most 255 characters).", "client_id")
    try:
        Role(fields.default_role)
    except ValueError:
        raise ValidationError(
            "Default role must be owner, admin or member.", "default_role"
        ) from None

    values: dict[str, Any] = {
        "protocol": fields.protocol,
        "display_name": display_name,
        "scheme": scheme,
        "scheme_key": scheme_key(scheme),
        "client_id": client_id,
        "response_type": fields.response_type,
        "additional_scopes": " ".join((fields.additional_scopes or "").split())[:1024],
        "icon_url": _validate_icon_url(fields.icon_url),
        "remote_signout_path": (fields.remote_signout_path or "").strip() or None,
        "jit_provisioning": bool(fields.jit_provisioning),
        "default_role": fields.default_role,
        "trust_email_verified": bool(fields.trust_email_verified),
        "external_id_claim": (fields.external_id_claim or "").strip() or None,
        "allow_hs256": bool(fields.allow_hs256),
        "subject_field": (fields.subject_field or "sub").strip(),
        "email_field": (fields.email_field or "email").strip(),
        "name_field": (fields.name_field or "name").strip(),
        "enabled": bool(fields.enabled),
        "visible": bool(fields.visible),
    }
    if fields.protocol == Protocol.OIDC:
        values["authority"] = _validate_url(
            fields.authority, "authority", required=True, label="Authority URL"
        )
        values.update(authorization_endpoint=None, token_endpoint=None, userinfo_endpoint=None)
    else:
        # Plain OAuth 2.0 has no discovery and no ID token: the code flow with configured
        # endpoints, and the identity read from userinfo.
        if fields.response_type != ResponseType.CODE:
            raise ValidationError(
                "OAuth 2.0 providers use the code response type.", "response_type"
            )
        values["authority"] = None
        for name, label in (
            ("authorization_endpoint", "Authorization endpoint"),
            ("token_endpoint", "Token endpoint"),
            ("userinfo_endpoint", "Userinfo endpoint"),
        ):
            values[name] = _validate_url(getattr(fields, name), name, required=True, label=label)
    if fields.allow_hs256 and not fields.client_secret:
        raise ValidationError("HS256 ID tokens need a client secret to verify them.", "allow_hs256")
    expression = (fields.authorization_expression or "").strip() or None
    if expression is not None:
        from app.services import authz

        authz.compile_expression(expression)
    values["authorization_expression"] = expression
    return values


def create_provider(
    fields: ProviderFields,
    *,
    account: Account | None,
    builtin: str | None = None,
    actor: User | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
) -> SsoProvider:
    """Create a provider for ``account`` (None with ``builtin`` for Google/Microsoft).

    Raises ValidationError naming the field; nothing is added on error."""
    if (account is None) == (builtin is None):
        raise ValidationError("A provider belongs to an account, or is a built-in one.", "account")
    if builtin is not None and db.session.scalar(
        select(SsoProvider.id).where(SsoProvider.builtin == builtin)
    ):
        raise ValidationError(f"The built-in {builtin} provider already exists.", "builtin")
    values = _validate(fields, exclude_id=None, builtin=builtin is not None)
    provider = SsoProvider(account=account, builtin=builtin, **values)
    if fields.client_secret:
        provider.client_secret_encrypted = crypto.encrypt(fields.client_secret)
    db.session.add(provider)
    db.session.flush()
    audit.record(
        "provider.created",
        actor=actor,
        account_id=account.id if account else None,
        target_type="provider",
        target_id=provider.id,
        details={"scheme": provider.scheme, "protocol": provider.protocol},
        meta=meta,
    )
    return provider


def builtin_fields(
    kind: str, *, client_id: str, client_secret: str | None, authority: str | None = None
) -> ProviderFields:
    """Defaults for the built-in Google or Microsoft provider."""
    if kind == "google":
        return ProviderFields(
            display_name="Google",
            scheme="google",
            authority=authority or GOOGLE_AUTHORITY,
            client_id=client_id,
            client_secret=client_secret,
        )
    if kind == "microsoft":
        tenant = current_app.config.get("MICROSOFT_TENANT") or "common"
        return ProviderFields(
            display_name="Microsoft",
            scheme="microsoft",
            authority=authority or MICROSOFT_AUTHORITY.format(tenant=tenant),
            client_id=client_id,
            client_secret=client_secret,
            # Entra ID: the SCIM externalId is the object id.
            external_id_claim="oid",
        )
    raise ValidationError("Built-in provider must be google or microsoft.", "builtin")


def sync_builtin_providers(config: Mapping[str, Any]) -> list[str]:
    """Create or update the built-in Google/Microsoft rows from GOOGLE_* / MICROSOFT_*
    settings; returns the kinds changed. Their authorities are fixed public URLs, so no
    outbound check runs here (start-up must not depend on DNS)."""
    changed = []
    for kind in ("google", "microsoft"):
        client_id = config.get(f"{kind.upper()}_CLIENT_ID")
        if not client_id:
            continue
        secret = config.get(f"{kind.upper()}_CLIENT_SECRET")
        wanted = builtin_fields(kind, client_id=client_id, client_secret=secret)
        row = db.session.scalar(select(SsoProvider).where(SsoProvider.builtin == kind))
        if row is None:
            row = SsoProvider(
                builtin=kind,
                account=None,
                protocol=Protocol.OIDC.value,
                display_name=wanted.display_name,
                scheme=wanted.scheme,
                scheme_key=scheme_key(wanted.scheme),
                authority=wanted.authority,
                client_id=client_id,
                external_id_claim=wanted.external_id_claim,
            )
            db.session.add(row)
        elif (
            row.client_id == client_id
            and row.authority == wanted.authority
            and (secret is None or (row.client_secret_encrypted and client_secret(row) == secret))
        ):
            continue
        else:
            row.client_id, row.authority = client_id, wanted.authority
            row.version += 1
        if secret:
            row.client_secret_encrypted = crypto.encrypt(secret)
        changed.append(kind)
    db.session.flush()
    return changed


def get_provider(provider_id: uuid.UUID | str) -> SsoProvider:
    key = uuid_or_not_found(provider_id, f"No provider with id {provider_id}.")
    provider = db.session.get(SsoProvider, key)
    if provider is None:
        raise NotFound(f"No provider with id {provider_id}.")
    return provider


def find_by_scheme(scheme: str) -> SsoProvider | None:
    return db.session.scalar(
        select(SsoProvider).where(SsoProvider.scheme_key == scheme_key(scheme))
    )


def list_providers(account_id: int | None = None) -> list[SsoProvider]:
    query = select(SsoProvider).order_by(
        SsoProvider.account_id.is_not(None), SsoProvider.display_name
    )
    if account_id is not None:
        query = query.where(SsoProvider.account_id == account_id)
    return list(db.session.scalars(query))


class LoginButton(NamedTuple):
    """What /login shows of a provider (its button)."""

    id: uuid.UUID
    account_id: int | None
    display_name: str
    icon_url: str | None


# /login runs one of these on every page view: built once (building a statement costs more
# than running it), and read as plain rows (no ORM objects for a page that only shows them).
_providers = SsoProvider.__table__
_LOGIN_BUTTON_COLUMNS = (
    _providers.c.id,
    _providers.c.account_id,
    _providers.c.display_name,
    _providers.c.icon_url,
)
_LOGIN_BUTTONS_ORDER = (_providers.c.builtin.is_(None), _providers.c.display_name)
_ENABLED_FOR_LOGIN = (_providers.c.enabled.is_(True), _providers.c.protocol != "saml")
_BUILTIN_BUTTONS = (
    select(*_LOGIN_BUTTON_COLUMNS)
    .where(*_ENABLED_FOR_LOGIN, _providers.c.builtin.is_not(None))
    .order_by(*_LOGIN_BUTTONS_ORDER)
)
_ACCOUNT_BUTTONS = (
    select(*_LOGIN_BUTTON_COLUMNS)
    .where(
        *_ENABLED_FOR_LOGIN,
        (_providers.c.builtin.is_not(None))
        | ((_providers.c.account_id == bindparam("account_id")) & _providers.c.visible.is_(True)),
    )
    .order_by(*_LOGIN_BUTTONS_ORDER)
)


def login_buttons(account_id: int | None) -> list[LoginButton]:
    """Providers shown on /login: enabled built-ins, plus the account's enabled and visible
    ones when an account is named."""
    if account_id is None:
        rows = db.session.connection().execute(_BUILTIN_BUTTONS)
    else:
        rows = db.session.connection().execute(_ACCOUNT_BUTTONS, {"account_id": account_id})
    return [LoginButton(*row) for row in rows]


def set_enabled(
    provider: SsoProvider,
    enabled: bool,
    *,
    actor: User | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
) -> None:
    if provider.enabled != enabled:
        provider.enabled = enabled
        provider.version += 1
        audit.record(
            "provider.enabled" if enabled else "provider.disabled",
            actor=actor,
            account_id=provider.account_id,
            target_type="provider",
            target_id=provider.id,
            meta=meta,
        )


def delete_provider(
    provider: SsoProvider, *, actor: User | None = None, meta: audit.RequestMeta = audit.NO_REQUEST
) -> int:
    """Delete the provider and its login records; returns how many logins were removed."""
    logins = db.session.scalars(
        select(ExternalLogin).where(ExternalLogin.provider_id == provider.id)
    ).all()
    for login in logins:
        db.session.delete(login)
    audit.record(
        "provider.deleted",
        actor=actor,
        account_id=provider.account_id,
        target_type="provider",
        target_id=provider.id,
        details={"scheme": provider.scheme, "logins_removed": len(logins)},
        meta=meta,
    )
    db.session.delete(provider)
    db.session.flush()
    return len(logins)


def client_secret(provider: SsoProvider) -> str | None:
    """The decrypted client secret (for the token endpoint only; never shown)."""
    if not provider.client_secret_encrypted:
        return None
    return crypto.decrypt(provider.client_secret_encrypted)


def public_url() -> str:
    return current_app.config["PUBLIC_URL"].rstrip("/")


def callback_urls(provider: SsoProvider) -> dict[str, str]:
    """The URLs to register at the IdP, built from PUBLIC_URL (never the Host header)."""
    base, scheme = public_url(), provider.scheme
    return {
        "signin": f"{base}/signin-{scheme}",
        "signout_callback": f"{base}/signout-callback-{scheme}",
        "signout": f"{base}/signout-{scheme}",
        "backchannel_logout": f"{base}/backchannel-logout-{scheme}",
    }


def serialise(provider: SsoProvider) -> dict[str, Any]:
    """The JSON shape of the CLI and exports. Never contains the client secret."""
    metadata = provider.metadata_record
    return {
        "id": str(provider.id),
        "account_id": provider.account_id,
        "builtin": provider.builtin,
        "scheme": provider.scheme,
        "display_name": provider.display_name,
        "protocol": provider.protocol,
        "enabled": provider.enabled,
        "visible": provider.visible,
        "authority": provider.authority,
        "client_id": provider.client_id,
        "has_client_secret": provider.client_secret_encrypted is not None,
        "response_type": provider.response_type,
        "scopes": " ".join(provider.scopes),
        "jit": provider.jit_provisioning,
        "default_role": provider.default_role,
        "authorization_expression": provider.authorization_expression,
        "icon_url": provider.icon_url,
        "version": provider.version,
        "sso_url": f"{public_url()}/sso/{provider.id}",
        "callback_urls": callback_urls(provider),
        "health": {
            "last_success": _iso(metadata.last_success_at) if metadata else None,
            "last_error": metadata.last_error if metadata else None,
            "key_ids": (metadata.key_ids or []) if metadata else [],
            "cert_expiry": _iso(metadata.cert_expiry) if metadata else None,
        },
    }


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None
