"""Pure validation of OpenID Connect ID tokens, logout tokens and the RFC 9207 ``iss`` parameter."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from joserfc.errors import JoseError
from joserfc.jwa import JWS_ALGORITHMS
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import JWKRegistry
from joserfc.jwk import Key
from joserfc.jwk import OctKey

from app.services.errors import ServiceError

# --- Algorithms -----------------------------------------------------------------------------

#: Asymmetric JWS algorithms accepted by default (RFC 7518 §3.1, RFC 8037 §3.1, and the fully
#: specified Ed25519 / Ed448 names of RFC 9864, which are the same primitives as EdDSA).
ASYMMETRIC_ALGS: frozenset[str] = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
        "Ed25519",
        "Ed448",
    }
)
#: MAC algorithms: only when the provider is configured for them, keyed by the client secret
#: (OpenID Connect Core 1.0 §10.1: the UTF-8 octets of the client_secret are the MAC key).
HMAC_ALGS: frozenset[str] = frozenset({"HS256", "HS384", "HS512"})
SUPPORTED_ALGS: frozenset[str] = ASYMMETRIC_ALGS | HMAC_ALGS

#: Which JWK may verify which alg: (kty, allowed crv values or None). RFC 7518 §3.3-§3.5 and
#: §6.2.1.1, RFC 8037 §3.1, RFC 9864.
_KEY_TYPES: dict[str, tuple[str, frozenset[str] | None]] = {
    **{f"{family}{size}": ("RSA", None) for family in ("RS", "PS") for size in (256, 384, 512)},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "Ed25519": ("OKP", frozenset({"Ed25519"})),
    "Ed448": ("OKP", frozenset({"Ed448"})),
}

# joserfc's algorithm models, used directly: going through JWSRegistry.get_alg would emit a
# SecurityWarning for "EdDSA" (deprecated by RFC 9864) on every token.
_ALG_MODELS: dict[str, JWSAlgModel] = {
    m.name: m for m in JWS_ALGORITHMS if m.name in SUPPORTED_ALGS
}

#: RSA keys below this size are never used (NIST SP 800-131A; RFC 7518 §3.3 requires 2048).
MIN_RSA_BITS = 2048

# --- Limits and constants -------------------------------------------------------------------

#: Longest token accepted, in characters (a generous bound for large "groups" claims).
MAX_TOKEN_LENGTH = 200_000
#: Longest "sub" (OpenID Connect Core 1.0 §2: "MUST NOT exceed 255 ASCII characters").
MAX_SUB_LENGTH = 255
#: Logout tokens issued longer ago than this (plus the clock skew) are refused.
LOGOUT_TOKEN_MAX_AGE = 600
#: Placeholder in Microsoft's multi-tenant issuer, e.g. https://login.microsoftonline.com/{tenantid}/v2.0
TENANT_PLACEHOLDER = "{tenantid}"
#: OpenID Connect Back-Channel Logout 1.0 §2.4: the member of "events" marking a logout token.
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"

_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_GUID_RE = re.compile(_GUID)
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_LOGOUT_TYPES = frozenset({"logout+jwt", "application/logout+jwt", "jwt", "application/jwt"})


# --- Errors and expectations ----------------------------------------------------------------


class TokenRejected(ServiceError):
    """A token (or authorisation response) failed a check; ``check`` names which one.

    The message is meant for logs and the audit trail; it never contains the token.
    """

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check
        self.message = message


class UnknownKeyId(TokenRejected):
    """The header's ``kid`` is not in the JWKS: refresh the JWKS once (rate-limited), retry."""

    def __init__(self, kid: str) -> None:
        super().__init__("kid", f"no key with kid {_show(kid)} in the provider's JWKS")
        self.kid = kid


