"""Provider metadata: discovery and JWKS fetched through the outbound fetcher, validated,
kept in ProviderMetadata (the durable last good copy) and the shared cache.

Sign-ins read the cache, then the database; they fetch only when nothing was ever fetched,
or once (rate-limited, shared) when an ID token names a key id the JWKS lacks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from app.cache import get_cache
from app.extensions import db
from app.models import Protocol
from app.models import ProviderMetadata
from app.models import SsoProvider
from app.models.base import utcnow
from app.services import outbound
from app.services.errors import ServiceError

log = logging.getLogger(__name__)

# Discovery documents and JWKS are served from the cache for this long before the
# database copy is read again (the beat refresh rewrites both).
CACHE_TTL = 3600
# After an unknown-kid refresh, no other one for this provider for this long: a flood of
# tokens with random kids costs one fetch per cool-down, not one per request.
UNKNOWN_KID_COOLDOWN = 60
# How long a request waits for another process's in-flight JWKS refresh.
UNKNOWN_KID_WAIT = 5.0
DEFAULT_MAX_AGE = timedelta(hours=24)


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


def _max_age(headers) -> timedelta:
    """Cache-Control max-age of a response (RFC 9111 §5.2.2.1), bounded to 5 min .. 7 days."""
    for part in (headers.get("Cache-Control") or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.lower() == "max-age" and value.isdigit():
            return min(max(timedelta(seconds=int(value)), timedelta(minutes=5)), timedelta(days=7))
    return DEFAULT_MAX_AGE


def _record(provider: SsoProvider) -> ProviderMetadata:
    record = provider.metadata_record
    if record is None:
        record = ProviderMetadata(provider=provider)
        db.session.add(record)
    return record


def refresh_provider_metadata(provider: SsoProvider) -> RefreshOutcome:
    """Fetch and validate discovery + JWKS now; on failure keep the last good copy and record
    the error (stale-if-error). Adds/flushes; the caller commits."""
    if provider.protocol != Protocol.OIDC:
        return RefreshOutcome(ok=True)
    record = _record(provider)
    now = utcnow()
    try:
        response = outbound.fetch(discovery_url(provider.authority or ""))
        if response.status != 200:
            raise outbound.OutboundFailed(f"discovery answered HTTP {response.status}")
        discovery = _validate_discovery(provider, response.json())
        jwks_response = outbound.fetch(discovery["jwks_uri"])
        if jwks_response.status != 200:
            raise outbound.OutboundFailed(f"the JWKS answered HTTP {jwks_response.status}")
        jwks = _validate_jwks(jwks_response.json())
    except outbound.OutboundError as error:
        record.last_error = str(error)[:500]
        record.last_error_at = now
        db.session.flush()
        log.warning("metadata refresh failed for provider %s: %s", provider.id, error)
        return RefreshOutcome(ok=False, error=record.last_error)
    record.discovery = discovery
    record.jwks = jwks
    record.fetched_at = record.jwks_fetched_at = record.last_success_at = now
    record.expires_at = now + min(_max_age(response.headers), _max_age(jwks_response.headers))
    record.key_ids = sorted(str(k.get("kid")) for k in jwks["keys"] if k.get("kid"))
    record.last_error = None
    db.session.flush()
    get_cache().set(_cache_key(provider), {"discovery": discovery, "jwks": jwks}, CACHE_TTL)
    return RefreshOutcome(ok=True)


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
    record.key_ids = sorted(str(k.get("kid")) for k in jwks["keys"] if k.get("kid"))
    # Committed at once: the new keys must outlive this request whatever its outcome.
    db.session.commit()
    fresh = ProviderKeys(stale.discovery, jwks)
    get_cache().set(_cache_key(provider), {"discovery": fresh.discovery, "jwks": jwks}, CACHE_TTL)
    return fresh
