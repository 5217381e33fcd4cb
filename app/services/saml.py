"""python3-saml adapter: settings from an SsoProvider, request data from PUBLIC_URL, every check on.

The SAML service provider side of Keyward. Everything python3-saml needs is built here, per
provider and per call, in strict mode with the checks its defaults leave off turned on; on top
of it come the checks it does loosely or not at all (exact Destination and Recipient, a
required Audience, InResponseTo matched to this browser's requests, unsolicited responses off
by default, a bounded validity window, one-time use of each assertion).

URLs (entity id, ACS, SLO) are always built from PUBLIC_URL, never from the Host header: a
forged Host must not change what a response is compared with (DESIGN, security invariants).

Specifications cited: SAML 2.0 core (saml-core-2.0-os), bindings (saml-bindings-2.0-os),
profiles (saml-profiles-2.0-os) and metadata (saml-metadata-2.0-os).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
import zlib
from collections.abc import Collection
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from flask import current_app
from lxml import etree
from onelogin.saml2 import xml_utils
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
from onelogin.saml2.constants import OneLogin_Saml2_Constants as Constants
from onelogin.saml2.errors import OneLogin_Saml2_Error
from onelogin.saml2.errors import OneLogin_Saml2_ValidationError
from onelogin.saml2.logout_request import OneLogin_Saml2_Logout_Request
from onelogin.saml2.logout_response import OneLogin_Saml2_Logout_Response
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML
from sqlalchemy import bindparam
from sqlalchemy import delete
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from app.cache import get_cache
from app.extensions import db
from app.models import ProviderCertificate
from app.models import SamlAssertionId
from app.models import SamlSigned
from app.models import SsoProvider
from app.services import crypto
from app.services import outbound
from app.services.errors import ServiceError
from app.services.errors import ValidationError
from app.services.linking import ExternalIdentity

NS = {
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
}
BINDING_REDIRECT = Constants.BINDING_HTTP_REDIRECT
BINDING_POST = Constants.BINDING_HTTP_POST
NAMEID_PERSISTENT = Constants.NAMEID_PERSISTENT
NAMEID_TRANSIENT = Constants.NAMEID_TRANSIENT
NAMEID_EMAIL = Constants.NAMEID_EMAIL_ADDRESS
NAMEID_UNSPECIFIED = Constants.NAMEID_UNSPECIFIED
# Advertised in SP metadata when the provider asks for no particular format: persistent first,
# it is the only one that names the same person the same way at every sign-in (core 8.3.7).
DEFAULT_NAMEID_FORMATS = (NAMEID_PERSISTENT, NAMEID_EMAIL, NAMEID_UNSPECIFIED)
SIGNED_CHOICES = tuple(choice.value for choice in SamlSigned)

# Attribute names tried in order when the provider configures none: Entra ID (claim URIs),
# Okta and Google Workspace (their usual attribute statements), then LDAP-style names and the
# eduPerson/X.500 OIDs that Shibboleth and ADFS deployments send.
DEFAULT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "email": (
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
        "email",
        "mail",
        "emailAddress",
        "urn:oid:0.9.2342.19200300.100.1.3",
    ),
    "given_name": (
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname",
        "firstName",
        "givenName",
        "given_name",
        "urn:oid:2.5.4.42",
    ),
    "family_name": (
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname",
        "lastName",
        "sn",
        "surname",
        "family_name",
        "urn:oid:2.5.4.4",
    ),
    "name": (
        "http://schemas.microsoft.com/identity/claims/displayname",
        "displayName",
        "name",
        "urn:oid:2.16.840.1.113730.3.1.241",
    ),
}

# SAML bindings 3.4.3 and 3.5.3: RelayState MUST NOT exceed 80 bytes.
MAX_RELAY_STATE = 80
# Bounds on what a browser may make us parse: a signed response with a few certificates and
# attributes is a few KB; Entra with many groups stays well under this.
MAX_MESSAGE_BYTES = 512 * 1024
# An IdP's LogoutRequest is answered at once; an older one is a replay (bindings 3.4.5.2 leaves
# this to the receiver, python3-saml only checks an optional NotOnOrAfter).
LOGOUT_REQUEST_MAX_AGE = timedelta(minutes=10)


# Seconds between two purges of expired rows of the database replay cache, per process.
REPLAY_PURGE_INTERVAL = 60.0
_next_purge = 0.0

_SCHEMAS = threading.local()
_SCHEMA_DIR = Path(xml_utils.__file__).parent / "schemas"


def _validate_xml(xml: Any, schema: str, debug: bool = False) -> Any:
    """OneLogin_Saml2_XML.validate_xml with each XSD compiled once per thread.

    python3-saml parses and compiles saml-schema-protocol-2.0.xsd (and its imports) on every
    message, which is most of the time an ACS request takes. Same inputs, same answers
    ("unloaded_xml", "invalid_xml" or the element); compiled schemas are kept per thread
    because lxml does not promise that one XMLSchema may validate in two threads at once."""
    try:
        element = OneLogin_Saml2_XML.to_etree(xml)
    except Exception:
        return "unloaded_xml"
    cache = getattr(_SCHEMAS, "compiled", None)
    if cache is None:
        cache = _SCHEMAS.compiled = {}
    validator = cache.get(schema)
    if validator is None:
        validator = cache[schema] = etree.XMLSchema(etree.parse(str(_SCHEMA_DIR / schema)))
    return element if validator.validate(element) else "invalid_xml"


OneLogin_Saml2_XML.validate_xml = staticmethod(_validate_xml)


# --- errors and results --------------------------------------------------------------------
class SamlRefused(ServiceError):
    """A SAML message that must not be acted on.

    ``check`` names the failed check (audit log, logs, tests): malformed, status, wrapping,
    unsigned, signature, algorithm, destination, recipient, subject_confirmation, audience,
    issuer, in_response_to, unsolicited, expired, not_yet_valid, name_id, replay,
    configuration. ``message`` is a short sentence safe for the page; ``detail`` is for the
    audit log only (python3-saml's reason; never a secret, may name URLs and IDs);
    ``status`` the HTTP status of the page (400, 401, 403, or 503 for a provider that is
    not configured)."""

    def __init__(self, check: str, message: str, status: int = 400, detail: str = "") -> None:
        super().__init__(message)
        self.check = check
        self.message = message
        self.status = status
        self.detail = detail

    def __repr__(self) -> str:
        return f"SamlRefused({self.check!r}, {self.detail!r})"


# check -> (status, message). One place, so every refusal of a kind reads the same.
_REFUSALS: dict[str, tuple[int, str]] = {
    "malformed": (400, "The identity provider's answer could not be read."),
    "status": (401, "The identity provider did not sign you in."),
    "wrapping": (400, "The identity provider's answer is not what it signed."),
    "unsigned": (401, "The identity provider's answer is not signed as required."),
    "signature": (401, "The identity provider's signature could not be verified."),
    "algorithm": (401, "The identity provider signed with an algorithm that is no longer safe."),
    "destination": (400, "The identity provider's answer was meant for another address."),
    "recipient": (400, "The identity provider's answer was meant for another address."),
    "subject_confirmation": (400, "The identity provider's answer cannot be used here."),
    "audience": (400, "The identity provider's answer was meant for another application."),
    "issuer": (400, "The answer does not come from this identity provider."),
    "in_response_to": (
        400,
        "This answer does not belong to a sign-in started in this browser. Please sign in again.",
    ),
    "unsolicited": (
        403,
        "Sign-ins started at the identity provider are not allowed here. Start from Keyward's "
        "sign-in page.",
    ),
    "expired": (400, "The sign-in took too long or the clocks disagree. Please sign in again."),
    "not_yet_valid": (400, "The identity provider's clock is ahead of Keyward's. Try again."),
    "name_id": (400, "The identity provider did not say who you are in a form Keyward can use."),
    "replay": (400, "This answer was already used. Please sign in again."),
    "configuration": (503, "This sign-in method is not fully configured yet."),
}

# python3-saml's validation error codes, by our check names.
_E = OneLogin_Saml2_ValidationError
_LIBRARY_CHECKS: dict[int, str] = {
    _E.UNSUPPORTED_SAML_VERSION: "malformed",
    _E.MISSING_ID: "malformed",
    _E.MISSING_STATUS: "malformed",
    _E.MISSING_STATUS_CODE: "malformed",
    _E.INVALID_XML_FORMAT: "malformed",
    _E.MISSING_CONDITIONS: "malformed",
    _E.WRONG_NUMBER_OF_AUTHSTATEMENTS: "malformed",
    _E.NO_ATTRIBUTESTATEMENT: "malformed",
    _E.ENCRYPTED_ATTRIBUTES: "malformed",
    _E.NO_ENCRYPTED_ASSERTION: "malformed",
    _E.NO_ENCRYPTED_NAMEID: "malformed",
    _E.KEYINFO_NOT_FOUND_IN_ENCRYPTED_DATA: "malformed",
    _E.CHILDREN_NODE_NOT_FOUND_IN_KEYINFO: "malformed",
    _E.UNSUPPORTED_RETRIEVAL_METHOD: "malformed",
    _E.DUPLICATED_ATTRIBUTE_NAME_FOUND: "malformed",
    _E.AUTHN_CONTEXT_MISMATCH: "malformed",
    _E.STATUS_CODE_IS_NOT_SUCCESS: "status",
    # Signature wrapping (XSW): a second assertion, or signatures that do not sit on exactly
    # the elements that are then read.
    _E.WRONG_NUMBER_OF_ASSERTIONS: "wrapping",
    _E.WRONG_SIGNED_ELEMENT: "wrapping",
    _E.ID_NOT_FOUND_IN_SIGNED_ELEMENT: "wrapping",
    _E.DUPLICATED_ID_IN_SIGNED_ELEMENTS: "wrapping",
    _E.INVALID_SIGNED_ELEMENT: "wrapping",
    _E.DUPLICATED_REFERENCE_IN_SIGNED_ELEMENTS: "wrapping",
    _E.UNEXPECTED_SIGNED_ELEMENTS: "wrapping",
    _E.WRONG_NUMBER_OF_SIGNATURES_IN_RESPONSE: "wrapping",
    _E.WRONG_NUMBER_OF_SIGNATURES_IN_ASSERTION: "wrapping",
    _E.WRONG_NUMBER_OF_SIGNATURES: "wrapping",
    _E.NO_SIGNED_MESSAGE: "unsigned",
    _E.NO_SIGNED_ASSERTION: "unsigned",
    _E.NO_SIGNATURE_FOUND: "unsigned",
    _E.INVALID_SIGNATURE: "signature",
    _E.DEPRECATED_SIGNATURE_METHOD: "algorithm",
    _E.DEPRECATED_DIGEST_METHOD: "algorithm",
    _E.WRONG_DESTINATION: "destination",
    _E.EMPTY_DESTINATION: "destination",
    _E.WRONG_AUDIENCE: "audience",
    _E.ISSUER_MULTIPLE_IN_RESPONSE: "issuer",
    _E.ISSUER_NOT_FOUND_IN_ASSERTION: "issuer",
    _E.WRONG_ISSUER: "issuer",
    _E.WRONG_INRESPONSETO: "in_response_to",
    _E.ASSERTION_EXPIRED: "expired",
    _E.SESSION_EXPIRED: "expired",
    _E.RESPONSE_EXPIRED: "expired",
    _E.ASSERTION_TOO_EARLY: "not_yet_valid",
    _E.WRONG_SUBJECTCONFIRMATION: "subject_confirmation",
    _E.NO_NAMEID: "name_id",
    _E.EMPTY_NAMEID: "name_id",
    _E.SP_NAME_QUALIFIER_NAME_MISMATCH: "name_id",
}


def _refused(check: str, detail: str = "") -> SamlRefused:
    status, message = _REFUSALS[check]
    return SamlRefused(check, message, status, detail)


def _from_library(exc: Exception) -> SamlRefused:
    if isinstance(exc, SamlRefused):
        return exc
    if isinstance(exc, OneLogin_Saml2_ValidationError):
        return _refused(_LIBRARY_CHECKS.get(exc.code, "malformed"), str(exc))
    if isinstance(exc, OneLogin_Saml2_Error) and exc.code == OneLogin_Saml2_Error.CERT_NOT_FOUND:
        return _refused("configuration", str(exc))
    # Anything else python3-saml or lxml raises on hostile input (bad base64, XML syntax,
    # a DTD or entity, which its parser forbids) is a message we cannot read.
    return _refused("malformed", f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class IdpMetadata:
    """What Keyward uses from an IdP's metadata (saml-metadata-2.0-os 2.4.3).

    ``certificates`` are PEM signing certificates (several during a rollover); ``xml`` the
    document they were read from."""

    entity_id: str
    sso_url: str
    slo_url: str | None
    certificates: list[str]
    nameid_formats: list[str]
    want_authn_requests_signed: bool = False
    xml: str = ""


@dataclass(frozen=True)
class SamlRequest:
    """An HTTP-Redirect URL to send the browser to, and the request's ID: the caller keeps the
    ID in this browser's session, to match the answer's InResponseTo."""

    url: str
    request_id: str


@dataclass(frozen=True)
class SamlIdentity:
    """A verified assertion: who signed in and what the IdP said about them."""

    subject: str
    nameid_format: str | None
    session_index: str | None
    attributes: dict[str, list[str]]
    email: str | None
    given_name: str | None
    family_name: str | None
    name: str | None
    assertion_id: str
    not_on_or_after: datetime
    in_response_to: str | None = None


@dataclass(frozen=True)
class LogoutTarget:
    """Whose sessions an IdP's LogoutRequest ends: every session of ``name_id`` with this
    provider, or only those with one of ``session_indexes`` when there are any (core 3.7.1)."""

    name_id: str
    session_indexes: list[str] = field(default_factory=list)
    name_id_format: str | None = None


# --- URLs ----------------------------------------------------------------------------------
def _base_url() -> str:
    return current_app.config["PUBLIC_URL"].rstrip("/")


def sp_entity_id(provider: SsoProvider, scheme: str | None = None) -> str:
    """Keyward's entity id for this provider (also where its SP metadata is served)."""
    return f"{_base_url()}/saml/{scheme or provider.scheme}/metadata"


def acs_url(provider: SsoProvider, scheme: str | None = None) -> str:
    """The assertion consumer service (HTTP-POST): /signin-<scheme>."""
    return f"{_base_url()}/signin-{scheme or provider.scheme}"


def slo_url(provider: SsoProvider, scheme: str | None = None) -> str:
    """Keyward's single logout service (HTTP-Redirect): /signout-<scheme>."""
    return f"{_base_url()}/signout-{scheme or provider.scheme}"


def _normalise_url(url: str) -> str:
    """Scheme and host lower-cased, default port dropped (RFC 3986 6.2.3); path kept exact."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return url
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = host if port in (None, default) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _request_data(
    url: str,
    *,
    post: Mapping[str, str] | None = None,
    get: Mapping[str, str] | None = None,
    query_string: str | None = None,
) -> dict[str, Any]:
    """python3-saml's view of "the request", built from PUBLIC_URL rather than from Flask's
    request: it compares Destination and Recipient with this URL, so a Host header (or an
    X-Forwarded-Host) an attacker chooses cannot make a response meant elsewhere fit."""
    parts = urlsplit(_normalise_url(url))
    data: dict[str, Any] = {
        "https": "on" if parts.scheme == "https" else "off",
        # http_host carries the port (the server_port key is deprecated in python3-saml 1.16).
        "http_host": parts.netloc,
        "script_name": parts.path,
        "get_data": dict(get or {}),
        "post_data": dict(post or {}),
    }
    if query_string is not None:
        # Verify a Redirect-binding signature over the query exactly as the IdP encoded it
        # (bindings 3.4.4.1); re-encoding would break for IdPs that use lower-case escapes.
        data["query_string"] = query_string
        data["validate_signature_from_qs"] = True
    return data


# --- settings --------------------------------------------------------------------------------
def _skew() -> int:
    config = current_app.config
    return int(config.get("SAML_CLOCK_SKEW", config.get("OIDC_CLOCK_SKEW", 120)))


def signing_certificates(provider: SsoProvider) -> list[str]:
    """The IdP certificates that may sign (PEM), oldest first."""
    if "certificates" in sa_inspect(provider).unloaded and provider.id is not None:
        # Not loaded (an ACS request): the PEMs by one plain query, without building ORM
        # objects. Unflushed changes cannot be missed: the query autoflushes, and changing
        # the collection would have loaded it.
        return list(db.session.scalars(_SIGNING_PEMS, {"provider_id": provider.id}))
    return [cert.pem for cert in provider.certificates if cert.use == "signing"]


_SIGNING_PEMS = (
    select(ProviderCertificate.__table__.c.pem)
    .where(
        ProviderCertificate.__table__.c.provider_id == bindparam("provider_id"),
        ProviderCertificate.__table__.c.use == "signing",
    )
    .order_by(ProviderCertificate.__table__.c.id)
)


# Built settings by everything they are made of (see _settings): building them parses and
# checks the certificates and the SP key, a large share of an ACS request. Bounded; a change
# of any input is a new key, so a stale entry is never used.
_SETTINGS_CACHE: dict[tuple, OneLogin_Saml2_Settings] = {}
_SETTINGS_CACHE_SIZE = 256


def _settings(
    provider: SsoProvider, scheme: str | None = None, *, want_messages_signed: bool | None = None
) -> OneLogin_Saml2_Settings:
    """python3-saml settings for one provider, strict, with every check on.

    ``want_messages_signed`` overrides the provider's choice for logout messages. Built once
    per combination of the provider's SAML settings, certificates, scheme and PUBLIC_URL."""
    key = (
        provider.id,
        scheme or provider.scheme,
        _base_url(),
        want_messages_signed,
        provider.saml_idp_entity_id,
        provider.saml_sso_url,
        provider.saml_slo_url,
        provider.saml_signed,
        bool(provider.saml_sign_requests),
        provider.saml_sp_cert,
        provider.saml_sp_key_encrypted,
        provider.saml_nameid_format,
        tuple(signing_certificates(provider)),
    )
    settings = _SETTINGS_CACHE.get(key)
    if settings is None:
        settings = _build_settings(provider, scheme, want_messages_signed=want_messages_signed)
        if len(_SETTINGS_CACHE) >= _SETTINGS_CACHE_SIZE:
            _SETTINGS_CACHE.clear()
        _SETTINGS_CACHE[key] = settings
    return settings


def _build_settings(
    provider: SsoProvider, scheme: str | None, *, want_messages_signed: bool | None
) -> OneLogin_Saml2_Settings:
    missing = [
        label
        for label, value in (
            ("IdP entity id", provider.saml_idp_entity_id),
            ("IdP sign-in URL", provider.saml_sso_url),
            ("IdP signing certificate", signing_certificates(provider)),
        )
        if not value
    ]
    if missing:
        raise _refused("configuration", "missing: " + ", ".join(missing))
    signed = provider.saml_signed or SamlSigned.ASSERTION.value
    sign_requests = bool(provider.saml_sign_requests)
    sp: dict[str, Any] = {
        "entityId": sp_entity_id(provider, scheme),
        "assertionConsumerService": {"url": acs_url(provider, scheme), "binding": BINDING_POST},
        "singleLogoutService": {"url": slo_url(provider, scheme), "binding": BINDING_REDIRECT},
        "NameIDFormat": provider.saml_nameid_format or NAMEID_UNSPECIFIED,
    }
    if sign_requests:
        if not (provider.saml_sp_key_encrypted and provider.saml_sp_cert):
            raise _refused("configuration", "request signing is on but there is no SP key pair")
        sp["x509cert"] = provider.saml_sp_cert
        sp["privateKey"] = crypto.decrypt(provider.saml_sp_key_encrypted)
    idp: dict[str, Any] = {
        "entityId": provider.saml_idp_entity_id,
        "singleSignOnService": {"url": provider.saml_sso_url, "binding": BINDING_REDIRECT},
        # Every listed certificate is tried (rollover); the list replaces a single x509cert.
        "x509certMulti": {"signing": signing_certificates(provider)},
    }
    if provider.saml_slo_url:
        idp["singleLogoutService"] = {"url": provider.saml_slo_url, "binding": BINDING_REDIRECT}
    if want_messages_signed is None:
        want_messages_signed = signed in (SamlSigned.RESPONSE, SamlSigned.BOTH)
    settings = {
        "strict": True,
        "debug": False,
        "sp": sp,
        "idp": idp,
        "security": {
            "authnRequestsSigned": sign_requests,
            "logoutRequestSigned": sign_requests,
            "logoutResponseSigned": sign_requests,
            "signMetadata": False,
            "wantMessagesSigned": want_messages_signed,
            "wantAssertionsSigned": signed in (SamlSigned.ASSERTION, SamlSigned.BOTH),
            "wantAssertionsEncrypted": False,
            "wantNameId": True,
            "wantNameIdEncrypted": False,
            # Some IdPs (a bare NameID from ADFS or Shibboleth) send no attributes at all.
            "wantAttributeStatement": False,
            "requestedAuthnContext": False,
            "failOnAuthnContextMismatch": False,
            # Two Attribute elements with one Name would make "which value wins" ambiguous.
            "allowRepeatAttributeName": False,
            # SHA-1 signatures and digests are refused (xmldsig-core1 6.1, NIST SP 800-131A).
            "rejectDeprecatedAlgorithm": True,
            "signatureAlgorithm": Constants.RSA_SHA256,
            "digestAlgorithm": Constants.SHA256,
            # http://localhost and other single-label hosts in tests and intranets.
            "allowSingleLabelDomains": True,
        },
    }
    try:
        return OneLogin_Saml2_Settings(settings, sp_validation_only=False)
    except OneLogin_Saml2_Error as exc:
        raise _refused("configuration", str(exc)) from None


# --- IdP metadata ----------------------------------------------------------------------------
def _pem(base64_der: str) -> str:
    der = base64.b64decode("".join(base64_der.split()), validate=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def certificate_facts(pem: str) -> tuple[str, datetime]:
    """(SHA-256 fingerprint in hex, not-after) of a PEM certificate; raises ValueError."""
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    return cert.fingerprint(hashes.SHA256()).hex(), cert.not_valid_after_utc


def parse_idp_metadata(xml: str | bytes, *, entity_id: str | None = None) -> IdpMetadata:
    """Read an IdP's metadata: entity id, HTTP-Redirect SSO and SLO URLs, signing certificates
    and NameID formats of its IDPSSODescriptor (the first one, or ``entity_id``'s in an
    EntitiesDescriptor). The parser refuses DTDs and entities and never touches the network
    (python3-saml's defusedxml-style parser). Raises ValidationError (field ``metadata``)."""
    raw = xml.encode("utf-8") if isinstance(xml, str) else bytes(xml)
    if len(raw) > _outbound_limit():
        raise ValidationError("The metadata document is too large.", "metadata")
    try:
        root = OneLogin_Saml2_XML.to_etree(raw)
    except Exception as exc:  # lxml syntax errors, DTD/entity refusals
        raise ValidationError(f"The metadata is not valid XML ({exc}).", "metadata") from None
    descriptors = root.xpath(
        "descendant-or-self::md:EntityDescriptor[md:IDPSSODescriptor]", namespaces=NS
    )
    if entity_id is not None:
        descriptors = [d for d in descriptors if d.get("entityID") == entity_id]
    if not descriptors:
        raise ValidationError(
            "The metadata describes no SAML identity provider (no IDPSSODescriptor).", "metadata"
        )
    descriptor = descriptors[0]
    idp = descriptor.find("md:IDPSSODescriptor", NS)
    found_entity_id = (descriptor.get("entityID") or "").strip()
    if not found_entity_id:
        raise ValidationError("The metadata has no entityID.", "metadata")

    def location(tag: str) -> str | None:
        for node in idp.findall(f"md:{tag}", NS):
            if node.get("Binding") == BINDING_REDIRECT and node.get("Location"):
                return node.get("Location").strip()
        return None

    sso_url = location("SingleSignOnService")
    if not sso_url:
        raise ValidationError(
            "The identity provider offers no HTTP-Redirect sign-in endpoint, which Keyward needs.",
            "metadata",
        )
    certificates: list[str] = []
    # A KeyDescriptor without "use" serves both signing and encryption (metadata 2.4.1.1).
    for node in idp.xpath(
        "md:KeyDescriptor[not(@use) or @use='signing']/ds:KeyInfo/ds:X509Data/ds:X509Certificate",
        namespaces=NS,
    ):
        try:
            pem = _pem(node.text or "")
        except (ValueError, binascii.Error) as exc:
            raise ValidationError(
                f"The metadata has a signing certificate that cannot be read ({exc}).",
                "metadata",
            ) from None
        if pem not in certificates:
            certificates.append(pem)
    if not certificates:
        raise ValidationError("The metadata has no signing certificate.", "metadata")
    formats = [
        (node.text or "").strip()
        for node in idp.findall("md:NameIDFormat", NS)
        if (node.text or "").strip()
    ]
    return IdpMetadata(
        entity_id=found_entity_id,
        sso_url=sso_url,
        slo_url=location("SingleLogoutService"),
        certificates=certificates,
        nameid_formats=formats,
        want_authn_requests_signed=idp.get("WantAuthnRequestsSigned") in ("true", "1"),
        xml=raw.decode("utf-8", errors="replace"),
    )


def _outbound_limit() -> int:
    return int(current_app.config.get("OUTBOUND_MAX_BYTES") or 1024 * 1024)


def fetch_idp_metadata(url: str, *, entity_id: str | None = None) -> IdpMetadata:
    """Fetch an admin-entered metadata URL through services.outbound (https, public
    addresses, size and time caps) and parse it. Raises OutboundError or ValidationError."""
    response = outbound.fetch(url, headers={"Accept": "application/samlmetadata+xml, */*"})
    if response.status != 200:
        raise outbound.OutboundError(
            f"{urlsplit(url).hostname} answered {response.status} for the metadata"
        )
    return parse_idp_metadata(response.body, entity_id=entity_id)


def apply_idp_metadata(provider: SsoProvider, metadata: IdpMetadata) -> dict[str, list[str]]:
    """Copy parsed metadata onto ``provider``: entity id, SSO/SLO URLs, the document itself,
    and its signing certificates, which replace the stored ones (a certificate the IdP no
    longer publishes stops being trusted; one it keeps keeps its row). Adds to the session,
    never commits, does not bump ``version`` (services.providers does). Returns the
    fingerprints ``{"added": [...], "removed": [...]}`` for the audit log."""
    provider.saml_idp_entity_id = metadata.entity_id
    provider.saml_sso_url = metadata.sso_url
    provider.saml_slo_url = metadata.slo_url
    if metadata.xml:
        provider.saml_metadata_xml = metadata.xml
    wanted: dict[str, tuple[str, datetime]] = {}
    for pem in metadata.certificates:
        fingerprint, not_after = certificate_facts(pem)
        wanted.setdefault(fingerprint, (pem, not_after))
    removed: list[str] = []
    for cert in list(provider.certificates):
        if cert.fingerprint_sha256 not in wanted:
            removed.append(cert.fingerprint_sha256)
            provider.certificates.remove(cert)
    kept = {cert.fingerprint_sha256 for cert in provider.certificates}
    added: list[str] = []
    for fingerprint, (pem, not_after) in wanted.items():
        if fingerprint not in kept:
            provider.certificates.append(
                ProviderCertificate(
                    pem=pem, fingerprint_sha256=fingerprint, not_after=not_after, use="signing"
                )
            )
            added.append(fingerprint)
    return {"added": added, "removed": removed}


def generate_sp_keypair(provider: SsoProvider, *, days: int = 3650) -> str:
    """Make the SP key pair that signs this provider's requests (RSA 2048, self-signed: SAML
    trusts the certificate through metadata, not a CA). Stores the key encrypted and the
    certificate; returns the certificate PEM. Never commits."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sp_entity_id(provider)[:64])])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    provider.saml_sp_key_encrypted = crypto.encrypt(key_pem)
    provider.saml_sp_cert = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return provider.saml_sp_cert


# --- SP metadata -----------------------------------------------------------------------------
def _cert_base64(pem: str) -> str:
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def sp_metadata_xml(provider: SsoProvider, scheme: str | None = None) -> str:
    """Keyward's SP metadata for this provider (saml-metadata-2.0-os 2.4.4): entity id, ACS
    (HTTP-POST), SLO (HTTP-Redirect), NameID formats, and the signing certificate when
    requests are signed. Built from PUBLIC_URL only."""
    md = NS["md"]
    root = etree.Element(f"{{{md}}}EntityDescriptor", nsmap={"md": md, "ds": NS["ds"]})
    root.set("entityID", sp_entity_id(provider, scheme))
    descriptor = etree.SubElement(root, f"{{{md}}}SPSSODescriptor")
    descriptor.set("AuthnRequestsSigned", "true" if provider.saml_sign_requests else "false")
    descriptor.set(
        "WantAssertionsSigned",
        "true" if provider.saml_signed in (SamlSigned.ASSERTION, SamlSigned.BOTH) else "false",
    )
    descriptor.set("protocolSupportEnumeration", "urn:oasis:names:tc:SAML:2.0:protocol")
    if provider.saml_sign_requests and provider.saml_sp_cert:
        key_descriptor = etree.SubElement(descriptor, f"{{{md}}}KeyDescriptor", use="signing")
        key_info = etree.SubElement(key_descriptor, f"{{{NS['ds']}}}KeyInfo")
        x509_data = etree.SubElement(key_info, f"{{{NS['ds']}}}X509Data")
        etree.SubElement(x509_data, f"{{{NS['ds']}}}X509Certificate").text = _cert_base64(
            provider.saml_sp_cert
        )
    etree.SubElement(
        descriptor,
        f"{{{md}}}SingleLogoutService",
        Binding=BINDING_REDIRECT,
        Location=slo_url(provider, scheme),
    )
    formats = (
        [provider.saml_nameid_format] if provider.saml_nameid_format else DEFAULT_NAMEID_FORMATS
    )
    for name_format in formats:
        etree.SubElement(descriptor, f"{{{md}}}NameIDFormat").text = name_format
    etree.SubElement(
        descriptor,
        f"{{{md}}}AssertionConsumerService",
        Binding=BINDING_POST,
        Location=acs_url(provider, scheme),
        index="0",
        isDefault="true",
    )
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True).decode()


# --- sign-in ---------------------------------------------------------------------------------
def begin_sign_in(
    provider: SsoProvider,
    *,
    relay_state: str | None = None,
    scheme: str | None = None,
    force_authn: bool = False,
) -> SamlRequest:
    """An HTTP-Redirect AuthnRequest (bindings 3.4), signed when the provider signs requests.

    The caller keeps ``request_id`` in this browser's session (the answer's InResponseTo must
    be one of them) and sends the browser to ``url``. ``relay_state`` is echoed back by the
    IdP: an opaque value of at most 80 bytes (bindings 3.4.3), never a URL to trust.
    Raises SamlRefused("configuration") when the provider lacks its IdP settings, and
    ValueError for a RelayState that is too long."""
    if relay_state is not None and len(relay_state.encode()) > MAX_RELAY_STATE:
        raise ValueError("RelayState must not exceed 80 bytes (SAML bindings 3.4.3)")
    settings = _settings(provider, scheme)
    request = OneLogin_Saml2_Authn_Request(settings, force_authn=force_authn)
    url = _redirect_url(
        settings, settings.get_idp_sso_url(), "SAMLRequest", request.get_request(), relay_state
    )
    return SamlRequest(url=url, request_id=request.get_id())


def _redirect_url(
    settings: OneLogin_Saml2_Settings,
    endpoint: str,
    kind: str,
    message: str,
    relay_state: str | None,
) -> str:
    """An HTTP-Redirect binding URL (bindings 3.4.4): the DEFLATEd message, the RelayState
    when there is one, and the query signature (3.4.4.1) when the provider signs requests."""
    parameters: dict[str, str] = {kind: message}
    if relay_state:
        parameters["RelayState"] = relay_state
    if settings.get_security_data().get("authnRequestsSigned"):
        auth = OneLogin_Saml2_Auth(_request_data(endpoint), settings)
        if kind == "SAMLRequest":
            auth.add_request_signature(parameters, Constants.RSA_SHA256)
        else:
            auth.add_response_signature(parameters, Constants.RSA_SHA256)
    return OneLogin_Saml2_Utils.redirect(endpoint, parameters)


class _StrictResponse(OneLogin_Saml2_Response):
    """python3-saml's Response with our clock and skew for the validity window.

    python3-saml checks Conditions against OneLogin_Saml2_Constants.ALLOWED_CLOCK_DRIFT, a
    process-wide 300 s constant, and the bearer SubjectConfirmationData NotOnOrAfter against
    the real clock without any drift. This replaces the first with SAML_CLOCK_SKEW and the
    caller's ``now``, and adds the same bounded check of the SubjectConfirmationData (which
    python3-saml then checks again, strictly, with the real clock)."""

    def __init__(self, settings: OneLogin_Saml2_Settings, response: str, *, now: int, skew: int):
        super().__init__(settings, response)
        self._now = now
        self._skew = skew

    def validate_timestamps(self, raise_exceptions: bool = True) -> bool:  # noqa: ARG002
        # Core 2.5.1.2: NotBefore <= now < NotOnOrAfter, here widened by the skew only.
        for conditions in self._query_assertion("/saml:Conditions"):
            self._check_window(conditions.get("NotBefore"), conditions.get("NotOnOrAfter"))
        for data in self._query_assertion(
            "/saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData"
        ):
            self._check_window(data.get("NotBefore"), data.get("NotOnOrAfter"))
        return True

    def _check_window(self, not_before: str | None, not_on_or_after: str | None) -> None:
        if not_before and _saml_time(not_before) > self._now + self._skew:
            raise _refused("not_yet_valid", f"NotBefore {not_before} is in the future")
        if not_on_or_after and _saml_time(not_on_or_after) + self._skew <= self._now:
            raise _refused("expired", f"NotOnOrAfter {not_on_or_after} has passed")

    def signed_assertion(self) -> etree._Element:
        """The one assertion the signature covers (python3-saml's _query_assertion picks it
        by the signed ID, so a wrapped copy elsewhere is never read)."""
        return self._query_assertion("")[0]


def _saml_time(value: str) -> int:
    try:
        return OneLogin_Saml2_Utils.parse_SAML_to_time(value)
    except Exception:
        raise _refused("malformed", f"not a SAML time: {value[:40]!r}") from None


def _decode_post_message(value: str | None) -> str:
    if not value:
        raise _refused("malformed", "no SAMLResponse in the form")
    if len(value) > MAX_MESSAGE_BYTES * 4 // 3 + 4:
        raise _refused("malformed", "the SAMLResponse is too large")
    return value


def complete_sign_in(
    provider: SsoProvider,
    form: Mapping[str, str],
    *,
    expected_request_ids: Collection[str],
    now: datetime | None = None,
    scheme: str | None = None,
) -> SamlIdentity:
    """Verify the IdP's HTTP-POST answer to the ACS and return who signed in.

    ``form`` is the POSTed form (SAMLResponse, RelayState); ``expected_request_ids`` the IDs
    of the AuthnRequests this browser sent (from its session); ``scheme`` the scheme the
    request arrived on when it differs from the provider's (a renamed provider's alias: the
    ACS URL and entity id then use it). ``now`` defaults to the clock.

    Checks, all of which must pass: python3-saml strict (XML schema, Status Success, exactly
    one assertion, signature placement (XSW), signed assertion and/or response per
    ``saml_signed`` with one of the IdP certificates, no SHA-1, Issuer, Conditions, NameID,
    SPNameQualifier); the Response Destination present and equal to the ACS URL from
    PUBLIC_URL; a bearer SubjectConfirmationData with Recipient equal to the ACS URL and a
    NotOnOrAfter (profiles 4.1.4.2); every AudienceRestriction naming our entity id (core
    2.5.1.4); InResponseTo one of ``expected_request_ids``, or absent only when the provider
    allows IdP-initiated sign-in; the validity window within SAML_CLOCK_SKEW; a non-transient
    NameID; and, last, that this assertion was not used before (the replay cache keeps it
    until it expires). Writes the replay-cache row (database without Redis; on SQLite in a
    transaction of its own, see _first_use), never commits the caller's transaction.

    Raises SamlRefused (see its ``check`` names).
    """
    moment = now or datetime.now(UTC)
    epoch = int(moment.timestamp())
    skew = _skew()
    settings = _settings(provider, scheme)
    acs = acs_url(provider, scheme)
    encoded = _decode_post_message(form.get("SAMLResponse"))
    try:
        response = _StrictResponse(settings, encoded, now=epoch, skew=skew)
    except Exception as exc:
        raise _from_library(exc) from None
    document = response.document
    response_irt = document.get("InResponseTo")
    try:
        response.is_valid(
            _request_data(acs, post=form),
            response_irt if response_irt in expected_request_ids else None,
            raise_exceptions=True,
        )
        assertion = response.signed_assertion()
        name_id_data = response.get_nameid_data()
        attributes = response.get_attributes()
        session_index = response.get_session_index()
    except Exception as exc:
        raise _from_library(exc) from None

    # Bindings 3.5.5.2: a signed message MUST carry Destination; python3-saml skips the check
    # when it is absent and accepts any URL that merely starts with ours.
    destination = document.get("Destination")
    if not destination or _normalise_url(destination) != _normalise_url(acs):
        raise _refused("destination", f"Destination {destination!r}, expected {acs!r}")

    confirmation = _bearer_confirmation(assertion, acs, epoch, skew)
    subject_irt = confirmation.get("InResponseTo")
    _check_audiences(assertion, settings.get_sp_data()["entityId"])
    in_response_to = _check_in_response_to(
        provider, response_irt, subject_irt, expected_request_ids
    )

    subject = (name_id_data or {}).get("Value")
    nameid_format = (name_id_data or {}).get("Format")
    if not subject:
        raise _refused("name_id", "no NameID")
    if nameid_format == NAMEID_TRANSIENT:
        # Core 8.3.8: a transient NameID changes at every sign-in, so it cannot be the
        # (provider, subject) key of an external login.
        raise _refused("name_id", "transient NameID")

    expiry = _expiry(assertion, confirmation)
    assertion_id = assertion.get("ID") or ""
    if not _first_use("assertion", provider, assertion_id, expiry + timedelta(seconds=skew)):
        raise _refused("replay", f"assertion {assertion_id} was already used")

    profile = _profile(provider, attributes)
    return SamlIdentity(
        subject=subject,
        nameid_format=nameid_format,
        session_index=session_index,
        attributes=attributes,
        email=profile["email"],
        given_name=profile["given_name"],
        family_name=profile["family_name"],
        name=profile["name"],
        assertion_id=assertion_id,
        not_on_or_after=expiry,
        in_response_to=in_response_to,
    )


def _bearer_confirmation(
    assertion: etree._Element, acs: str, epoch: int, skew: int
) -> etree._Element:
    """The bearer SubjectConfirmationData addressed to our ACS (profiles 4.1.4.2: it MUST have
    Recipient and NotOnOrAfter). python3-saml only checks that Recipient contains our URL as a
    substring, and accepts one without Recipient."""
    found = assertion.xpath(
        "saml:Subject/saml:SubjectConfirmation[@Method='urn:oasis:names:tc:SAML:2.0:cm:bearer']"
        "/saml:SubjectConfirmationData",
        namespaces=NS,
    )
    recipients = []
    for data in found:
        recipient = data.get("Recipient")
        recipients.append(recipient)
        if not recipient or _normalise_url(recipient) != _normalise_url(acs):
            continue
        not_on_or_after = data.get("NotOnOrAfter")
        if not not_on_or_after:
            continue
        if _saml_time(not_on_or_after) + skew <= epoch:
            raise _refused("expired", f"SubjectConfirmationData NotOnOrAfter {not_on_or_after}")
        return data
    raise _refused("recipient", f"bearer Recipient(s) {recipients!r}, expected {acs!r}")


def _check_audiences(assertion: etree._Element, entity_id: str) -> None:
    # Core 2.5.1.4: each AudienceRestriction must be satisfied on its own. python3-saml merges
    # them all and accepts an assertion with none.
    restrictions = assertion.xpath("saml:Conditions/saml:AudienceRestriction", namespaces=NS)
    if not restrictions:
        raise _refused("audience", "no AudienceRestriction")
    for restriction in restrictions:
        audiences = [(a.text or "").strip() for a in restriction.findall("saml:Audience", NS)]
        if entity_id not in audiences:
            raise _refused("audience", f"Audience {audiences!r}, expected {entity_id!r}")


def _check_in_response_to(
    provider: SsoProvider,
    response_irt: str | None,
    subject_irt: str | None,
    expected: Collection[str],
) -> str | None:
    values = {value for value in (response_irt, subject_irt) if value}
    if not values:
        # Unsolicited (IdP-initiated, profiles 4.1.5): nothing ties it to this browser, so
        # only a provider that allows it accepts it.
        if not provider.saml_allow_idp_initiated:
            raise _refused("unsolicited", "no InResponseTo and IdP-initiated sign-in is off")
        return None
    if len(values) > 1:
        raise _refused("in_response_to", f"Response and assertion disagree: {sorted(values)!r}")
    (value,) = values
    if value not in expected:
        # Also when IdP-initiated sign-in is allowed: an answer to someone else's request is
        # not unsolicited, it was stolen or is stale.
        raise _refused("in_response_to", f"InResponseTo {value!r} is not a request of this browser")
    return value


def _expiry(assertion: etree._Element, confirmation: etree._Element) -> datetime:
    """When the assertion stops being usable: the later of its NotOnOrAfter values."""
    candidates = [confirmation.get("NotOnOrAfter")]
    candidates += [c.get("NotOnOrAfter") for c in assertion.findall("saml:Conditions", NS)]
    latest = max(_saml_time(value) for value in candidates if value)
    return datetime.fromtimestamp(latest, UTC)


def _replay_key(kind: str, provider: SsoProvider, message_id: str) -> str:
    # Scoped by provider: one IdP (whose admin may be hostile) cannot burn another's IDs.
    return hashlib.sha256(f"{kind}\0{provider.id}\0{message_id}".encode()).hexdigest()


def _first_use(kind: str, provider: SsoProvider, message_id: str, expires_at: datetime) -> bool:
    """Record a message ID until ``expires_at``; False when it was already recorded.

    Redis (shared by every process) when REDIS_URL is set, else the saml_assertion_ids table,
    whose unique index refuses a second insert even from a concurrent transaction."""
    if not message_id:
        return False
    digest = _replay_key(kind, provider, message_id)
    now = datetime.now(UTC)
    if current_app.config.get("REDIS_URL"):
        ttl = max(1.0, (expires_at - now).total_seconds())
        return get_cache().add(f"saml:seen:{digest}", 1, ttl)
    global _next_purge
    purge = time.monotonic() >= _next_purge
    if purge:
        # Expired IDs can never be replayed (the assertion is refused as expired first), so
        # they are dropped now and then rather than at every sign-in.
        _next_purge = time.monotonic() + REPLAY_PURGE_INTERVAL
    dialect = db.session.get_bind().dialect.name
    insert = _INSERT_IF_NEW.get(dialect)
    if dialect == "sqlite" and not _sqlite_writing():
        # SQLite has one write lock per database, taken by a transaction's first write and
        # held until its commit: in the sign-in's transaction this row made every other
        # sign-in wait through the whole rest of this one (the sign-in rules, the session).
        # So it commits at once, in a transaction of its own, as Redis's SET NX does: the
        # first use wins even if the sign-in then fails, and the assertion cannot be used
        # again either way. (Not when the caller's transaction has written already: it
        # holds the lock, which a second connection would wait for in vain.)
        with db.engine.begin() as connection:
            if purge:
                connection.execute(delete(_ASSERTION_IDS).where(_ASSERTION_IDS.c.expires_at < now))
            result = connection.execute(insert, {"digest": digest, "expires_at": expires_at})
            return result.first() is not None
    if purge:
        db.session.execute(delete(SamlAssertionId).where(SamlAssertionId.expires_at < now))
    if insert is not None:
        # One statement, no savepoint: the unique index decides, also against a concurrent
        # transaction (PostgreSQL waits for it, then does nothing), and 0 rows is a replay.
        # On the ORM session's connection (its transaction), without the ORM's execute path.
        result = db.session.connection().execute(
            insert, {"digest": digest, "expires_at": expires_at}
        )
        return result.first() is not None
    try:
        # A savepoint: a unique violation must not undo the caller's transaction.
        with db.session.begin_nested():
            db.session.add(SamlAssertionId(assertion_id_hash=digest, expires_at=expires_at))
    except IntegrityError:
        return False
    return True


def _sqlite_writing() -> bool:
    """True when the session's SQLite transaction has begun writing (holds the write lock)."""
    return bool(db.session.connection().connection.driver_connection.in_transaction)