@dataclass(frozen=True, kw_only=True)
class TokenExpectations:
    """What the relying party expects of a token from one provider.

    ``issuer`` may contain ``{tenantid}`` (Microsoft multi-tenant): the token's ``iss`` must
    then equal the template with the placeholder replaced by the token's GUID ``tid`` claim.
    ``client_secret`` keys the HS* algorithms and is required when one is in ``allowed_algs``.
    ``trusted_audiences`` lists audiences besides ``client_id`` that may appear in ``aud``
    (OpenID Connect Core 1.0 §3.1.3.7 step 3). ``max_age``, when it was sent in the
    authorisation request, makes ``auth_time`` required and bounds it. ``now`` (Unix seconds)
    replaces the clock, for tests.
    """

    issuer: str
    client_id: str
    nonce: str | None = None
    allowed_algs: frozenset[str] = ASYMMETRIC_ALGS
    client_secret: str | None = field(default=None, repr=False)
    clock_skew: int = 120
    max_age: int | None = None
    trusted_audiences: frozenset[str] = frozenset()
    now: int | None = None

    def __post_init__(self) -> None:
        """Refuse configurations that could never validate safely."""
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("issuer is required")
        if self.issuer.count(TENANT_PLACEHOLDER) > 1:
            raise ValueError("issuer may contain {tenantid} at most once")
        if not isinstance(self.client_id, str) or not self.client_id:
            raise ValueError("client_id is required")
        algs = frozenset(self.allowed_algs)
        object.__setattr__(self, "allowed_algs", algs)
        object.__setattr__(self, "trusted_audiences", frozenset(self.trusted_audiences))
        if not algs:
            raise ValueError("allowed_algs is empty")
        unsupported = algs - SUPPORTED_ALGS
        if unsupported:
            # "none" lands here too: it is never acceptable (OpenID Connect Core 1.0 §3.1.3.7).
            raise ValueError(f"unsupported algorithms: {sorted(unsupported)}")
        if algs & HMAC_ALGS and not self.client_secret:
            raise ValueError("HS* algorithms need the client secret")
        if isinstance(self.clock_skew, bool) or not isinstance(self.clock_skew, int):
            raise ValueError("clock_skew must be an int")
        if self.clock_skew < 0:
            raise ValueError("clock_skew must not be negative")
        if self.max_age is not None and self.max_age < 0:
            raise ValueError("max_age must not be negative")


@dataclass(frozen=True)
class LogoutClaims:
    """The claims of a valid logout token the back-channel logout endpoint acts on."""

    iss: str
    sub: str | None
    sid: str | None
    jti: str
    iat: int


# --- Public API -----------------------------------------------------------------------------


def validate_id_token(
    id_token: str,
    jwks: dict[str, Any],
    expect: TokenExpectations,
    *,
    access_token: str | None = None,
    code: str | None = None,
    require_at_hash: bool = False,
) -> dict[str, Any]:
    """Validate an ID token (OpenID Connect Core 1.0 §3.1.3.7, §3.2.2.11, §3.3.2.12).

    Returns the claims, or raises :class:`TokenRejected` (:class:`UnknownKeyId` when the
    header's ``kid`` is not in ``jwks``). ``access_token``: the access token returned with the
    ID token; ``at_hash`` is checked when present (§3.1.3.8), and required when
    ``require_at_hash`` (an access token from the authorisation endpoint, §3.2.2.10 /
    §3.3.2.11). ``code``: the authorisation code returned with this ID token at the
    authorisation endpoint (hybrid flow); ``c_hash`` is then required and checked
    (§3.3.2.10, §3.3.2.11).
    """
    if require_at_hash and access_token is None:
        raise ValueError("require_at_hash needs the access token")
    header, claims, signing_input, signature = _parse_compact_jws(id_token, expect)
    typ = header.get("typ")
    if typ is not None and typ.lower().endswith("+jwt"):
        # RFC 8725 §3.11: an explicitly typed JWT meant for something else (logout+jwt,
        # at+jwt, secevent+jwt...) is never an ID token.
        raise TokenRejected("typ", f"typ {_show(typ)} is not an ID token type")
    curve = _verify_signature(header, signing_input, signature, jwks, expect)
    now = _now(expect)
    skew = expect.clock_skew

    _check_issuer(claims, expect.issuer)  # §3.1.3.7 step 2
    _check_audience(claims, expect, check_azp=True)  # steps 3-5
    _check_times(claims, now, skew, exp_required=True)  # steps 9-10
    _check_sub(claims, required=True)  # §2: sub REQUIRED
    _check_nonce(claims, expect.nonce)  # step 11
    if expect.max_age is not None:  # steps 12-13 (§3.1.2.1 max_age)
        _check_auth_time(claims, now, skew, expect.max_age)
    alg = header["alg"]
    if access_token is not None:  # §3.1.3.8 / §3.2.2.9 / §3.3.2.9
        _check_half_hash(claims, "at_hash", access_token, alg, curve, required=require_at_hash)
    if code is not None:  # §3.3.2.10 / §3.3.2.11
        _check_half_hash(claims, "c_hash", code, alg, curve, required=True)
    return claims


