"""Provider metadata: discovery and JWKS (or SAML metadata) fetched through the outbound
fetcher, validated, kept in ProviderMetadata (the durable last good copy) and the shared cache,
with the provider's health and when it is next due.

The workers refresh every enabled provider when it is due (Cache-Control max-age within
METADATA_REFRESH_MIN/MAX_SECONDS; exponential backoff after failures). Sign-ins read the
cache, then the database; they fetch only when nothing was ever fetched, or once
(rate-limited, shared) when an ID token names a key id the JWKS lacks.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
import uuid
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from typing import Any

from cryptography import x509
from flask import current_app
from sqlalchemy import ColumnElement
from sqlalchemy import Select
from sqlalchemy import and_
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.cache import get_cache
from app.extensions import db
from app.models import Protocol
from app.models import ProviderMetadata
from app.models import SsoProvider
from app.models.base import utcnow
from app.services import audit
from app.services import outbound
from app.services.errors import ServiceError
from app.services.errors import ValidationError

log = logging.getLogger(__name__)

# Discovery documents and JWKS are served from the cache for this long before the
# database copy is read again (the beat refresh rewrites both).
CACHE_TTL = 3600
# After an unknown-kid refresh, no other one for this provider for this long: a flood of
# tokens with random kids costs one fetch per cool-down, not one per request.
UNKNOWN_KID_COOLDOWN = 60
# How long a request waits for another process's in-flight JWKS refresh.
UNKNOWN_KID_WAIT = 5.0


class MetadataUnavailable(ServiceError):
    """No usable discovery document or JWKS for the provider (never fetched successfully)."""


@dataclass(frozen=True)
class ProviderKeys:
    """What a sign-in needs: the discovery document and the JWKS."""

    discovery: dict[str, Any]
    jwks: dict[str, Any]


@dataclass(frozen=True)
class RefreshOutcome:
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class Refreshed:
    """What a protocol refresher stored: how long the copy is good for (None: nothing was
    fetched, e.g. SAML metadata pasted by hand), the key ids, the earliest certificate expiry,
    and what to put in the shared cache (None: nothing)."""

    max_age: timedelta | None
    key_ids: list[str]
    cert_expiry: datetime | None
    cache: dict[str, Any] | None = None


# A refresher fetches, validates and stores one protocol's metadata on the provider and its
# record; it raises OutboundError or ValidationError and must leave the last good copy alone
# when it does (stale-if-error).
Refresher = Callable[[SsoProvider, ProviderMetadata], Refreshed]


@dataclass(frozen=True)
class _Registered:
    refresh: Refresher
    # Which providers of this protocol the beat sweep considers (None: all of them).
    sweep_when: Callable[[], ColumnElement[bool]] | None


REFRESHERS: dict[str, _Registered] = {}


def register_refresher(
    protocol: str, sweep_when: Callable[[], ColumnElement[bool]] | None = None
) -> Callable[[Refresher], Refresher]:
    """Plug in the refresher of one protocol (used below for OIDC and SAML)."""

    def decorator(refresh: Refresher) -> Refresher:
        REFRESHERS[protocol] = _Registered(refresh, sweep_when)
        return refresh

    return decorator


def _cache_key(provider: SsoProvider) -> str:
    # Keyed by version too: an edited provider never reads its old authority's keys.
    return f"provider-metadata:{provider.id}:{provider.version}"


def discovery_url(authority: str) -> str:
    """OpenID Connect Discovery 1.0 §4: the issuer plus /.well-known/openid-configuration."""
    return authority.rstrip("/") + "/.well-known/openid-configuration"


def issuer_matches(expected: str, actual: str) -> bool:
    """The discovery issuer must be the configured authority (§4.3), ignoring one trailing
    slash; Microsoft's multi-tenant documents publish a ``{tenantid}`` template instead."""
    expected, actual = expected.rstrip("/"), (actual or "").rstrip("/")
    if actual == expected:
        return True
    # login.microsoftonline.com/common|organizations|consumers/v2.0 publishes
    # https://login.microsoftonline.com/{tenantid}/v2.0; the ID token's tid fills it in.
    for alias in ("common", "organizations", "consumers"):
        if f"/{alias}/" in expected + "/":
            return actual == (expected + "/").replace(f"/{alias}/", "/{tenantid}/", 1).rstrip("/")
    return False