def _insert_if_new(insert: Any) -> Any:
    return (
        insert(SamlAssertionId.__table__)
        .values(assertion_id_hash=bindparam("digest"), expires_at=bindparam("expires_at"))
        .on_conflict_do_nothing(index_elements=["assertion_id_hash"])
        # A row comes back only when it was inserted (rowcount is not reliable with every
        # driver for this statement).
        .returning(SamlAssertionId.__table__.c.id)
    )


_ASSERTION_IDS = SamlAssertionId.__table__

# INSERT ... ON CONFLICT DO NOTHING of the replay cache row, by database dialect.
_INSERT_IF_NEW = {
    "postgresql": _insert_if_new(postgresql_insert),
    "sqlite": _insert_if_new(sqlite_insert),
}


# --- attributes ------------------------------------------------------------------------------
def _attribute_names(provider: SsoProvider, key: str) -> Sequence[str]:
    configured = getattr(provider, f"saml_{key}_attribute")
    return (configured,) if configured else DEFAULT_ATTRIBUTES[key]


def _profile(provider: SsoProvider, attributes: Mapping[str, list[str]]) -> dict[str, str | None]:
    profile: dict[str, str | None] = {}
    for key in DEFAULT_ATTRIBUTES:
        value = None
        for name in _attribute_names(provider, key):
            values = [v.strip() for v in attributes.get(name) or [] if v and v.strip()]
            if values:
                value = values[0]
                break
        profile[key] = value
    return profile