def validate_logout_token(
    logout_token: str,
    jwks: dict[str, Any],
    expect: TokenExpectations,
    *,
    max_age: int = LOGOUT_TOKEN_MAX_AGE,
) -> LogoutClaims:
    """Validate a logout token (OpenID Connect Back-Channel Logout 1.0 §2.4, §2.6).

    Signature, ``alg`` and key rules are those of ID tokens; ``iss`` and ``aud`` as for ID
    tokens (no ``azp`` rule); ``iat`` is required, not in the future beyond the clock skew and
    not older than ``max_age`` seconds plus the skew (our bound: the spec leaves freshness to
    the RP); ``exp`` and ``nbf`` are checked when present (the 2022 final text lists ``exp``,
    but providers built on earlier drafts omit it, and the ``iat`` bound covers that case);
    ``jti`` is required; ``events`` must hold the back-channel logout event with a JSON
    object value; ``sub`` and/or ``sid``; ``nonce`` must be absent (§4.1 Cross-JWT Confusion).
    A ``typ`` header, when present, must be ``logout+jwt`` (§2.4 explicit typing) or the
    generic ``JWT`` that some providers send. ``expect.nonce`` is ignored. Encrypted (JWE)
    logout tokens are refused: no decryption keys are registered with providers.

    Replay: this function does not remember ``jti`` values. The caller must refuse a ``jti``
    already seen from the same issuer for at least ``max_age`` + ``clock_skew`` seconds
    (§2.6 step 7).
    """
    header, claims, signing_input, signature = _parse_compact_jws(logout_token, expect)
    typ = header.get("typ")
    if typ is not None and typ.lower() not in _LOGOUT_TYPES:
        raise TokenRejected("typ", f"typ {_show(typ)} is not logout+jwt")
    _verify_signature(header, signing_input, signature, jwks, expect)
    now = _now(expect)
    skew = expect.clock_skew

    iss = _check_issuer(claims, expect.issuer)
    _check_audience(claims, expect, check_azp=False)
    iat = _check_times(claims, now, skew, exp_required=False)
    if iat < now - max_age - skew:
        raise TokenRejected("iat", f"logout token issued more than {max_age}s ago")

    # §2.6 step 6 / §2.4: a nonce makes it an ID token, or a forged one.
    if "nonce" in claims:
        raise TokenRejected("nonce", "logout token must not contain a nonce")
    # §2.4: events MUST be a JSON object holding the logout event, whose value MUST be a
    # JSON object (SHOULD be {}).
    events = claims.get("events")
    if not isinstance(events, dict) or BACKCHANNEL_LOGOUT_EVENT not in events:
        raise TokenRejected("events", "events claim lacks the back-channel logout event")
    if not isinstance(events[BACKCHANNEL_LOGOUT_EVENT], dict):
        raise TokenRejected("events", "back-channel logout event value is not a JSON object")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise TokenRejected("jti", "jti missing or empty")
    # §2.4 / §2.6 step 4: sub, sid, or both.
    sub = _check_sub(claims, required=False)
    sid = claims.get("sid")
    if sid is not None and (not isinstance(sid, str) or not sid):
        raise TokenRejected("sid", "sid is not a non-empty string")
    if sub is None and sid is None:
        raise TokenRejected("sid", "logout token has neither sub nor sid")
    return LogoutClaims(iss=iss, sub=sub, sid=sid, jti=jti, iat=int(iat))


