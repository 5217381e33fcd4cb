"""OpenID Connect and OAuth 2.0 relying party: authorization requests, callbacks, logout.

No Flask request or session here: the blueprint stores the flow state this module returns
(in the server-side session, keyed by ``state``) and hands it back with the callback.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from base64 import urlsafe_b64encode
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from urllib.parse import urlencode
from urllib.parse import urlsplit

from flask import current_app

from app.models import Protocol
from app.models import ResponseType
from app.models import SsoProvider
from app.services import audit
from app.services import id_tokens
from app.services import metadata
from app.services import outbound
from app.services import providers
from app.services import sessions
from app.services.errors import ServiceError
from app.services.linking import ExternalIdentity

log = logging.getLogger(__name__)

# An authorization request must come back within this many seconds.
FLOW_LIFETIME = 600
# Checks whose failure means "the clocks disagree" rather than "the token is bad".
CLOCK_CHECKS = frozenset({"exp", "iat", "nbf"})


class SignInFailed(ServiceError):
    """A federated sign-in failed. ``check`` names the failed check (audit log and log only);
    ``user_message`` is the short reason the page shows; ``status`` its HTTP status."""

    def __init__(self, check: str, user_message: str, status: int = 400, detail: str = ""):
        super().__init__(user_message)
        self.check = check
        self.user_message = user_message
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class AuthorizationRequest:
    url: str
    state: str
    flow: dict[str, Any]


@dataclass(frozen=True)
class FederatedSignIn:
    """A verified identity, and what the session must remember for logout."""

    identity: ExternalIdentity
    id_token: str | None


def _b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode()


def _keys(provider: SsoProvider) -> metadata.ProviderKeys:
    try:
        return metadata.provider_keys(provider)
    except metadata.MetadataUnavailable as error:
        raise SignInFailed(
            "metadata_unavailable",
            "The identity provider cannot be reached right now. Try again in a few minutes.",
            503,
            str(error),
        ) from None


def _authorization_endpoint(provider: SsoProvider) -> str:
    if provider.protocol == Protocol.OAUTH2:
        return provider.authorization_endpoint or ""
    return _keys(provider).discovery["authorization_endpoint"]


def signin_redirect_uri(provider: SsoProvider) -> str:
    """The redirect_uri an authorization request sends.

    After a rename, the IdP may still have only the old callback URL registered, and an
    authorization request naming an unregistered redirect_uri is refused by the IdP. So while
    the old scheme is a live alias (the grace period after a rename, or until an admin says
    the IdP has the new URL), requests keep sending the newest old URL; the alias route
    accepts the answer. The pages show the new URLs to register from the start.
    """
    aliases = providers.live_aliases(provider)
    if aliases:
        newest = max(aliases, key=lambda alias: alias.created_at)
        return providers.alias_callback_urls(newest)["signin"]
    return providers.callback_urls(provider)["signin"]


def begin(
    provider: SsoProvider,
    *,
    intent: str = "login",
    next_url: str | None = None,
    link_session_id: str | None = None,
) -> AuthorizationRequest:
    """Build the authorization request (state, nonce, PKCE S256 on every request)."""
    endpoint = _authorization_endpoint(provider)
    if urlsplit(endpoint).scheme not in ("https", "http"):
        raise SignInFailed("metadata", "The identity provider's configuration is invalid.", 502)
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    response_type = provider.response_type if provider.protocol == Protocol.OIDC else "code"
    redirect_uri = signin_redirect_uri(provider)
    params = {
        "response_type": response_type,
        "client_id": provider.client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(provider.scopes) or "openid",
        "state": state,
    }
    if provider.protocol == Protocol.OIDC:
        params["nonce"] = nonce
    if "code" in response_type.split():
        # RFC 7636: S256 only; the verifier never leaves this server before the token call.
        params["code_challenge"] = _b64(hashlib.sha256(verifier.encode()).digest())
        params["code_challenge_method"] = "S256"
    if response_type != ResponseType.CODE:
        # Tokens in the front channel travel in a POST body, never in a URL.
        params["response_mode"] = "form_post"
    separator = "&" if urlsplit(endpoint).query else "?"
    flow = {
        "provider_id": str(provider.id),
        "nonce": nonce,
        "code_verifier": verifier,
        "response_type": response_type,
        # RFC 6749 §4.1.3: the token request repeats the redirect_uri of this request exactly.
        "redirect_uri": redirect_uri,
        "intent": intent,
        "next": next_url,
        "link_session_id": link_session_id,
        "expires_at": int(time.time()) + FLOW_LIFETIME,
    }
    return AuthorizationRequest(
        url=endpoint + separator + urlencode(params), state=state, flow=flow
    )


def _expectations(
    provider: SsoProvider, keys: metadata.ProviderKeys, nonce: str | None
) -> id_tokens.TokenExpectations:
    algs = set(id_tokens.ASYMMETRIC_ALGS)
    secret = None
    if provider.allow_hs256:
        algs.add("HS256")
        secret = providers.client_secret(provider)
    return id_tokens.TokenExpectations(
        issuer=keys.discovery["issuer"],
        client_id=provider.client_id or "",
        nonce=nonce,
        allowed_algs=frozenset(algs),
        client_secret=secret,
        clock_skew=current_app.config["OIDC_CLOCK_SKEW"],
    )


def _validate(
    provider: SsoProvider,
    keys: metadata.ProviderKeys,
    token: str,
    nonce: str | None,
    **hashes: str | None,
) -> tuple[dict[str, Any], metadata.ProviderKeys]:
    """Validate an ID token; on an unknown kid refresh the JWKS once and retry."""
    try:
        try:
            claims = id_tokens.validate_id_token(
                token, keys.jwks, _expectations(provider, keys, nonce), **hashes
            )
        except id_tokens.UnknownKeyId:
            keys = metadata.refresh_jwks_for_unknown_kid(provider, keys)
            claims = id_tokens.validate_id_token(
                token, keys.jwks, _expectations(provider, keys, nonce), **hashes
            )
    except id_tokens.TokenRejected as error:
        if error.check in CLOCK_CHECKS:
            raise SignInFailed(
                f"id_token.{error.check}",
                "The sign-in token is outside its validity period. Check that the clocks of "
                "your device and identity provider are correct, then try again.",
                401,
                str(error),
            ) from None
        raise SignInFailed(
            f"id_token.{error.check}",
            "The identity provider's token is not valid.",
            401,
            str(error),
        ) from None
    return claims, keys


def _client_auth(provider: SsoProvider, keys: metadata.ProviderKeys | None):
    """Client authentication at the token endpoint as discovery advertises (OIDC Core §9);
    client_secret_basic is the default when nothing is advertised."""
    secret = providers.client_secret(provider)
    if not secret:
        return None, {"client_id": provider.client_id}
    supported = ["client_secret_basic"]
    if keys is not None:
        supported = keys.discovery.get("token_endpoint_auth_methods_supported") or supported
    if "client_secret_basic" not in supported and "client_secret_post" in supported:
        return None, {"client_id": provider.client_id, "client_secret": secret}
    # RFC 6749 §2.3.1: id and secret are form-encoded before they go into Basic auth.
    return (quote(provider.client_id or "", safe=""), quote(secret, safe="")), {}


def _token_request(
    provider: SsoProvider,
    keys: metadata.ProviderKeys | None,
    code: str,
    verifier: str,
    redirect_uri: str | None,
) -> dict[str, Any]:
    endpoint = keys.discovery["token_endpoint"] if keys else provider.token_endpoint
    basic, extra = _client_auth(provider, keys)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri or providers.callback_urls(provider)["signin"],
        "code_verifier": verifier,
        **extra,
    }
    try:
        response = outbound.fetch(
            endpoint,
            method="POST",
            data=form,
            basic_auth=basic,
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )
        body = response.json()
    except outbound.OutboundError as error:
        raise SignInFailed(
            "token_endpoint",
            "The identity provider did not complete the sign-in.",
            502,
            str(error),
        ) from None
    if response.status != 200 or not isinstance(body, dict):
        error_code = body.get("error") if isinstance(body, dict) else None
        raise SignInFailed(
            "token_endpoint",
            "The identity provider did not complete the sign-in.",
            502,
            f"HTTP {response.status} {error_code or ''}".strip(),
        )
    if str(body.get("token_type", "")).lower() != "bearer" and "access_token" in body:
        raise SignInFailed(
            "token_endpoint",
            "The identity provider answered unexpectedly.",
            502,
            "token_type is not Bearer",
        )
    return body


def _userinfo(endpoint: str, access_token: str) -> dict[str, Any]:
    try:
        response = outbound.fetch(
            endpoint,
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        )
        body = response.json()
    except outbound.OutboundError as error:
        raise SignInFailed(
            "userinfo", "The identity provider did not send your profile.", 502, str(error)
        ) from None
    if response.status != 200 or not isinstance(body, dict):
        raise SignInFailed(
            "userinfo",
            "The identity provider did not send your profile.",
            502,
            f"HTTP {response.status}",
        )
    return body


def _is_true(value: Any) -> bool:
    # Some IdPs (Cognito, older ADFS) send booleans as strings.
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _identity(
    provider: SsoProvider,
    claims: Mapping[str, Any],
    subject: Any,
    email_field: str = "email",
    name_field: str = "name",
) -> ExternalIdentity:
    email = claims.get(email_field)
    name = claims.get(name_field)
    return ExternalIdentity(
        subject=str(subject) if subject is not None else "",
        email=email if isinstance(email, str) else None,
        email_verified=_is_true(claims.get("email_verified")),
        given_name=claims.get("given_name") if isinstance(claims.get("given_name"), str) else None,
        family_name=(
            claims.get("family_name") if isinstance(claims.get("family_name"), str) else None
        ),
        name=name if isinstance(name, str) else None,
        claims=dict(claims),
        sid=claims.get("sid") if isinstance(claims.get("sid"), str) else None,
    )


def complete(
    provider: SsoProvider, params: Mapping[str, str], flow: Mapping[str, Any]
) -> FederatedSignIn:
    """Verify an authorization response (the flow's state was already matched and used up by
    the caller) and return the identity. Raises SignInFailed; a rejected front-channel token
    never leads to a token-endpoint or userinfo call."""
    if flow.get("expires_at", 0) < time.time():
        raise SignInFailed("state_expired", "The sign-in took too long. Please start again.")
    if params.get("error"):
        error_code = str(params["error"])[:64]
        raise SignInFailed(
            "idp_error",
            f"The identity provider refused the sign-in ({error_code}).",
            401,
            str(params.get("error_description", ""))[:300],
        )
    if provider.protocol == Protocol.OAUTH2:
        return _complete_oauth2(provider, params, flow)

    keys = _keys(provider)
    try:
        id_tokens.check_authorization_response_issuer(
            params.get("iss"),
            keys.discovery["issuer"],
            # RFC 9207 §2.4: with an ID token in the response, its iss claim does the job (and
            # oidc-provider, for one, leaves the parameter out then).
            required=keys.discovery.get("authorization_response_iss_parameter_supported") is True
            and not params.get("id_token"),
        )
    except id_tokens.TokenRejected as error:
        raise SignInFailed(
            "iss_parameter",
            "The sign-in response did not come from the expected identity provider.",
            401,
            str(error),
        ) from None

    response_type = flow["response_type"]
    nonce = flow["nonce"]
    front_claims = None
    if "id_token" in response_type.split():
        front_token = params.get("id_token")
        if not front_token:
            raise SignInFailed("id_token.missing", "The identity provider sent no token.", 400)
        code_for_hash = params.get("code") if response_type == ResponseType.CODE_ID_TOKEN else None
        if response_type == ResponseType.CODE_ID_TOKEN and not code_for_hash:
            raise SignInFailed("code.missing", "The identity provider sent no code.", 400)
        front_claims, keys = _validate(provider, keys, front_token, nonce, code=code_for_hash)
        if response_type == ResponseType.ID_TOKEN:
            return FederatedSignIn(
                _identity(provider, front_claims, front_claims["sub"]), front_token
            )

    code = params.get("code")
    if not code:
        raise SignInFailed("code.missing", "The identity provider sent no code.", 400)
    tokens = _token_request(provider, keys, code, flow["code_verifier"], flow.get("redirect_uri"))
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str):
        raise SignInFailed("id_token.missing", "The identity provider sent no token.", 502)
    access_token = (
        tokens.get("access_token") if isinstance(tokens.get("access_token"), str) else None
    )
    claims, keys = _validate(provider, keys, id_token, nonce, access_token=access_token)
    if front_claims is not None and (
        claims["iss"] != front_claims["iss"] or claims["sub"] != front_claims["sub"]
    ):
        # OIDC Core §3.3.3.6: both ID tokens of a hybrid flow name the same user.
        raise SignInFailed(
            "id_token.sub",
            "The identity provider's token is not valid.",
            401,
            "hybrid ID tokens differ in iss or sub",
        )
    userinfo_endpoint = keys.discovery.get("userinfo_endpoint")
    if access_token and isinstance(userinfo_endpoint, str):
        # Profile and extra claims (groups, roles...) often come only from userinfo.
        info = _userinfo(userinfo_endpoint, access_token)
        if info.get("sub") != claims["sub"]:
            # OIDC Core §5.3.2: the userinfo sub MUST match the ID token's.
            raise SignInFailed(
                "userinfo.sub",
                "The identity provider's answer is not valid.",
                401,
                "userinfo sub differs from the ID token's",
            )
        claims = {**info, **claims}
    return FederatedSignIn(_identity(provider, claims, claims["sub"]), id_token)


def _complete_oauth2(
    provider: SsoProvider, params: Mapping[str, str], flow: Mapping[str, Any]
) -> FederatedSignIn:
    code = params.get("code")
    if not code:
        raise SignInFailed("code.missing", "The identity provider sent no code.", 400)
    tokens = _token_request(provider, None, code, flow["code_verifier"], flow.get("redirect_uri"))
    access_token = tokens.get("access_token")
    if not isinstance(access_token, str):
        raise SignInFailed("token_endpoint", "The identity provider sent no access token.", 502)
    info = _userinfo(provider.userinfo_endpoint or "", access_token)
    subject = info.get(provider.subject_field)
    if subject is None or isinstance(subject, (dict, list, bool)) or str(subject) == "":
        raise SignInFailed(
            "userinfo.subject",
            "The identity provider did not say who you are.",
            400,
            f"no {provider.subject_field!r} in userinfo",
        )
    return FederatedSignIn(
        _identity(provider, info, subject, provider.email_field, provider.name_field), None
    )


def end_session_url(provider: SsoProvider, id_token: str | None, state: str) -> str | None:
    """RP-initiated logout (OIDC RP-Initiated Logout 1.0 §2), when the IdP supports it."""
    if provider.protocol != Protocol.OIDC:
        return None
    try:
        keys = metadata.provider_keys(provider)
    except metadata.MetadataUnavailable:
        return None
    endpoint = keys.discovery.get("end_session_endpoint")
    if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("https", "http"):
        return None
    params = {
        "post_logout_redirect_uri": providers.callback_urls(provider)["signout_callback"],
        "state": state,
        "client_id": provider.client_id,
    }
    if id_token:
        params["id_token_hint"] = id_token
    separator = "&" if urlsplit(endpoint).query else "?"
    return endpoint + separator + urlencode(params)


def validate_logout_token(provider: SsoProvider, token: str) -> id_tokens.LogoutClaims:
    """Back-channel logout token (OIDC Back-Channel Logout 1.0 §2.6). Raises SignInFailed."""
    keys = _keys(provider)
    expect = _expectations(provider, keys, None)
    try:
        try:
            return id_tokens.validate_logout_token(token, keys.jwks, expect)
        except id_tokens.UnknownKeyId:
            keys = metadata.refresh_jwks_for_unknown_kid(provider, keys)
            return id_tokens.validate_logout_token(token, keys.jwks, expect)
    except id_tokens.TokenRejected as error:
        raise SignInFailed(
            f"logout_token.{error.check}", "Invalid logout token.", 400, str(error)
        ) from None


def end_idp_sessions(
    provider: SsoProvider,
    channel: str,
    *,
    sid: str | None = None,
    subject: str | None = None,
    meta: audit.RequestMeta = audit.NO_REQUEST,
) -> int:
    """End the sessions an IdP signs out over the front or back channel (by its sid, or
    every session of the subject without one) and audit it; returns how many ended."""
    ended = sessions.revoke_idp_sessions(
        provider.id, sid=sid, subject=subject, reason=f"{channel}_logout"
    )
    audit.record(
        f"auth.signout.{channel}",
        account_id=provider.account_id,
        target_type="provider",
        target_id=provider.id,
        details={"sessions_ended": ended},
        meta=meta,
    )
    return ended


def issuer(provider: SsoProvider) -> str | None:
    """The provider's issuer from its cached discovery document (front-channel logout)."""
    try:
        return metadata.provider_keys(provider).discovery.get("issuer")
    except metadata.MetadataUnavailable:
        return None