def identity_from(provider: SsoProvider, identity: SamlIdentity) -> ExternalIdentity:
    """The verified SAML identity as services.linking sees it, so the sign-in rules and the
    CEL expression apply unchanged: the subject is the NameID, the profile comes from the
    configured (or default) attribute names, and ``claims`` is the attribute map with single
    values unwrapped (``{"email": "a@x", "groups": ["a", "b"]}``). The email is never marked
    verified: SAML has no such statement; ``trust_email_verified`` on the provider decides."""
    claims: dict[str, Any] = {
        name: values[0] if len(values) == 1 else list(values)
        for name, values in identity.attributes.items()
    }
    return ExternalIdentity(
        subject=identity.subject,
        email=identity.email,
        email_verified=False,
        given_name=identity.given_name,
        family_name=identity.family_name,
        name=identity.name,
        claims=claims,
        sid=identity.session_index,
    )


# --- single logout ---------------------------------------------------------------------------
def logout_request_url(
    provider: SsoProvider,
    *,
    name_id: str,
    session_index: str | None,
    relay_state: str | None = None,
    name_id_format: str | None = None,
    scheme: str | None = None,
) -> tuple[str, str] | None:
    """SP-initiated single logout (profiles 4.4.3.1): the HTTP-Redirect LogoutRequest URL for
    the browser and the request ID (keep it in the session for the LogoutResponse's
    InResponseTo). Signed when the provider signs requests. None when the IdP has no SLO
    endpoint (sign out locally only). Raises SamlRefused("configuration")."""
    if not provider.saml_slo_url:
        return None
    if relay_state is not None and len(relay_state.encode()) > MAX_RELAY_STATE:
        raise ValueError("RelayState must not exceed 80 bytes (SAML bindings 3.4.3)")
    settings = _settings(provider, scheme)
    request = OneLogin_Saml2_Logout_Request(
        settings,
        name_id=name_id,
        session_index=session_index,
        name_id_format=name_id_format,
    )
    url = _redirect_url(
        settings, provider.saml_slo_url, "SAMLRequest", request.get_request(), relay_state
    )
    return url, request.id