def check_authorization_response_issuer(
    iss_param: str | None, expected_issuer: str, *, required: bool
) -> None:
    """Check the ``iss`` authorisation response parameter (RFC 9207 §2.4).

    When present it must equal ``expected_issuer`` by simple string comparison. When absent
    it is refused if ``required`` (discovery said ``authorization_response_iss_parameter_
    supported: true``). For a ``{tenantid}`` template (Microsoft multi-tenant) any GUID in the
    placeholder's position is accepted: the response cannot say which tenant to expect, and
    the ID token's ``iss``/``tid`` check that follows binds the tenant; what RFC 9207 guards
    against, a response from another authorisation server, is still refused.
    """
    if iss_param is None:
        if required:
            raise TokenRejected("iss", "authorisation response lacks the iss parameter")
        return
    if TENANT_PLACEHOLDER in expected_issuer:
        prefix, _, suffix = expected_issuer.partition(TENANT_PLACEHOLDER)
        pattern = re.escape(prefix) + _GUID + re.escape(suffix)
        if re.fullmatch(pattern, iss_param) is None:
            raise TokenRejected("iss", "iss parameter does not match the tenant issuer template")
        return
    if iss_param != expected_issuer:
        raise TokenRejected("iss", "iss parameter does not match the provider's issuer")


# --- Parsing --------------------------------------------------------------------------------