def _validate_discovery(provider: SsoProvider, document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise outbound.OutboundFailed("the discovery document is not a JSON object")
    issuer = document.get("issuer")
    if not isinstance(issuer, str) or not issuer_matches(provider.authority or "", issuer):
        raise outbound.OutboundFailed(
            "the discovery document names another issuer than the authority URL"
        )
    for field in ("authorization_endpoint", "jwks_uri"):
        if not isinstance(document.get(field), str):
            raise outbound.OutboundFailed(f"the discovery document has no {field}")
    if provider.response_type != "id_token" and not isinstance(document.get("token_endpoint"), str):
        raise outbound.OutboundFailed("the discovery document has no token_endpoint")
    return document


def _validate_jwks(document: Any) -> dict[str, Any]:
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) and "kty" in k for k in keys):
        raise outbound.OutboundFailed("the JWKS is not a JSON Web Key Set")
    # Only public key members are kept; a JWKS publishing private parts is refused outright.
    for key in keys:
        if any(member in key for member in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise outbound.OutboundFailed("the JWKS contains private or symmetric key material")
    return {"keys": keys}


def _bounded(seconds: int) -> timedelta:
    config = current_app.config
    low = int(config["METADATA_REFRESH_MIN_SECONDS"])
    high = max(low, int(config["METADATA_REFRESH_MAX_SECONDS"]))
    return timedelta(seconds=min(max(seconds, low), high))


def _max_age(headers: Mapping[str, str]) -> timedelta:
    """How long a response may be used before the next refresh: its Cache-Control max-age
    (RFC 9111 §5.2.2.1; no-cache/no-store mean "as soon as allowed"), else
    METADATA_REFRESH_DEFAULT_SECONDS, always within METADATA_REFRESH_MIN/MAX_SECONDS: an IdP
    cannot make us poll it every second, nor keep keys for a month."""
    for part in (headers.get("Cache-Control") or "").split(","):
        name, _, value = part.strip().partition("=")
        name, value = name.strip().lower(), value.strip().strip('"')
        if name in ("no-cache", "no-store"):
            return _bounded(0)
        if name == "max-age" and value.isdigit():
            return _bounded(int(value))
    return _bounded(int(current_app.config["METADATA_REFRESH_DEFAULT_SECONDS"]))


def backoff(failures: int) -> timedelta:
    """The wait after ``failures`` failed refreshes in a row: METADATA_REFRESH_BACKOFF_SECONDS
    doubled per further failure, capped at METADATA_REFRESH_BACKOFF_MAX_SECONDS."""
    config = current_app.config
    base = max(1, int(config["METADATA_REFRESH_BACKOFF_SECONDS"]))
    cap = max(base, int(config["METADATA_REFRESH_BACKOFF_MAX_SECONDS"]))
    return timedelta(seconds=min(cap, base * 2 ** min(max(failures, 1) - 1, 32)))


def jwks_cert_expiry(jwks: Mapping[str, Any]) -> datetime | None:
    """The earliest not-after of the signing certificates in a JWKS (each key's ``x5c``
    leaf, RFC 7517 §4.7: standard base64 DER); None when no key carries one. Unreadable
    certificates are ignored: they are health information, not what signatures trust."""
    expiries = []
    for key in jwks.get("keys") or []:
        chain = key.get("x5c")
        if key.get("use") == "enc" or not isinstance(chain, list) or not chain:
            continue
        try:
            der = base64.b64decode(str(chain[0]), validate=True)
            expiries.append(x509.load_der_x509_certificate(der).not_valid_after_utc)
        except (ValueError, binascii.Error):
            continue
    return min(expiries, default=None)


def _jwks_key_ids(jwks: Mapping[str, Any]) -> list[str]:
    return sorted(str(k.get("kid")) for k in jwks["keys"] if k.get("kid"))


def _record(provider: SsoProvider) -> ProviderMetadata:
    record = provider.metadata_record
    if record is None:
        record = ProviderMetadata(provider=provider)
        db.session.add(record)
    return record


def refresh_provider_metadata(provider: SsoProvider) -> RefreshOutcome:
    """Fetch and validate the provider's metadata now with its protocol's refresher (OAuth
    2.0 providers have none: nothing to do) and record its health and next refresh time.

    On failure the last good copy is kept (stale-if-error), the error recorded and the next
    refresh pushed back (``backoff``). Adds/flushes; the caller commits. Never raises for an
    unreachable or misbehaving IdP: the outcome says what happened."""
    registered = REFRESHERS.get(provider.protocol)
    if registered is None:
        return RefreshOutcome(ok=True)
    record = _record(provider)
    now = utcnow()
    try:
        result = registered.refresh(provider, record)
    except (outbound.OutboundError, ValidationError) as error:
        record.last_error = str(error)[:500]
        record.last_error_at = now
        record.failure_count = (record.failure_count or 0) + 1
        record.next_refresh_at = now + backoff(record.failure_count)
        db.session.flush()
        log.warning(
            "metadata refresh failed for provider %s (%d in a row): %s",
            provider.id,
            record.failure_count,
            error,
        )
        return RefreshOutcome(ok=False, error=record.last_error)
    record.key_ids = result.key_ids
    record.cert_expiry = result.cert_expiry
    if result.max_age is not None:
        record.fetched_at = record.last_success_at = now
        record.expires_at = record.next_refresh_at = now + result.max_age
        record.last_error = None
        record.failure_count = 0
    db.session.flush()
    if result.cache is not None:
        get_cache().set(_cache_key(provider), result.cache, CACHE_TTL)
    return RefreshOutcome(ok=True)


@register_refresher(Protocol.OIDC)
def _refresh_oidc(provider: SsoProvider, record: ProviderMetadata) -> Refreshed:
    """OpenID Connect Discovery 1.0: the discovery document, then the JWKS it names."""
    response = outbound.fetch(discovery_url(provider.authority or ""))
    if response.status != 200:
        raise outbound.OutboundFailed(f"discovery answered HTTP {response.status}")
    discovery = _validate_discovery(provider, response.json())
    jwks_response = outbound.fetch(discovery["jwks_uri"])
    if jwks_response.status != 200:
        raise outbound.OutboundFailed(f"the JWKS answered HTTP {jwks_response.status}")
    jwks = _validate_jwks(jwks_response.json())
    record.discovery = discovery
    record.jwks = jwks
    record.jwks_fetched_at = utcnow()
    return Refreshed(
        # The sooner of the two: a JWKS that may change hourly is fetched hourly.
        max_age=min(_max_age(response.headers), _max_age(jwks_response.headers)),
        key_ids=_jwks_key_ids(jwks),
        cert_expiry=jwks_cert_expiry(jwks),
        cache={"discovery": discovery, "jwks": jwks},
    )


def _has_saml_metadata_url() -> ColumnElement[bool]:
    return and_(SsoProvider.saml_metadata_url.is_not(None), SsoProvider.saml_metadata_url != "")


@register_refresher(Protocol.SAML, sweep_when=_has_saml_metadata_url)
def _refresh_saml(provider: SsoProvider, record: ProviderMetadata) -> Refreshed:
    """SAML: the IdP metadata from ``saml_metadata_url`` (parsed and applied by
    services.saml: entity id, endpoints, signing certificates); without a URL (metadata
    pasted by hand) nothing is fetched and only the certificates' health is recorded."""
    from app.services import saml  # imported late: python3-saml is heavy

    max_age = None
    url = provider.saml_metadata_url
    if url:
        response = outbound.fetch(url, headers={"Accept": "application/samlmetadata+xml, */*"})
        if response.status != 200:
            raise outbound.OutboundFailed(f"the metadata answered HTTP {response.status}")
        # Pinned to the entity id already configured: an aggregate (federation) document
        # must not swap the provider for another IdP it also describes.
        parsed = saml.parse_idp_metadata(
            response.body, entity_id=provider.saml_idp_entity_id or None
        )
        changes = saml.apply_idp_metadata(provider, parsed)
        if changes["added"] or changes["removed"]:
            audit.record(
                "provider.certificates.updated",
                actor_label="metadata refresh",
                account_id=provider.account_id,
                target_type="provider",
                target_id=provider.id,
                details=changes,
            )
        max_age = _max_age(response.headers)
    signing = [cert for cert in provider.certificates if cert.use == "signing"]
    expiries = [cert.not_after for cert in signing if cert.not_after is not None]
    return Refreshed(
        max_age=max_age,
        # Certificates have no kid: their fingerprints (shortened) are what admins compare.
        key_ids=sorted(cert.fingerprint_sha256[:16] for cert in signing),
        cert_expiry=min(expiries, default=None),
    )


def _due(now: datetime) -> Select[tuple[uuid.UUID]]:
    """Enabled providers with a refresher whose refresh is due: never refreshed, or
    ``next_refresh_at`` passed."""
    protocols = [
        and_(SsoProvider.protocol == protocol, *([entry.sweep_when()] if entry.sweep_when else []))
        for protocol, entry in REFRESHERS.items()
    ]
    return (
        select(SsoProvider.id)
        .outerjoin(ProviderMetadata, ProviderMetadata.provider_id == SsoProvider.id)
        .where(
            SsoProvider.enabled.is_(True),
            or_(*protocols),
            or_(
                ProviderMetadata.provider_id.is_(None),
                ProviderMetadata.next_refresh_at.is_(None),
                ProviderMetadata.next_refresh_at <= now,
            ),
        )
    )


def due_provider_ids(now: datetime | None = None) -> list[uuid.UUID]:
    """The ids of the providers the beat sweep should refresh now. Read-only."""
    return list(db.session.scalars(_due(now or utcnow()).order_by(SsoProvider.id)))


def refresh_if_needed(provider_id: uuid.UUID, *, requested_at: datetime | None = None) -> str:
    """Refresh one provider if it still needs it; the workers' entry point (safe to repeat).

    Without ``requested_at`` (the beat sweep): only if it is still due (another worker may
    have refreshed it since it was queued). With it (the provider was just created or
    edited): unless a refresh started at or after that time already. Returns ``refreshed``,
    ``failed``, ``not_due``, ``fresh``, ``skipped`` (nothing to fetch for this protocol) or
    ``missing`` (deleted meanwhile). Adds/flushes; the caller commits."""
    provider = db.session.get(SsoProvider, provider_id)
    if provider is None:
        return "missing"
    if provider.protocol not in REFRESHERS:
        return "skipped"
    if requested_at is not None:
        record = provider.metadata_record
        attempts = [t for t in (record.fetched_at, record.last_error_at) if t] if record else []
        if attempts and max(attempts) >= requested_at:
            return "fresh"
    elif db.session.scalar(_due(utcnow()).where(SsoProvider.id == provider.id)) is None:
        return "not_due"
    return "refreshed" if refresh_provider_metadata(provider).ok else "failed"


def provider_keys(provider: SsoProvider) -> ProviderKeys:
    """Discovery + JWKS for a sign-in: cache, then the database copy, then (only when never
    fetched) one fetch. Raises MetadataUnavailable."""
    cache = get_cache()
    cached = cache.get(_cache_key(provider))
    if cached:
        return ProviderKeys(cached["discovery"], cached["jwks"])
    record = provider.metadata_record
    if record is None or not record.discovery or record.jwks is None:
        try:
            outcome = refresh_provider_metadata(provider)
            # Commit here: the fetched copy must survive even if the sign-in is refused.
            db.session.commit()
        except IntegrityError:
            # Several first sign-ins at once: another process stored the copy first.
            db.session.rollback()
            db.session.refresh(provider)
            outcome = RefreshOutcome(ok=provider.metadata_record is not None)
        record = provider.metadata_record
        if not outcome.ok or record is None or not record.discovery or record.jwks is None:
            raise MetadataUnavailable(outcome.error or "metadata unavailable")
    keys = ProviderKeys(record.discovery, record.jwks)
    cache.set(_cache_key(provider), {"discovery": keys.discovery, "jwks": keys.jwks}, CACHE_TTL)
    return keys


def refresh_jwks_for_unknown_kid(provider: SsoProvider, stale: ProviderKeys) -> ProviderKeys:
    """An ID token named a kid the JWKS lacks (the IdP rotated keys): refresh the JWKS once.

    Concurrent requests share one fetch (an in-flight marker in the shared cache; the others
    wait for its result), and a cool-down stops a flood of random kids from causing more:
    within it, requests get the current keys at once, without a fetch."""
    cache = get_cache()
    in_flight = f"jwks-refresh-in-flight:{provider.id}"
    cool_down = f"jwks-refresh-cool-down:{provider.id}"
    if cache.add(in_flight, 1, ttl=UNKNOWN_KID_WAIT * 2):
        try:
            if cache.add(cool_down, 1, ttl=UNKNOWN_KID_COOLDOWN):
                return _fetch_jwks(provider, stale)
        finally:
            cache.delete(in_flight)
    else:
        deadline = time.monotonic() + UNKNOWN_KID_WAIT
        while cache.get(in_flight) and time.monotonic() < deadline:
            time.sleep(0.05)
    cached = cache.get(_cache_key(provider))
    return ProviderKeys(cached["discovery"], cached["jwks"]) if cached else stale


def _fetch_jwks(provider: SsoProvider, stale: ProviderKeys) -> ProviderKeys:
    try:
        response = outbound.fetch(stale.discovery["jwks_uri"])
        if response.status != 200:
            raise outbound.OutboundFailed(f"the JWKS answered HTTP {response.status}")
        jwks = _validate_jwks(response.json())
    except outbound.OutboundError as error:
        log.warning("JWKS refresh failed for provider %s: %s", provider.id, error)
        return stale
    record = _record(provider)
    record.jwks = jwks
    record.jwks_fetched_at = utcnow()
    record.key_ids = _jwks_key_ids(jwks)
    record.cert_expiry = jwks_cert_expiry(jwks)
    # Committed at once: the new keys must outlive this request whatever its outcome.
    db.session.commit()
    fresh = ProviderKeys(stale.discovery, jwks)
    get_cache().set(_cache_key(provider), {"discovery": fresh.discovery, "jwks": jwks}, CACHE_TTL)
    return fresh
