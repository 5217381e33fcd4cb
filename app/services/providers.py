"""SSO provider CRUD, validation, scheme renames (with aliases), export/import; every change
bumps ``version``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime
from datetime import timedelta
from typing import Any
from typing import NamedTuple
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import bindparam
from sqlalchemy import delete
from sqlalchemy import exists
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import aliased

from app.extensions import db
from app.models import Account
from app.models import ExternalLogin
from app.models import Protocol
from app.models import ProviderRoleMapping
from app.models import ProviderSchemeAlias
from app.models import ResponseType
from app.models import Role
from app.models import ScimToken
from app.models import SsoProvider
from app.models import User
from app.models.base import utcnow
from app.services import audit
from app.services import crypto
from app.services.errors import NotFound
from app.services.errors import ServiceError
from app.services.errors import ValidationError
from app.services.errors import uuid_or_not_found

SCHEME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
MAX_SCHEME_LENGTH = 64
# Protocol words and the built-in providers' schemes: an account's provider must not look
# like (or take the callback URLs of) a built-in one.
RESERVED_SCHEMES = frozenset({"google", "microsoft", "oidc", "oauth2", "saml", "callback"})
MAX_ROLE_MAPPINGS = 100

GOOGLE_AUTHORITY = "https://accounts.google.com"
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com/{tenant}/v2.0"

_ROLES = "owner, admin or member"


@dataclass(frozen=True)
class ProviderFields:
    """What an admin or operator can set on a provider (None: keep / default)."""

    protocol: str = Protocol.OIDC.value
    display_name: str = ""
    scheme: str = ""
    authority: str | None = None
    client_id: str | None = None
    # None or "": keep the stored secret (on update); anything else replaces it.
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
    role_claim: str | None = None
    role_mapping_default: str | None = None
    # (claim value, role) rows; replaced as a whole on update.
    role_mappings: tuple[tuple[str, str], ...] = ()
    # SAML 2.0. The IdP metadata comes pasted (``saml_metadata_xml``, parsed at save) or from
    # ``saml_metadata_url`` (fetched at save when there is no pasted document, and by every
    # metadata refresh). On update, an empty document keeps the stored metadata.
    saml_metadata_xml: str | None = None
    saml_metadata_url: str | None = None
    # What the IdP must sign: "assertion" (default), "response" or "both".
    saml_signed: str = "assertion"
    saml_allow_idp_initiated: bool = False
    saml_sign_requests: bool = False
    saml_nameid_format: str | None = None
    # Attribute names of the profile; None: services.saml.DEFAULT_ATTRIBUTES.
    saml_email_attribute: str | None = None
    saml_given_name_attribute: str | None = None
    saml_family_name_attribute: str | None = None
    saml_name_attribute: str | None = None


class ProviderInUse(ServiceError):
    """The provider is linked to SCIM tokens that are not revoked, so it cannot be deleted."""

    def __init__(self, message: str, tokens: list[ScimToken]) -> None:
        super().__init__(message)
        self.tokens = tokens


class DeleteImpact(NamedTuple):
    """What deleting a provider takes away (shown before the admin confirms)."""

    logins: int
    # Users with a login through this provider, no password and no other external login:
    # after the delete they cannot sign in at all.
    users_losing_only_method: int


def scheme_key(scheme: str) -> str:
    return scheme.strip().lower()


def _scheme_problem(
    scheme: str, *, exclude_id: uuid.UUID | None, builtin: bool, now: datetime | None = None
) -> str | None:
    """Why ``scheme`` cannot be used (None when it can)."""
    if not scheme:
        return "Authentication scheme must not be empty."
    if len(scheme) > MAX_SCHEME_LENGTH or not SCHEME_PATTERN.match(scheme):
        return (
            "Authentication scheme must start with a letter and contain only letters, digits, "
            f"underscores and hyphens (at most {MAX_SCHEME_LENGTH} characters)."
        )
    key = scheme_key(scheme)
    if not builtin and key in RESERVED_SCHEMES:
        return f"Authentication scheme {scheme!r} is reserved."
    query = select(SsoProvider.id).where(SsoProvider.scheme_key == key)
    if exclude_id is not None:
        query = query.where(SsoProvider.id != exclude_id)
    if db.session.scalar(query) is not None:
        return f"Authentication scheme {scheme!r} is already in use (schemes ignore case)."
    # Another provider's old callback URLs still answer under this scheme: taking it would
    # send that IdP's users to the wrong provider.
    alias_query = select(ProviderSchemeAlias.expires_at).where(
        ProviderSchemeAlias.scheme_key == key, ProviderSchemeAlias.expires_at > (now or utcnow())
    )
    if exclude_id is not None:
        alias_query = alias_query.where(ProviderSchemeAlias.provider_id != exclude_id)
    expires_at = db.session.scalar(alias_query)
    if expires_at is not None:
        return (
            f"Authentication scheme {scheme!r} was recently renamed on another provider, whose "
            f"old callback URLs keep working until {expires_at:%Y-%m-%d}; choose another."
        )
    return None


def validate_scheme(scheme: str, *, exclude_id: uuid.UUID | None = None, builtin: bool = False):
    """Raise ValidationError (field ``scheme``) for a malformed, reserved or taken scheme
    (taken: by another provider, or by another provider's unexpired alias)."""
    problem = _scheme_problem(scheme, exclude_id=exclude_id, builtin=builtin)
    if problem is not None:
        raise ValidationError(problem, "scheme")


def _clean(value: str | None) -> str | None:
    return (value or "").strip() or None


def _url_problem(url: str | None, *, label: str) -> str | None:
    """Syntax and outbound policy of an admin-entered URL that Keyward will fetch."""
    from app.services import outbound

    if url is None:
        return f"{label} is required."
    if len(url) > 2048:
        return f"{label} must be at most 2048 characters."
    try:
        outbound.check_url(url)
    except outbound.OutboundError as error:
        return f"{label}: {error}."
    return None


def _icon_url_problem(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 2048:
        return "Icon URL must be an http(s) URL (at most 2048 characters)."
    return None


def _discovery_problem(authority: str, response_type: str) -> str | None:
    """Fetch the authority's discovery document (through the outbound fetcher, like the
    metadata refresh) and say what is wrong with it; None when it is usable.

    Only checked, never stored: the metadata refresh writes ProviderMetadata."""
    from app.services import metadata
    from app.services import outbound

    url = metadata.discovery_url(authority)
    try:
        response = outbound.fetch(url)
        if response.status != 200:
            raise outbound.OutboundFailed(f"HTTP {response.status}")
        document = response.json()
    except outbound.OutboundError as error:
        return f"The discovery document at {url} could not be loaded: {error}."
    if not isinstance(document, dict):
        return f"The discovery document at {url} is not a JSON object."
    issuer = document.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        return f"The discovery document at {url} has no issuer."
    # OpenID Connect Discovery 1.0 section 4.3: the issuer must be the URL it was read from.
    if not metadata.issuer_matches(authority, issuer):
        return (
            f"The discovery document at {url} names issuer {issuer[:200]}, "
            f"not the authority {authority}."
        )
    required = ["authorization_endpoint", "jwks_uri"]
    if response_type != ResponseType.ID_TOKEN:
        required.append("token_endpoint")
    missing = [name for name in required if not isinstance(document.get(name), str)]
    if missing:
        return f"The discovery document at {url} has no {', '.join(missing)}."
    return None


def _role_problem(value: str | None, label: str) -> str | None:
    try:
        Role(value)
    except ValueError:
        return f"{label} must be {_ROLES}."
    return None


def _role_mapping_problems(
    rows: tuple[tuple[str, str], ...], errors: dict[str, str]
) -> list[tuple[str, str]]:
    """Check the (claim value, role) rows; returns them cleaned (values stripped)."""
    if len(rows) > MAX_ROLE_MAPPINGS:
        errors["role_mappings"] = f"At most {MAX_ROLE_MAPPINGS} role mappings."
        return []
    cleaned: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        key = f"role_mappings[{index}]"
        number = index + 1
        if not isinstance(row, tuple | list) or len(row) != 2:
            errors[key] = f"Role mapping {number} must be a claim value and a role."
            continue
        value, role = row
        value = value.strip() if isinstance(value, str) else ""
        if not value:
            errors[key] = f"Role mapping {number}: the claim value must not be empty."
        elif len(value) > 255:
            errors[key] = f"Role mapping {number}: the claim value is longer than 255 characters."
        elif value in seen:
            # Matching is exact, so only identical values are duplicates.
            errors[key] = (
                f"Role mapping {number}: the claim value {value!r} is already mapped "
                f"(mapping {seen[value]})."
            )
        elif (problem := _role_problem(role, f"Role mapping {number} ({value!r})")) is not None:
            errors[key] = f"{problem[:-1]}, not {role!r}."
        else:
            seen[value] = number
            cleaned.append((value, role))
    return cleaned


class _Validated(NamedTuple):
    values: dict[str, Any]
    role_mappings: list[tuple[str, str]]
    # SAML: the IdP metadata to apply (None: nothing new to apply).
    saml_metadata: Any = None


# SAML attribute-name fields and their labels.
_SAML_ATTRIBUTE_FIELDS = (
    ("saml_email_attribute", "Email attribute"),
    ("saml_given_name_attribute", "Given name attribute"),
    ("saml_family_name_attribute", "Family name attribute"),
    ("saml_name_attribute", "Display name attribute"),
)
_TRANSIENT_NAMEID = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"


def _validate_saml(
    fields: ProviderFields,
    current: SsoProvider | None,
    errors: dict[str, str],
    *,
    fetch_metadata: bool,
) -> tuple[dict[str, Any], Any]:
    """The SAML settings' column values and the IdP metadata to apply (parsed from the pasted
    document, or fetched from the URL through services.outbound when it is new); problems go
    to ``errors``. A stored provider keeps its metadata when neither is given anew."""
    from app.services import outbound
    from app.services import saml  # imported late: python3-saml is heavy

    values: dict[str, Any] = {}
    url = _clean(fields.saml_metadata_url)
    if url is not None and (problem := _url_problem(url, label="Metadata URL")):
        errors["saml_metadata_url"] = problem
    values["saml_metadata_url"] = url
    stored = (
        current is not None
        and current.protocol == Protocol.SAML
        and bool(current.saml_idp_entity_id)
        and bool(current.certificates)
    )
    document = (fields.saml_metadata_xml or "").strip()
    metadata = None
    if document:
        try:
            metadata = saml.parse_idp_metadata(document)
        except ValidationError as error:
            errors["saml_metadata_xml"] = error.message
    elif url is not None and "saml_metadata_url" not in errors:
        url_is_new = not stored or current is None or url != current.saml_metadata_url
        if fetch_metadata and url_is_new:
            try:
                metadata = saml.fetch_idp_metadata(url)
            except outbound.OutboundError as error:
                errors["saml_metadata_url"] = f"The metadata at {url} could not be loaded: {error}."
            except ValidationError as error:
                errors["saml_metadata_url"] = f"The metadata at {url} cannot be used: {error}"
    elif url is None and not stored:
        errors["saml_metadata_xml"] = (
            "Paste the identity provider's metadata XML, or enter its metadata URL."
        )

    signed = fields.saml_signed or saml.SIGNED_CHOICES[0]
    if signed not in saml.SIGNED_CHOICES:
        errors["saml_signed"] = "Signed must be assertion, response or both."
    values["saml_signed"] = signed
    values["saml_allow_idp_initiated"] = bool(fields.saml_allow_idp_initiated)
    values["saml_sign_requests"] = sign_requests = bool(fields.saml_sign_requests)
    if metadata is not None and metadata.want_authn_requests_signed and not sign_requests:
        # The IdP would refuse every unsigned AuthnRequest: say so now, not at sign-in.
        errors["saml_sign_requests"] = (
            "The identity provider's metadata asks for signed requests: turn on signing."
        )

    nameid_format = _clean(fields.saml_nameid_format)
    if nameid_format is not None:
        if len(nameid_format) > 255 or not nameid_format.startswith("urn:"):
            errors["saml_nameid_format"] = "NameID format must be a URN (at most 255 characters)."
        elif nameid_format == _TRANSIENT_NAMEID:
            # Core 8.3.8: a transient NameID changes at every sign-in, so it cannot name a login.
            errors["saml_nameid_format"] = (
                "A transient NameID changes at every sign-in: choose persistent, email address "
                "or unspecified."
            )
    values["saml_nameid_format"] = nameid_format
    for name, label in _SAML_ATTRIBUTE_FIELDS:
        values[name] = value = _clean(getattr(fields, name))
        if value is not None and len(value) > 255:
            errors[name] = f"{label} must be at most 255 characters."
    return values, metadata


def _validate(
    fields: ProviderFields,
    *,
    exclude_id: uuid.UUID | None,
    builtin: bool,
    has_secret: bool = False,
    check_discovery: bool = False,
    current: SsoProvider | None = None,
    fetch_metadata: bool = True,
) -> _Validated:
    """Check every field and collect every problem; return the column values.

    ``current`` is the provider being updated (None on create); ``fetch_metadata`` lets a
    SAML metadata URL be fetched now. Raises one ValidationError whose ``errors`` names each
    bad field. Reads only (and fetches): nothing is added or flushed."""
    errors: dict[str, str] = {}

    protocol = fields.protocol
    if protocol not in {p.value for p in Protocol}:
        errors["protocol"] = "Protocol must be oidc, oauth2 or saml."

    display_name = (fields.display_name or "").strip()
    if not display_name:
        errors["display_name"] = "Display name is required."
    elif len(display_name) > 100:
        errors["display_name"] = "Display name must be at most 100 characters."

    scheme = (fields.scheme or "").strip()
    if problem := _scheme_problem(scheme, exclude_id=exclude_id, builtin=builtin):
        errors["scheme"] = problem

    response_type = fields.response_type
    if response_type not in {r.value for r in ResponseType}:
        errors["response_type"] = "Response type must be one of: code, id_token, code id_token."
    elif protocol == Protocol.OAUTH2 and response_type != ResponseType.CODE:
        # Plain OAuth 2.0 has no ID token: only the code flow can identify the user.
        errors["response_type"] = "OAuth 2.0 providers use the code response type."

    client_id = (fields.client_id or "").strip()
    if not client_id and protocol != Protocol.SAML:
        errors["client_id"] = "Client ID is required."
    elif len(client_id) > 255:
        errors["client_id"] = "Client ID must be at most 255 characters."

    if problem := _role_problem(fields.default_role, "Default role"):
        errors["default_role"] = problem

    icon_url = _clean(fields.icon_url)
    if problem := _icon_url_problem(icon_url):
        errors["icon_url"] = problem

    additional_scopes = " ".join((fields.additional_scopes or "").split())
    if len(additional_scopes) > 1024:
        errors["additional_scopes"] = "Additional scopes must be at most 1024 characters."

    remote_signout_path = _clean(fields.remote_signout_path)
    if remote_signout_path is not None and len(remote_signout_path) > 255:
        errors["remote_signout_path"] = "Remote sign-out path must be at most 255 characters."

    names: dict[str, str | None] = {}
    for name, label, default in (
        ("external_id_claim", "External id claim", None),
        ("subject_field", "Subject field", "sub"),
        ("email_field", "Email field", "email"),
        ("name_field", "Name field", "name"),
        ("role_claim", "Role claim", None),
    ):
        names[name] = _clean(getattr(fields, name)) or default
        if names[name] is not None and len(names[name]) > 100:
            errors[name] = f"{label} must be at most 100 characters."

    values: dict[str, Any] = {
        "authority": None,
        "authorization_endpoint": None,
        "token_endpoint": None,
        "userinfo_endpoint": None,
    }
    if protocol == Protocol.OIDC:
        values["authority"] = authority = _clean(fields.authority)
        problem = _url_problem(authority, label="Authority URL")
        if problem is None and check_discovery:
            problem = _discovery_problem(authority or "", response_type)
        if problem is not None:
            errors["authority"] = problem
    elif protocol == Protocol.OAUTH2:
        # No discovery and no ID token: the code flow with configured endpoints, and the
        # identity read from userinfo.
        for name, label in (
            ("authorization_endpoint", "Authorization endpoint"),
            ("token_endpoint", "Token endpoint"),
            ("userinfo_endpoint", "Userinfo endpoint"),
        ):
            values[name] = url = _clean(getattr(fields, name))
            if problem := _url_problem(url, label=label):
                errors[name] = problem
    saml_metadata = None
    if protocol == Protocol.SAML:
        saml_values, saml_metadata = _validate_saml(
            fields, current, errors, fetch_metadata=fetch_metadata
        )
        values.update(saml_values)

    if fields.allow_hs256 and not (fields.client_secret or has_secret):
        errors["allow_hs256"] = "HS256 ID tokens need a client secret to verify them."

    expression = _clean(fields.authorization_expression)
    if expression is not None:
        from app.services import authz

        try:
            authz.compile_expression(expression)
        except ValidationError as error:
            # The message carries the line and column, and the line with a caret under it.
            errors["authorization_expression"] = error.message

    role_mapping_default = _clean(fields.role_mapping_default)
    if role_mapping_default is not None and (
        problem := _role_problem(role_mapping_default, "The role when no value matches")
    ):
        errors["role_mapping_default"] = problem
    role_mappings = _role_mapping_problems(tuple(fields.role_mappings or ()), errors)
    if names["role_claim"] is None and (fields.role_mappings or role_mapping_default):
        errors.setdefault(
            "role_claim", "Role claim is required for role mappings (e.g. groups or roles)."
        )

    if errors:
        raise ValidationError.from_errors(errors)
    values.update(
        protocol=protocol,
        display_name=display_name,
        scheme=scheme,
        scheme_key=scheme_key(scheme),
        client_id=client_id or None,
        response_type=response_type,
        additional_scopes=additional_scopes,
        icon_url=icon_url,
        remote_signout_path=remote_signout_path,
        jit_provisioning=bool(fields.jit_provisioning),
        default_role=fields.default_role,
        trust_email_verified=bool(fields.trust_email_verified),
        allow_hs256=bool(fields.allow_hs256),
        enabled=bool(fields.enabled),
        visible=bool(fields.visible),
        authorization_expression=expression,
        role_mapping_default=role_mapping_default,
        **names,
    )
    return _Validated(values, role_mappings, saml_metadata)


def _set_role_mappings(provider: SsoProvider, rows: list[tuple[str, str]]) -> None:
    """Make the provider's mapping rows exactly ``rows``, updating rows in place by value.

    In place rather than delete-all-then-insert: the unit of work inserts before it deletes,
    so re-adding a value in the same flush would break the (provider, value) unique index."""
    wanted = dict(rows)
    for mapping in list(provider.role_mappings):
        if mapping.claim_value in wanted:
            mapping.role = wanted.pop(mapping.claim_value)
        else:
            provider.role_mappings.remove(mapping)
    for value, role in rows:
        if value in wanted:
            provider.role_mappings.append(ProviderRoleMapping(claim_value=value, role=role))


def _mapping_rows(provider: SsoProvider) -> list[list[str]]:
    return [[m.claim_value, m.role] for m in provider.role_mappings]


def create_provider(
    fields: ProviderFields,
    *,
    account: Account | None,
    builtin: str | None = None,
    actor: User | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
    check_discovery: bool = False,
    fetch_metadata: bool = True,
) -> SsoProvider:
    """Create a provider for ``account`` (None with ``builtin`` for Google/Microsoft).

    ``check_discovery`` (OIDC): the authority's discovery document must load and name the
    authority as its issuer. SAML: the IdP metadata (pasted, or fetched from its URL unless
    ``fetch_metadata`` is off: the metadata refresh then fetches it later) must describe an
    IdP; its entity id, endpoints and signing certificates are stored, and an SP key pair is
    made when requests are signed. Raises ValidationError with every bad field in
    ``errors``; nothing is added on error. Records ``provider.created``."""
    if (account is None) == (builtin is None):
        raise ValidationError("A provider belongs to an account, or is a built-in one.", "account")
    if builtin is not None and db.session.scalar(
        select(SsoProvider.id).where(SsoProvider.builtin == builtin)
    ):
        raise ValidationError(f"The built-in {builtin} provider already exists.", "builtin")
    validated = _validate(
        fields,
        exclude_id=None,
        builtin=builtin is not None,
        check_discovery=check_discovery,
        fetch_metadata=fetch_metadata,
    )
    return _insert(validated, fields, account=account, builtin=builtin, actor=actor, meta=meta)


def _insert(
    validated: _Validated,
    fields: ProviderFields,
    *,
    account: Account | None,
    builtin: str | None,
    actor: User | None,
    meta: audit.RequestMeta,
    imported: bool = False,
) -> SsoProvider:
    provider = SsoProvider(account=account, builtin=builtin, **validated.values)
    if fields.client_secret:
        provider.client_secret_encrypted = crypto.encrypt(fields.client_secret)
    _set_role_mappings(provider, validated.role_mappings)
    db.session.add(provider)
    _apply_saml(provider, validated)
    db.session.flush()
    details: dict[str, Any] = {"scheme": provider.scheme, "protocol": provider.protocol}
    if imported:
        details["imported"] = True
    audit.record(
        "provider.created",
        actor=actor,
        account_id=account.id if account else None,
        target_type="provider",
        target_id=provider.id,
        details=details,
        meta=meta,
    )
    return provider


def _apply_saml(provider: SsoProvider, validated: _Validated) -> dict[str, Any]:
    """Store the validated IdP metadata on a SAML provider and make its SP key pair when it
    signs requests and has none; returns what changed for the audit log. Adds, never
    flushes."""
    if provider.protocol != Protocol.SAML:
        return {}
    from app.services import saml  # imported late: python3-saml is heavy

    changes: dict[str, Any] = {}
    metadata = validated.saml_metadata
    if metadata is not None:
        before = (provider.saml_idp_entity_id, provider.saml_sso_url, provider.saml_slo_url)
        certificates = saml.apply_idp_metadata(provider, metadata)
        after = (provider.saml_idp_entity_id, provider.saml_sso_url, provider.saml_slo_url)
        if before != after or certificates["added"] or certificates["removed"]:
            changes["saml_metadata"] = {
                "entity_id": provider.saml_idp_entity_id,
                "certificates": certificates,
            }
    if provider.saml_sign_requests and not provider.saml_sp_key_encrypted:
        saml.generate_sp_keypair(provider)
        changes["saml_sp_key"] = "generated"
    return changes


def _saml_metadata_changes(provider: SsoProvider, validated: _Validated) -> bool:
    """Whether applying ``validated``'s SAML metadata would change ``provider`` (read-only)."""
    from app.services import saml

    metadata = validated.saml_metadata
    if metadata is None or provider.protocol != Protocol.SAML:
        return metadata is not None
    stored = {cert.fingerprint_sha256 for cert in provider.certificates}
    wanted = {saml.certificate_facts(pem)[0] for pem in metadata.certificates}
    return stored != wanted or (
        provider.saml_idp_entity_id,
        provider.saml_sso_url,
        provider.saml_slo_url,
    ) != (metadata.entity_id, metadata.sso_url, metadata.slo_url)


def update_provider(
    provider: SsoProvider,
    fields: ProviderFields,
    *,
    actor: User | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
    check_discovery: bool = False,
    fetch_metadata: bool = True,
) -> dict[str, dict]:
    """Apply ``fields`` to an account's provider; returns what changed.

    Validates like create_provider (the provider's own scheme and aliases do not count as
    taken); ``check_discovery`` runs only when the authority or protocol changes, so an IdP
    that is down does not block renaming its button. ``fields.client_secret`` None or ""
    keeps the stored secret, anything else replaces it. A scheme rename keeps every login
    (they reference the provider's id) and keeps the old callback URLs working for
    PROVIDER_SCHEME_ALIAS_DAYS through a ProviderSchemeAlias; renaming back to one of the
    provider's own aliases removes that alias.

    When anything changed: bumps ``version`` and records one ``provider.updated`` event with
    ``{"changes": {field: {"before", "after"}}}`` (the secret only as ``"replaced"``).
    Raises ValidationError (every bad field in ``errors``, nothing changed); built-in
    providers come from the environment and cannot be edited here."""
    if provider.builtin is not None:
        raise ValidationError(
            f"The built-in {provider.builtin} provider is configured from the environment "
            f"({provider.builtin.upper()}_CLIENT_ID...), not edited here.",
            "builtin",
        )
    discovery_needed = check_discovery and (
        _clean(fields.authority) != provider.authority or fields.protocol != provider.protocol
    )
    validated = _validate(
        fields,
        exclude_id=provider.id,
        builtin=False,
        has_secret=provider.client_secret_encrypted is not None,
        check_discovery=discovery_needed,
        current=provider,
        fetch_metadata=fetch_metadata,
    )
    now = utcnow()
    changes: dict[str, Any] = {}
    for name, value in validated.values.items():
        if name == "scheme_key":
            continue
        before = getattr(provider, name)
        if before != value:
            changes[name] = {"before": before, "after": value}
    rows_before = _mapping_rows(provider)
    rows_after = [list(row) for row in validated.role_mappings]
    # Order carries no meaning (the strongest matching role wins), so a reordering is no change.
    if dict(map(tuple, rows_before)) != dict(validated.role_mappings):
        changes["role_mappings"] = {"before": rows_before, "after": rows_after}
    if fields.client_secret and _secret_differs(provider, fields.client_secret):
        # Never a value (nor a hash of one) in the audit trail.
        changes["client_secret"] = "replaced"  # noqa: S105 - a marker, not a password
    metadata_changes = _saml_metadata_changes(provider, validated)
    key_needed = (
        validated.values.get("saml_sign_requests") is True and not provider.saml_sp_key_encrypted
    )
    if not changes and not metadata_changes and not key_needed:
        return {}

    details: dict[str, Any] = {"changes": changes}
    old_scheme, old_key = provider.scheme, provider.scheme_key
    for name, value in validated.values.items():
        setattr(provider, name, value)
    if "role_mappings" in changes:
        _set_role_mappings(provider, validated.role_mappings)
    if "client_secret" in changes:
        provider.client_secret_encrypted = crypto.encrypt(fields.client_secret or "")
    if provider.scheme_key != old_key:
        details["scheme_alias"] = _rename(provider, old_scheme, old_key, now=now)
    saml_changes = _apply_saml(provider, validated)
    changes.update(saml_changes)
    details["changes"] = changes
    provider.version += 1
    db.session.flush()
    audit.record(
        "provider.updated",
        actor=actor,
        account_id=provider.account_id,
        target_type="provider",
        target_id=provider.id,
        details=details,
        meta=meta,
    )
    return changes


def _secret_differs(provider: SsoProvider, secret: str) -> bool:
    if provider.client_secret_encrypted is None:
        return True
    try:
        return crypto.decrypt(provider.client_secret_encrypted) != secret
    except crypto.SecretUnreadable:
        return True  # unreadable now: the new one is certainly a change


def _rename(provider: SsoProvider, old_scheme: str, old_key: str, *, now: datetime) -> dict:
    """Keep ``old_scheme``'s callback URLs answering for the grace period; returns what the
    audit event says about it. Logins need nothing: they reference the provider's id."""
    own = {alias.scheme_key: alias for alias in provider.scheme_aliases}
    removed = own.get(provider.scheme_key)
    if removed is not None:
        # Renamed back: the current scheme resolves by itself now.
        provider.scheme_aliases.remove(removed)
    days = int(current_app.config.get("PROVIDER_SCHEME_ALIAS_DAYS", 30))
    expires_at = now + timedelta(days=days)
    alias = own.get(old_key)
    if alias is None:
        # An expired alias of any provider may still hold the unique key until it is purged.
        db.session.execute(
            delete(ProviderSchemeAlias).where(
                ProviderSchemeAlias.scheme_key == old_key, ProviderSchemeAlias.expires_at <= now
            )
        )
        alias = ProviderSchemeAlias(scheme=old_scheme, scheme_key=old_key, created_at=now)
        provider.scheme_aliases.append(alias)
    alias.scheme, alias.expires_at = old_scheme, expires_at
    return {
        "scheme": old_scheme,
        "expires_at": expires_at.isoformat(),
        "removed": removed.scheme if removed is not None else None,
    }


def live_aliases(
    provider: SsoProvider, *, now: datetime | None = None
) -> list[ProviderSchemeAlias]:
    """The provider's former schemes whose callback URLs still work, soonest expiry first."""
    now = now or utcnow()
    return sorted(
        (alias for alias in provider.scheme_aliases if alias.expires_at > now),
        key=lambda alias: alias.expires_at,
    )


def resolve_callback_scheme(
    scheme: str, *, now: datetime | None = None
) -> tuple[SsoProvider, ProviderSchemeAlias | None] | None:
    """The provider a callback URL's scheme names (case-insensitive): the one whose current
    scheme it is, else the one with an unexpired alias of that name (with the alias). None
    when neither exists; expired aliases never resolve."""
    provider = find_by_scheme(scheme)
    if provider is not None:
        return provider, None
    alias = db.session.scalar(
        select(ProviderSchemeAlias).where(
            ProviderSchemeAlias.scheme_key == scheme_key(scheme),
            ProviderSchemeAlias.expires_at > (now or utcnow()),
        )
    )
    if alias is None:
        return None
    return alias.provider, alias


def purge_expired_aliases(now: datetime | None = None) -> int:
    """Delete the aliases whose grace period is over; returns how many. Flushes only."""
    result = db.session.execute(
        delete(ProviderSchemeAlias).where(ProviderSchemeAlias.expires_at <= (now or utcnow()))
    )
    return result.rowcount or 0


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
_ENABLED_FOR_LOGIN = (_providers.c.enabled.is_(True),)
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
    """Enable or disable a provider (a disabled one refuses every sign-in); records
    ``provider.enabled``/``provider.disabled`` and bumps ``version`` when it changes."""
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


def set_visible(
    provider: SsoProvider,
    visible: bool,
    *,
    actor: User | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
) -> None:
    """Show or hide a provider's button on /login (its direct /sso link works either way);
    records ``provider.shown``/``provider.hidden`` and bumps ``version`` when it changes."""
    if provider.visible != visible:
        provider.visible = visible
        provider.version += 1
        audit.record(
            "provider.shown" if visible else "provider.hidden",
            actor=actor,
            account_id=provider.account_id,
            target_type="provider",
            target_id=provider.id,
            meta=meta,
        )


def end_scheme_aliases(
    provider: SsoProvider,
    *,
    actor: User | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
) -> list[str]:
    """End the grace period of the provider's old schemes now ("the IdP has the new callback
    URLs"): sign-ins send the new redirect URI from the next request, and the old paths stop
    answering. Records ``provider.aliases_ended``; returns the old schemes removed."""
    aliases = live_aliases(provider)
    if not aliases:
        return []
    for alias in aliases:
        provider.scheme_aliases.remove(alias)
        db.session.delete(alias)
    provider.version += 1
    ended = [alias.scheme for alias in aliases]
    audit.record(
        "provider.aliases_ended",
        actor=actor,
        account_id=provider.account_id,
        target_type="provider",
        target_id=provider.id,
        details={"schemes": ended},
        meta=meta,
    )
    db.session.flush()
    return ended


def delete_blockers(provider: SsoProvider) -> list[ScimToken]:
    """The unrevoked SCIM tokens linked to the provider: while any exists it cannot be
    deleted (the IdP would keep provisioning users for a provider that is gone)."""
    return list(
        db.session.scalars(
            select(ScimToken)
            .where(ScimToken.provider_id == provider.id, ScimToken.revoked_at.is_(None))
            .order_by(ScimToken.created_at, ScimToken.name)
        )
    )


def delete_impact(provider: SsoProvider) -> DeleteImpact:
    """How many logins deleting the provider removes, and how many users it leaves without
    any way to sign in (no password, no other external login). Two COUNT queries."""
    logins = db.session.scalar(
        select(func.count())
        .select_from(ExternalLogin)
        .where(ExternalLogin.provider_id == provider.id)
    )
    other = aliased(ExternalLogin)
    stranded = db.session.scalar(
        select(func.count())
        .select_from(ExternalLogin)
        .join(User, User.id == ExternalLogin.user_id)
        .where(
            ExternalLogin.provider_id == provider.id,
            User.password_hash.is_(None),
            ~exists().where(
                other.user_id == ExternalLogin.user_id, other.provider_id != provider.id
            ),
        )
    )
    return DeleteImpact(logins=logins or 0, users_losing_only_method=stranded or 0)


def delete_provider(
    provider: SsoProvider, *, actor: User | None = None, meta: audit.RequestMeta = audit.NO_REQUEST
) -> int:
    """Delete the provider and its login records; returns how many logins were removed.

    Raises ProviderInUse (nothing changed) while unrevoked SCIM tokens are linked to it;
    revoked ones are unlinked (kept, with no provider). Records ``provider.deleted`` with
    the logins removed and the users left without any sign-in method."""
    blockers = delete_blockers(provider)
    if blockers:
        names = ", ".join(token.name for token in blockers)
        raise ProviderInUse(
            f"Linked to SCIM token(s) {names}: revoke them or unlink them first.", blockers
        )
    impact = delete_impact(provider)
    # One statement, however many logins: the rows are never loaded.
    db.session.execute(delete(ExternalLogin).where(ExternalLogin.provider_id == provider.id))
    # Revoked tokens stay as history, unlinked: their foreign key would refuse the delete.
    unlinked = db.session.execute(
        update(ScimToken).where(ScimToken.provider_id == provider.id).values(provider_id=None)
    ).rowcount
    audit.record(
        "provider.deleted",
        actor=actor,
        account_id=provider.account_id,
        target_type="provider",
        target_id=provider.id,
        details={
            "scheme": provider.scheme,
            "logins_removed": impact.logins,
            "users_losing_only_method": impact.users_losing_only_method,
            "revoked_scim_tokens_unlinked": unlinked or 0,
        },
        meta=meta,
    )
    db.session.delete(provider)
    db.session.flush()
    return impact.logins


def client_secret(provider: SsoProvider) -> str | None:
    """The decrypted client secret (for the token endpoint only; never shown)."""
    if not provider.client_secret_encrypted:
        return None
    return crypto.decrypt(provider.client_secret_encrypted)


def public_url() -> str:
    return current_app.config["PUBLIC_URL"].rstrip("/")


def _callback_urls_for(scheme: str) -> dict[str, str]:
    base = public_url()
    return {
        "signin": f"{base}/signin-{scheme}",
        "signout_callback": f"{base}/signout-callback-{scheme}",
        "signout": f"{base}/signout-{scheme}",
        "backchannel_logout": f"{base}/backchannel-logout-{scheme}",
    }


def callback_urls(provider: SsoProvider) -> dict[str, str]:
    """The URLs to register at the IdP, built from PUBLIC_URL (never the Host header)."""
    return _callback_urls_for(provider.scheme)


def alias_callback_urls(alias: ProviderSchemeAlias) -> dict[str, str]:
    """The old callback URLs a scheme alias keeps working (same keys as callback_urls)."""
    return _callback_urls_for(alias.scheme)


def active_scheme(provider: SsoProvider) -> str:
    """The scheme sign-ins use in the URLs they send to the IdP: the newest old scheme while
    one is a live alias (the IdP may know only the old callback URLs, and a SAML IdP knows
    Keyward by an entity id that contains the scheme), else the current one. See
    oidc.signin_redirect_uri."""
    aliases = live_aliases(provider)
    if aliases:
        return max(aliases, key=lambda alias: alias.created_at).scheme
    return provider.scheme


def certificates_of(provider: SsoProvider) -> list[dict[str, Any]]:
    """The SAML signing certificates (fingerprint, not-after), soonest expiry first."""
    rows = sorted(
        (cert for cert in provider.certificates if cert.use == "signing"),
        key=lambda cert: (cert.not_after is None, cert.not_after),
    )
    return [{"fingerprint": c.fingerprint_sha256, "not_after": _iso(c.not_after)} for c in rows]


def _saml_summary(provider: SsoProvider) -> dict[str, Any]:
    base = public_url()
    return {
        "idp_entity_id": provider.saml_idp_entity_id,
        "sso_url": provider.saml_sso_url,
        "slo_url": provider.saml_slo_url,
        "metadata_url": provider.saml_metadata_url,
        "signed": provider.saml_signed,
        "allow_idp_initiated": bool(provider.saml_allow_idp_initiated),
        "sign_requests": bool(provider.saml_sign_requests),
        "nameid_format": provider.saml_nameid_format,
        "sp_entity_id": f"{base}/saml/{provider.scheme}/metadata",
        "sp_metadata_url": f"{base}/saml/{provider.scheme}/metadata",
        "acs_url": f"{base}/signin-{provider.scheme}",
        "sp_slo_url": f"{base}/signout-{provider.scheme}",
    }


def serialise(provider: SsoProvider) -> dict[str, Any]:
    """The JSON shape of the CLI and exports. Never contains the client secret nor the SAML
    signing key. SAML providers add ``saml`` (IdP and SP settings) and ``certificates``;
    their ``health.cert_expiry`` is the earliest signing certificate's not-after."""
    metadata = provider.metadata_record
    certificates = certificates_of(provider)
    cert_expiry = _iso(metadata.cert_expiry) if metadata else None
    if provider.protocol == Protocol.SAML and certificates:
        cert_expiry = certificates[0]["not_after"]
    item = {
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
        "aliases": [
            {"scheme": alias.scheme, "expires_at": _iso(alias.expires_at)}
            for alias in live_aliases(provider)
        ],
        "role_claim": provider.role_claim,
        "role_mapping_default": provider.role_mapping_default,
        "role_mappings": [{"value": m.claim_value, "role": m.role} for m in provider.role_mappings],
        "health": {
            "last_success": _iso(metadata.last_success_at) if metadata else None,
            "last_error": metadata.last_error if metadata else None,
            "key_ids": (metadata.key_ids or []) if metadata else [],
            "cert_expiry": cert_expiry,
        },
        "certificates": certificates,
    }
    if provider.protocol == Protocol.SAML:
        item["saml"] = _saml_summary(provider)
    return item


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


# --- export and import --------------------------------------------------------------------
# Settings an export carries besides serialise(): everything an admin can edit except the
# client secret, which never leaves the database (DESIGN "Secrets at rest").
_EXPORTED_SETTINGS = (
    "additional_scopes",
    "remote_signout_path",
    "jit_provisioning",
    "trust_email_verified",
    "external_id_claim",
    "allow_hs256",
    "authorization_endpoint",
    "token_endpoint",
    "userinfo_endpoint",
    "subject_field",
    "email_field",
    "name_field",
    # SAML: the metadata document travels (it holds only public data), so an import needs no
    # network; the SP key pair does not (a new one is made when requests are signed).
    "saml_metadata_xml",
    "saml_metadata_url",
    "saml_signed",
    "saml_allow_idp_initiated",
    "saml_sign_requests",
    "saml_nameid_format",
    "saml_email_attribute",
    "saml_given_name_attribute",
    "saml_family_name_attribute",
    "saml_name_attribute",
)
# Keys of an exported provider that describe this installation, not the settings: accepted
# by import and ignored.
_IGNORED_ON_IMPORT = frozenset(
    {
        "id",
        "account_id",
        "builtin",
        "has_client_secret",
        "scopes",
        "jit",
        "version",
        "sso_url",
        "callback_urls",
        "aliases",
        "health",
        "certificates",
        "saml",
    }
)
_BOOLEAN_SETTINGS = frozenset(
    {
        "enabled",
        "visible",
        "jit_provisioning",
        "trust_email_verified",
        "allow_hs256",
        "saml_allow_idp_initiated",
        "saml_sign_requests",
    }
)
_FIELD_NAMES = tuple(f.name for f in dataclass_fields(ProviderFields))


def export_providers(account_id: int | None = None) -> list[dict[str, Any]]:
    """Every provider (or one account's) as JSON-ready dicts that import_providers reads
    back: serialise() plus the other editable settings. Never the client secret nor its
    ciphertext (``has_client_secret`` only says whether one is stored)."""
    exported = []
    for provider in list_providers(account_id):
        item = serialise(provider)
        for name in _EXPORTED_SETTINGS:
            item[name] = getattr(provider, name)
        exported.append(item)
    return exported


def _fields_from_item(item: Any, errors: dict[str, str]) -> ProviderFields | None:
    """ProviderFields from one exported provider; type problems go to ``errors``."""
    if not isinstance(item, dict):
        errors[""] = "must be a JSON object."
        return None
    if item.get("builtin"):
        errors["builtin"] = "built-in providers come from the environment and are not imported."
        return None
    values: dict[str, Any] = {}
    for key, value in item.items():
        if key in _IGNORED_ON_IMPORT:
            continue
        if key not in _FIELD_NAMES:
            errors[str(key)] = "unknown setting."
        elif key == "role_mappings":
            rows = _mapping_rows_from(value)
            if rows is None:
                errors[key] = 'must be a list of {"value": ..., "role": ...} objects.'
            else:
                values[key] = rows
        elif key in _BOOLEAN_SETTINGS:
            if not isinstance(value, bool):
                errors[key] = "must be true or false."
            else:
                values[key] = value
        elif value is not None and not isinstance(value, str):
            errors[key] = "must be a string or null."
        else:
            values[key] = value
    # An export written before additional_scopes existed, or by hand: derive it from scopes.
    if "additional_scopes" not in item and isinstance(item.get("scopes"), str):
        base = {"openid", "profile", "email"}
        values["additional_scopes"] = " ".join(s for s in item["scopes"].split() if s not in base)
    if "jit_provisioning" not in item and isinstance(item.get("jit"), bool):
        values["jit_provisioning"] = item["jit"]
    for name in ("display_name", "scheme", "additional_scopes", "subject_field"):
        if name in values and values[name] is None:
            values[name] = ""
    for name in (
        "protocol",
        "response_type",
        "default_role",
        "email_field",
        "name_field",
        "saml_signed",
    ):
        if name in values and values[name] is None:
            del values[name]
    return ProviderFields(**values)


def _mapping_rows_from(value: Any) -> tuple[tuple[str, str], ...] | None:
    if value is None:
        return ()
    if not isinstance(value, list):
        return None
    rows = []
    for row in value:
        if isinstance(row, dict) and set(row) == {"value", "role"}:
            rows.append((row["value"], row["role"]))
        elif isinstance(row, list) and len(row) == 2:
            rows.append((row[0], row[1]))
        else:
            return None
    return tuple(rows)


def import_providers(
    document: Any,
    *,
    account: Account,
    actor: User | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
    check_discovery: bool = False,
    fetch_metadata: bool = True,
) -> list[SsoProvider]:
    """Create the providers of an export (a JSON list) in ``account``: all of them or none.

    Every item is validated like the form (``check_discovery`` as in create_provider); a
    scheme already in use, or used twice in the document, is an error, never an overwrite.
    Client secrets are not in exports: set them afterwards (an item may carry
    ``client_secret`` when written by hand). Raises one ValidationError whose ``errors``
    keys read ``item 2, scheme`` (items count from 1) and whose message is the first."""
    if not isinstance(document, list):
        raise ValidationError("The import must be a JSON list of providers.", "document")
    if not document:
        raise ValidationError("The import holds no providers.", "document")
    errors: dict[str, str] = {}
    validated: list[tuple[_Validated, ProviderFields]] = []
    first_item: dict[str, int] = {}
    for number, item in enumerate(document, start=1):
        item_errors: dict[str, str] = {}
        fields = _fields_from_item(item, item_errors)
        if fields is not None and not item_errors:
            try:
                result = _validate(
                    fields,
                    exclude_id=None,
                    builtin=False,
                    check_discovery=check_discovery,
                    fetch_metadata=fetch_metadata,
                )
            except ValidationError as error:
                item_errors.update(error.errors)
            else:
                key = result.values["scheme_key"]
                if key in first_item:
                    item_errors["scheme"] = (
                        f"Authentication scheme {fields.scheme.strip()!r} is used by item "
                        f"{first_item[key]} too (schemes ignore case)."
                    )
                else:
                    first_item[key] = number
                    validated.append((result, fields))
        for field, message in item_errors.items():
            errors[f"item {number}, {field}" if field else f"item {number}"] = message
    if errors:
        raise ValidationError.from_errors(
            {key: f"{key}: {message}" for key, message in errors.items()}
        )
    return [
        _insert(
            result, fields, account=account, builtin=None, actor=actor, meta=meta, imported=True
        )
        for result, fields in validated
    ]