def _parse_compact_jws(
    token: str, expect: TokenExpectations
) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Split a JWS Compact Serialization (RFC 7515 §7.1) and check its header.

    Returns (header, claims, signing input, signature). JWE (RFC 7516 §7.1, five parts),
    unsecured JWTs, unknown ``crit`` entries and unencoded payloads are refused.
    """
    if not isinstance(token, str) or not token:
        raise TokenRejected("malformed", "token is not a string")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenRejected("malformed", "token is too long")
    parts = token.split(".")
    if len(parts) == 5:
        raise TokenRejected("malformed", "encrypted (JWE) tokens are not accepted")
    if len(parts) != 3:
        raise TokenRejected("malformed", "token is not a compact JWS")
    header = _json_object(_b64decode(parts[0], "header"), "header")

    if "enc" in header:
        raise TokenRejected("malformed", "encrypted (JWE) tokens are not accepted")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise TokenRejected("malformed", "header has no alg")
    # Only allow-listed algorithms, so never "none" (Core §3.1.3.7 step 6, RFC 8725 §3.1).
    if alg not in expect.allowed_algs:
        raise TokenRejected("alg", f"alg {_show(alg)} is not allowed for this provider")
    # RFC 7515 §4.1.11: a recipient MUST reject a JWS whose crit lists extensions it does not
    # understand; we implement none.
    if "crit" in header:
        raise TokenRejected("crit", "header has critical extensions we do not understand")
    # RFC 7797 unencoded payloads and compressed payloads have no place in a JWT.
    if "b64" in header or "zip" in header:
        raise TokenRejected("malformed", "header uses b64 or zip")
    cty = header.get("cty")
    if isinstance(cty, str) and cty.lower() in ("jwt", "application/jwt"):
        raise TokenRejected("malformed", "nested JWTs are not accepted")  # RFC 7519 §5.2
    for name in ("kid", "typ", "cty"):
        if name in header and not isinstance(header[name], str):
            raise TokenRejected("malformed", f"header {name} is not a string")

    claims = _json_object(_b64decode(parts[1], "payload"), "payload")
    signature = _b64decode(parts[2], "signature")
    if not signature:
        raise TokenRejected("signature", "token is not signed")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return header, claims, signing_input, signature


def _b64decode(segment: str, what: str) -> bytes:
    """Decode canonical, unpadded base64url (RFC 7515 §2, §3.1)."""
    if not _B64URL_RE.fullmatch(segment) or len(segment) % 4 == 1:
        raise TokenRejected("malformed", f"{what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenRejected("malformed", f"{what} is not base64url") from exc
    # Refuse non-canonical encodings (stray trailing bits) so one token has one spelling.
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != segment:
        raise TokenRejected("malformed", f"{what} is not canonical base64url")
    return data


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """RFC 7519 §4 / RFC 7515 §4: duplicate member names are refused, not last-one-wins."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError("duplicate member name")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259 §6)."""
    raise ValueError(f"invalid JSON constant {name}")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse UTF-8 JSON that must be an object."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TokenRejected("malformed", f"{what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise TokenRejected("malformed", f"{what} is not a JSON object")
    return value


# --- Signature ------------------------------------------------------------------------------


def _verify_signature(
    header: dict[str, Any],
    signing_input: bytes,
    signature: bytes,
    jwks: dict[str, Any],
    expect: TokenExpectations,
) -> str | None:
    """Verify the JWS signature (Core §3.1.3.7 steps 6-8, §10.1); return the key's crv.

    HS* is verified only with the client secret, never with JWKS material, which defeats
    the "HMAC keyed with the public key" forgery. Asymmetric algorithms are verified only
    with JWKS keys whose kty/crv fit the alg, whose ``use`` is "sig" or absent, whose
    ``key_ops`` allow "verify" and whose ``alg``, if any, equals the header's. Keys embedded
    in or referenced by the header (jwk, jku, x5c, x5u) are never used.
    """
    alg: str = header["alg"]
    model = _ALG_MODELS[alg]
    if alg in HMAC_ALGS:
        secret = (expect.client_secret or "").encode("utf-8")
        if not secret:  # guarded by TokenExpectations; an empty HMAC key is forgeable
            raise TokenRejected("alg", "no client secret to verify an HS* token")
        # Built directly: OctKey.import_key warns on short secrets, which the RP cannot pick.
        if not model.verify(signing_input, signature, OctKey(secret, secret)):
            raise TokenRejected("signature", "signature does not verify with the client secret")
        return None

    keys, published_kids = _import_jwks(jwks)
    kid = header.get("kid")
    if kid is not None:
        if kid not in published_kids:
            raise UnknownKeyId(kid)
        keys = [key for key in keys if key.kid == kid]
    usable = [key for key in keys if _key_fits(key, alg)]
    if not usable:
        raise TokenRejected("key", f"no key in the JWKS can verify alg {_show(alg)}")
    for key in usable:
        try:
            verified = model.verify(signing_input, signature, key)
        except (JoseError, ValueError, TypeError):
            verified = False
        if verified:
            crv = key.get("crv")
            return crv if isinstance(crv, str) else None
    raise TokenRejected("signature", "signature does not verify")


def _import_jwks(jwks: dict[str, Any]) -> tuple[list[Key], set[str]]:
    """Import the asymmetric keys of a JWK Set (RFC 7517 §5), skipping what cannot be used.

    Returns the keys and every kid the set publishes, usable or not (an unusable key is a
    rejection, not a reason to refresh the JWKS). Symmetric ("oct") keys are skipped: a JWKS
    is public, so its oct keys are no secret.
    """
    entries = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(entries, list):
        return [], set()
    keys: list[Key] = []
    kids: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("kid"), str):
            kids.add(entry["kid"])
        if entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if entry["kty"] == "RSA" and _rsa_modulus_bits(entry) < MIN_RSA_BITS:
            continue  # checked before import, which would warn about the weak key each time
        try:
            keys.append(JWKRegistry.import_key(entry))
        except (JoseError, ValueError, TypeError, KeyError, UnsupportedAlgorithm):
            continue  # a malformed key cannot verify anything; the others still can
    return keys, kids