def _query(query: str | bytes | Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    if isinstance(query, str):
        return dict(parse_qsl(query, keep_blank_values=True)), query
    return dict(query), None


def _inflate_bounded(value: str) -> bytes:
    """Bindings 3.4.4.1 DEFLATE encoding, inflated with a size cap (a few bytes of deflate can
    inflate to gigabytes; python3-saml inflates without a limit, so this runs first)."""
    try:
        data = base64.b64decode(value, validate=False)
        inflater = zlib.decompressobj(-15)
        xml = inflater.decompress(data, MAX_MESSAGE_BYTES)
        if inflater.unconsumed_tail:
            raise _refused("malformed", "the message is too large")
        return xml
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise _refused("malformed", f"not a DEFLATE-encoded message: {exc}") from None


def _check_redirect_signature(
    auth: OneLogin_Saml2_Auth, params: Mapping[str, str], kind: str, required: bool
) -> None:
    if "Signature" not in params:
        if required:
            raise _refused("unsigned", f"the {kind} is not signed")
        return
    if params.get("SigAlg") in Constants.DEPRECATED_ALGORITHMS or "SigAlg" not in params:
        # A missing SigAlg means RSA-SHA1 to python3-saml.
        raise _refused("algorithm", f"SigAlg {params.get('SigAlg')!r}")
    valid = (
        auth.validate_request_signature(params)
        if kind == "SAMLRequest"
        else auth.validate_response_signature(params)
    )
    if not valid:
        raise _refused("signature", auth.get_last_error_reason() or "")


def _check_message_destination(root: etree._Element, url: str, required: bool) -> None:
    destination = root.get("Destination")
    if not destination:
        if required:
            # Bindings 3.4.5.2: a signed message MUST carry Destination.
            raise _refused("destination", "no Destination")
        return
    if _normalise_url(destination) != _normalise_url(url):
        raise _refused("destination", f"Destination {destination!r}, expected {url!r}")


def handle_idp_logout_request(
    provider: SsoProvider,
    query: str | bytes | Mapping[str, str],
    *,
    now: datetime | None = None,
    scheme: str | None = None,
) -> tuple[LogoutTarget, str]:
    """Validate an IdP-initiated LogoutRequest (HTTP-Redirect, profiles 4.4.4.1) and build the
    LogoutResponse redirect. ``query`` is best the raw query string (request.query_string):
    the signature is then checked over the bytes the IdP signed.

    The request arrives without the user's cookie and ends sessions, so it must be signed
    by one of the IdP's certificates (never SHA-1), come from the IdP's entity id, be
    addressed to /signout-<scheme> from PUBLIC_URL, be recent (IssueInstant within
    LOGOUT_REQUEST_MAX_AGE and the skew, NotOnOrAfter not passed) and be seen once.
    Returns (whose sessions to end, the URL to send the browser to). The caller ends the
    matching sessions. Raises SamlRefused."""
    params, raw = _query(query)
    encoded = params.get("SAMLRequest")
    if not encoded:
        raise _refused("malformed", "no SAMLRequest")
    _inflate_bounded(encoded)
    target_url = slo_url(provider, scheme)
    settings = _settings(provider, scheme, want_messages_signed=True)
    request_data = _request_data(target_url, get=params, query_string=raw)
    auth = OneLogin_Saml2_Auth(request_data, settings)
    _check_redirect_signature(auth, params, "SAMLRequest", required=True)
    try:
        request = OneLogin_Saml2_Logout_Request(settings, encoded)
        request.is_valid(request_data, raise_exceptions=True)
        xml = request.get_xml()
        root = OneLogin_Saml2_XML.to_etree(xml)
        name_id_data = OneLogin_Saml2_Logout_Request.get_nameid_data(xml)
        session_indexes = OneLogin_Saml2_Logout_Request.get_session_indexes(xml)
        issuer = OneLogin_Saml2_Logout_Request.get_issuer(xml)
    except Exception as exc:
        raise _from_library(exc) from None
    _check_message_destination(root, target_url, required=True)
    if issuer != provider.saml_idp_entity_id:
        raise _refused("issuer", f"Issuer {issuer!r}")
    moment = now or datetime.now(UTC)
    issued = datetime.fromtimestamp(_saml_time(root.get("IssueInstant") or ""), UTC)
    skew = timedelta(seconds=_skew())
    if issued > moment + skew:
        raise _refused("not_yet_valid", f"IssueInstant {issued.isoformat()}")
    if issued + LOGOUT_REQUEST_MAX_AGE + skew <= moment:
        raise _refused("expired", f"IssueInstant {issued.isoformat()}")
    if not _first_use(
        "logout", provider, root.get("ID") or "", issued + LOGOUT_REQUEST_MAX_AGE + skew
    ):
        raise _refused("replay", f"LogoutRequest {root.get('ID')} was already used")
    name_id = name_id_data.get("Value")
    if not name_id:
        raise _refused("name_id", "no NameID in the LogoutRequest")

    builder = OneLogin_Saml2_Logout_Response(settings)
    builder.build(root.get("ID"))
    redirect = _redirect_url(
        settings,
        provider.saml_slo_url or "",
        "SAMLResponse",
        builder.get_response(),
        params.get("RelayState"),
    )
    return (
        LogoutTarget(
            name_id=name_id,
            session_indexes=[s for s in session_indexes if s],
            name_id_format=name_id_data.get("Format"),
        ),
        redirect,
    )


def handle_logout_response(
    provider: SsoProvider,
    query: str | bytes | Mapping[str, str],
    expected_request_ids: Collection[str],
    *,
    scheme: str | None = None,
) -> str | None:
    """Validate the IdP's LogoutResponse to our LogoutRequest (HTTP-Redirect). Its signature
    is verified when present and required when the provider wants signed responses; its
    InResponseTo must be one of ``expected_request_ids``, its Issuer the IdP, its
    Destination (when present) /signout-<scheme>, its status Success. Returns the RelayState.
    The local session was already ended before the browser went to the IdP, so a failure
    here only changes what the page says. Raises SamlRefused."""
    params, raw = _query(query)
    encoded = params.get("SAMLResponse")
    if not encoded:
        raise _refused("malformed", "no SAMLResponse")
    _inflate_bounded(encoded)
    target_url = slo_url(provider, scheme)
    settings = _settings(provider, scheme)
    request_data = _request_data(target_url, get=params, query_string=raw)
    auth = OneLogin_Saml2_Auth(request_data, settings)
    signed_required = provider.saml_signed in (SamlSigned.RESPONSE, SamlSigned.BOTH)
    _check_redirect_signature(auth, params, "SAMLResponse", required=signed_required)
    try:
        response = OneLogin_Saml2_Logout_Response(settings, encoded)
        response.is_valid(request_data, raise_exceptions=True)
        status = response.get_status()
        issuer = response.get_issuer()
        in_response_to = response.get_in_response_to()
    except Exception as exc:
        raise _from_library(exc) from None
    _check_message_destination(response.document, target_url, required="Signature" in params)
    if issuer != provider.saml_idp_entity_id:
        raise _refused("issuer", f"Issuer {issuer!r}")
    if not in_response_to or in_response_to not in expected_request_ids:
        raise _refused("in_response_to", f"InResponseTo {in_response_to!r}")
    if status != Constants.STATUS_SUCCESS:
        raise _refused("status", f"status {status!r}")
    return params.get("RelayState") or None