def _rsa_modulus_bits(entry: dict[str, Any]) -> int:
    """The size of an RSA JWK's modulus "n" (RFC 7518 §6.3.1.1), 0 when unreadable."""
    n = entry.get("n")
    if not isinstance(n, str) or not _B64URL_RE.fullmatch(n):
        return 0
    try:
        modulus = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    except (binascii.Error, ValueError):
        return 0
    return int.from_bytes(modulus, "big").bit_length()


def _key_fits(key: Key, alg: str) -> bool:
    """Whether ``key`` may verify ``alg`` (RFC 7517 §4.2-§4.4, RFC 7518 §3, RFC 8037 §3.1)."""
    kty, curves = _KEY_TYPES[alg]
    if key.key_type != kty:
        return False
    if key.get("use") not in (None, "sig"):
        return False
    key_ops = key.get("key_ops")
    if key_ops is not None and "verify" not in key_ops:
        return False
    if key.get("alg") not in (None, alg):
        return False
    if curves is not None and key.get("crv") not in curves:
        return False
    if kty == "RSA":
        key_size = getattr(key.raw_value, "key_size", 0)
        if key_size < MIN_RSA_BITS:
            return False
    return True


# --- Claims ---------------------------------------------------------------------------------


def _now(expect: TokenExpectations) -> int:
    """The current Unix time, or the one the expectations fix."""
    return expect.now if expect.now is not None else int(time.time())


def _check_issuer(claims: dict[str, Any], expected: str) -> str:
    """``iss`` must equal the issuer exactly (Core §3.1.3.7 step 2); return it.

    With a ``{tenantid}`` template, the expected value is the template with the token's
    ``tid`` (which must look like a GUID) substituted, so a token from any Entra ID tenant is
    accepted only under its own tenant's issuer.
    """
    iss = claims.get("iss")
    if not isinstance(iss, str):
        raise TokenRejected("iss", "iss missing")
    if TENANT_PLACEHOLDER in expected:
        tid = claims.get("tid")
        if not isinstance(tid, str) or _GUID_RE.fullmatch(tid) is None:
            raise TokenRejected("iss", "tid missing or not a GUID for a tenant issuer")
        expected = expected.replace(TENANT_PLACEHOLDER, tid)
    if iss != expected:
        raise TokenRejected("iss", f"iss does not match the expected issuer {expected}")
    return iss


def _check_audience(claims: dict[str, Any], expect: TokenExpectations, *, check_azp: bool) -> None:
    """``aud`` must list client_id and nothing untrusted (Core §3.1.3.7 steps 3-5)."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        audiences = {aud}
    elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        audiences = set(aud)
    else:
        raise TokenRejected("aud", "aud missing or not a string or list of strings")
    if expect.client_id not in audiences:
        raise TokenRejected("aud", "aud does not contain our client_id")
    if audiences - {expect.client_id} - expect.trusted_audiences:
        raise TokenRejected("aud", "aud contains audiences we do not trust")
    if not check_azp:
        return
    azp = claims.get("azp")
    if len(audiences) > 1 and azp is None:
        raise TokenRejected("azp", "several audiences but no azp")
    if azp is not None and azp != expect.client_id:
        raise TokenRejected("azp", "azp is not our client_id")


def _numeric_date(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    """A NumericDate claim (RFC 7519 §2): a finite JSON number, not a boolean."""
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenRejected(name, f"{name} missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected(name, f"{name} is not a NumericDate")
    if isinstance(value, float) and not math.isfinite(value):  # 1e400 parses as inf
        raise TokenRejected(name, f"{name} is not a NumericDate")
    return value


def _required_date(claims: dict[str, Any], name: str) -> float:
    """A NumericDate claim that must be present."""
    value = _numeric_date(claims, name, required=True)
    if value is None:  # pragma: no cover - _numeric_date raised already
        raise TokenRejected(name, f"{name} missing")
    return value


def _check_times(claims: dict[str, Any], now: int, skew: int, *, exp_required: bool) -> float:
    """``exp``, ``iat`` and ``nbf`` against the clock with ``skew`` leeway; return ``iat``.

    RFC 7519 §4.1.4 (now before exp), §4.1.5 (not before nbf), Core §3.1.3.7 steps 9-10
    (iat required; tokens issued in the future are refused).
    """
    exp = _numeric_date(claims, "exp", required=exp_required)
    if exp is not None and now >= exp + skew:
        raise TokenRejected("exp", "token has expired")
    iat = _required_date(claims, "iat")
    if iat > now + skew:
        raise TokenRejected("iat", "token was issued in the future")
    nbf = _numeric_date(claims, "nbf", required=False)
    if nbf is not None and nbf > now + skew:
        raise TokenRejected("nbf", "token is not valid yet")
    return iat


def _check_sub(claims: dict[str, Any], *, required: bool) -> str | None:
    """``sub``: a non-empty string of at most 255 characters (Core §2)."""
    sub = claims.get("sub")
    if sub is None:
        if required:
            raise TokenRejected("sub", "sub missing")
        return None
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH:
        raise TokenRejected("sub", "sub is not a non-empty string of at most 255 characters")
    return sub


def _check_nonce(claims: dict[str, Any], expected: str | None) -> None:
    """``nonce`` must equal the one sent (Core §3.1.3.7 step 11), and be absent if none was."""
    if expected is None:
        if "nonce" in claims:
            raise TokenRejected("nonce", "token carries a nonce but none was sent")
        return
    nonce = claims.get("nonce")
    if not isinstance(nonce, str):
        raise TokenRejected("nonce", "nonce missing")
    if not hmac.compare_digest(nonce.encode("utf-8"), expected.encode("utf-8")):
        raise TokenRejected("nonce", "nonce does not match the one sent")


def _check_auth_time(claims: dict[str, Any], now: int, skew: int, max_age: int) -> None:
    """With max_age requested, auth_time is required and recent enough (Core §3.1.3.7 step 13)."""
    auth_time = _required_date(claims, "auth_time")
    if auth_time > now + skew:
        raise TokenRejected("auth_time", "auth_time is in the future")
    if now - auth_time > max_age + skew:
        raise TokenRejected("auth_time", "authentication is older than max_age")


def _half_hash(value: str, alg: str, curve: str | None = None) -> str:
    """The at_hash / c_hash of ``value`` for a token signed with ``alg`` (Core §3.3.2.11).

    base64url of the left half of the digest of the ASCII octets, with the hash of the alg:
    SHA-256/384/512 by the alg's size; for EdDSA the curve's hash, as the OpenID Foundation
    settled (Connect issue 1125): SHA-512 for Ed25519, SHAKE256 with 114 output bytes for Ed448.
    """
    data = value.encode("ascii")
    if alg in ("EdDSA", "Ed25519", "Ed448"):
        if alg == "Ed448" or (alg == "EdDSA" and curve == "Ed448"):
            digest = hashlib.shake_256(data).digest(114)
        else:
            digest = hashlib.sha512(data).digest()
    else:
        digest = hashlib.new(f"sha{alg[-3:]}", data).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


def _check_half_hash(
    claims: dict[str, Any], name: str, value: str, alg: str, curve: str | None, *, required: bool
) -> None:
    """Compare ``at_hash`` or ``c_hash`` with the hash of ``value``, in constant time."""
    claim = claims.get(name)
    if claim is None:
        if required:
            raise TokenRejected(name, f"{name} missing")
        return
    try:
        expected = _half_hash(value, alg, curve)
    except UnicodeEncodeError as exc:
        raise TokenRejected(name, f"value for {name} is not ASCII") from exc
    if not isinstance(claim, str) or not hmac.compare_digest(
        claim.encode("utf-8"), expected.encode("ascii")
    ):
        raise TokenRejected(name, f"{name} does not match")


def _show(value: object) -> str:
    """A short, escaped rendering of a header value for messages (no log injection)."""
    return repr(value)[:64]
