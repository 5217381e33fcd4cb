"""ID token, logout token and RFC 9207 validation, with tokens signed by keys made here."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey
from joserfc.jwk import Key
from joserfc.jwk import OKPKey
from joserfc.jwk import RSAKey

from app.services.id_tokens import BACKCHANNEL_LOGOUT_EVENT
from app.services.id_tokens import LogoutClaims
from app.services.id_tokens import TokenExpectations
from app.services.id_tokens import TokenRejected
from app.services.id_tokens import UnknownKeyId
from app.services.id_tokens import check_authorization_response_issuer
from app.services.id_tokens import validate_id_token
from app.services.id_tokens import validate_logout_token

NOW = 1_750_000_000
ISSUER = "https://idp.example.com"
CLIENT_ID = "keyward-client"
NONCE = "n-0S6_WzA2Mj"
CLIENT_SECRET = "a-client-secret-of-reasonable-length-0123456789"
MS_TEMPLATE = "https://login.microsoftonline.com/{tenantid}/v2.0"
TENANT_A = "9188040d-6c67-4c5b-b112-36a304b66dad"
TENANT_B = "72f988bf-86f1-41af-91ab-2d7cd011db47"
DROP = object()  # claim value meaning "leave this claim out"


# --- Keys and token helpers -----------------------------------------------------------------


@pytest.fixture(scope="session")
def keys() -> SimpleNamespace:
    """One key per family, plus an attacker's RSA key reusing the legitimate kid."""
    return SimpleNamespace(
        rsa=RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}),
        rsa_impostor=RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}),
        ec256=ECKey.generate_key("P-256", parameters={"kid": "ec-256"}),
        ec384=ECKey.generate_key("P-384", parameters={"kid": "ec-384"}),
        ec521=ECKey.generate_key("P-521", parameters={"kid": "ec-521"}),
        ed25519=OKPKey.generate_key("Ed25519", parameters={"kid": "ed25519"}),
        ed448=OKPKey.generate_key("Ed448", parameters={"kid": "ed448"}),
    )


@pytest.fixture(scope="session")
def jwks(keys: SimpleNamespace) -> dict[str, Any]:
    """The provider's published JWK Set: public halves of the legitimate keys."""
    published = [keys.rsa, keys.ec256, keys.ec384, keys.ec521, keys.ed25519, keys.ed448]
    return {"keys": [key.as_dict(private=False) for key in published]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(**changes: Any) -> dict[str, Any]:
    """A valid ID token claim set, with changes (DROP removes a claim)."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": CLIENT_ID,
        "exp": NOW + 300,
        "iat": NOW,
        "nonce": NONCE,
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not DROP}


def logout_claims(**changes: Any) -> dict[str, Any]:
    """A valid logout token claim set, with changes (DROP removes a claim)."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "iat": NOW,
        "exp": NOW + 120,
        "jti": "jti-1",
        "sid": "session-1",
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not DROP}


def sign(
    payload: dict[str, Any],
    key: Key,
    alg: str = "RS256",
    *,
    kid: str | bool = True,
    **header: Any,
) -> str:
    """Sign with joserfc; ``kid``: True for the key's own, a string for another, False none."""
    protected: dict[str, Any] = {"alg": alg, **header}
    if kid is True:
        protected["kid"] = key.kid
    elif kid:
        protected["kid"] = kid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # "EdDSA" is deprecated by RFC 9864
        return jws.serialize_compact(protected, json.dumps(payload), key, algorithms=[alg])


def raw_rs256(header: dict[str, Any], payload: bytes, key: RSAKey) -> str:
    """RS256 over arbitrary header and payload bytes, with cryptography directly."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}"
    private = key.private_key
    assert isinstance(private, rsa.RSAPrivateKey)
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """HMAC-SHA256 by hand, so any bytes (even a public key) can be the secret."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def left_half(value: str, digest: str) -> str:
    """at_hash / c_hash computed independently of the module under test."""
    full = hashlib.new(digest, value.encode("ascii")).digest()
    return b64(full[: len(full) // 2])


def expect(**changes: Any) -> TokenExpectations:
    params: dict[str, Any] = {"issuer": ISSUER, "client_id": CLIENT_ID, "nonce": NONCE, "now": NOW}
    params.update(changes)
    return TokenExpectations(**params)


def rejected(
    check: str, token: str, jwks: dict[str, Any], expectations: TokenExpectations, **kwargs: Any
) -> TokenRejected:
    """Assert the ID token is rejected by ``check``; the message never echoes the token."""
    with pytest.raises(TokenRejected) as caught:
        validate_id_token(token, jwks, expectations, **kwargs)
    assert caught.value.check == check, caught.value.message
    if token:
        assert token not in str(caught.value)
    return caught.value


# --- Happy paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "key_name"),
    [
        ("RS256", "rsa"),
        ("RS384", "rsa"),
        ("RS512", "rsa"),
        ("PS256", "rsa"),
        ("PS384", "rsa"),
        ("PS512", "rsa"),
        ("ES256", "ec256"),
        ("ES384", "ec384"),
        ("ES512", "ec521"),
        ("EdDSA", "ed25519"),
        ("EdDSA", "ed448"),
        ("Ed25519", "ed25519"),
        ("Ed448", "ed448"),
    ],
)
def test_valid_token_for_each_algorithm(keys, jwks, alg, key_name):
    token = sign(claims(), getattr(keys, key_name), alg)
    result = validate_id_token(token, jwks, expect())
    assert result["sub"] == "user-1"
    assert result["nonce"] == NONCE


@pytest.mark.parametrize(("alg", "key_name"), [("RS256", "rsa"), ("ES384", "ec384")])
def test_without_kid_every_compatible_key_is_tried(keys, jwks, alg, key_name):
    token = sign(claims(), getattr(keys, key_name), alg, kid=False)
    assert validate_id_token(token, jwks, expect())["iss"] == ISSUER


def test_audience_list_with_azp_and_typ_jwt(keys, jwks):
    token = sign(claims(aud=[CLIENT_ID], azp=CLIENT_ID), keys.rsa, typ="JWT")
    assert validate_id_token(token, jwks, expect())["aud"] == [CLIENT_ID]


def test_unusable_jwks_entries_are_skipped(keys, jwks):
    messy = {"keys": ["junk", {"kty": "RSA", "n": "!!"}, {"kty": "XYZ"}, *jwks["keys"]]}
    assert validate_id_token(sign(claims(), keys.rsa), messy, expect())


# --- Header, algorithm and signature --------------------------------------------------------


def test_bad_signature(keys, jwks):
    token = sign(claims(), keys.rsa)
    head, body, signature = token.split(".")
    flipped = bytearray(base64.urlsafe_b64decode(signature + "=="))
    flipped[10] ^= 0x01
    rejected("signature", f"{head}.{body}.{b64(bytes(flipped))}", jwks, expect())


def test_tampered_payload(keys, jwks):
    head, _, signature = sign(claims(), keys.rsa).split(".")
    forged_body = b64(json.dumps(claims(sub="admin")).encode())
    rejected("signature", f"{head}.{forged_body}.{signature}", jwks, expect())


def test_token_signed_by_another_key_with_the_same_kid(keys, jwks):
    rejected("signature", sign(claims(), keys.rsa_impostor), jwks, expect())


def test_embedded_jwk_header_is_never_trusted(keys, jwks):
    attacker = keys.rsa_impostor
    token = sign(claims(), attacker, jwk=attacker.as_dict(private=False))
    rejected("signature", token, jwks, expect())


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(jwks, alg):
    header = b64(json.dumps({"alg": alg}).encode())
    body = b64(json.dumps(claims()).encode())
    rejected("alg", f"{header}.{body}.", jwks, expect())


def test_none_can_never_be_allowed():
    with pytest.raises(ValueError, match="unsupported"):
        expect(allowed_algs=frozenset({"RS256", "none"}))


def test_alg_outside_the_allow_list(keys, jwks):
    token = sign(claims(), keys.rsa, "RS512")
    rejected("alg", token, jwks, expect(allowed_algs=frozenset({"RS256"})))


def test_hs256_refused_when_not_configured(jwks):
    token = hs256({"alg": "HS256"}, claims(), CLIENT_SECRET.encode())
    rejected("alg", token, jwks, expect())


def test_hs256_with_the_client_secret_when_configured(jwks):
    configured = expect(allowed_algs=frozenset({"HS256"}), client_secret=CLIENT_SECRET)
    token = hs256({"alg": "HS256"}, claims(), CLIENT_SECRET.encode())
    assert validate_id_token(token, jwks, configured)["sub"] == "user-1"
    wrong = hs256({"alg": "HS256"}, claims(), b"some-other-secret-of-similar-length")
    rejected("signature", wrong, jwks, configured)


def test_hs256_needs_a_client_secret():
    with pytest.raises(ValueError, match="client secret"):
        expect(allowed_algs=frozenset({"RS256", "HS256"}))


@pytest.mark.parametrize("key_form", ["pem", "jwk"])
def test_hs256_signed_with_the_public_key_is_refused(keys, jwks, key_form):
    # The classic algorithm-confusion forgery: HMAC keyed with the (public) RSA key bytes.
    if key_form == "pem":
        secret = keys.rsa.as_pem(private=False)
    else:
        secret = json.dumps(jwks["keys"][0]).encode()
    token = hs256({"alg": "HS256", "kid": "rsa-1"}, claims(sub="admin"), secret)
    rejected("alg", token, jwks, expect())
    both = frozenset({"RS256", "HS256"})
    rejected("signature", token, jwks, expect(allowed_algs=both, client_secret=CLIENT_SECRET))


def test_oct_key_in_jwks_is_never_used(jwks):
    shared = b"an-oct-key-published-in-the-jwks!!"
    with_oct = {"keys": [*jwks["keys"], {"kty": "oct", "k": b64(shared), "kid": "oct-1"}]}
    token = hs256({"alg": "HS256", "kid": "oct-1"}, claims(), shared)
    both = frozenset({"RS256", "HS256"})
    rejected("signature", token, with_oct, expect(allowed_algs=both, client_secret=CLIENT_SECRET))


def test_unknown_kid(keys, jwks):
    token = sign(claims(), keys.rsa, kid="rotated-key")
    error = rejected("kid", token, jwks, expect())
    assert isinstance(error, UnknownKeyId)
    assert error.kid == "rotated-key"


def test_kid_names_an_encryption_key(keys):
    enc_jwks = {"keys": [keys.rsa.as_dict(private=False, use="enc")]}
    rejected("key", sign(claims(), keys.rsa), enc_jwks, expect())


def test_key_ops_without_verify(keys):
    jwks_ops = {"keys": [keys.rsa.as_dict(private=False, key_ops=["encrypt"])]}
    rejected("key", sign(claims(), keys.rsa), jwks_ops, expect())


def test_rs256_header_with_an_ec_key(keys, jwks):
    # kid points at the EC key: the RSA algorithm never uses it.
    token = sign(claims(), keys.rsa, kid="ec-256")
    rejected("key", token, jwks, expect())
    ec_only = {"keys": [keys.ec256.as_dict(private=False)]}
    rejected("key", sign(claims(), keys.rsa, kid=False), ec_only, expect())


def test_es256_header_with_a_p384_key(keys, jwks):
    token = sign(claims(), keys.ec256, "ES256", kid="ec-384")
    rejected("key", token, jwks, expect())


def test_key_alg_must_match_the_header(keys):
    pinned = {"keys": [keys.rsa.as_dict(private=False, alg="RS256")]}
    rejected("key", sign(claims(), keys.rsa, "PS256"), pinned, expect())


def test_rsa_keys_below_2048_bits_are_not_used():
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    pem = weak.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        key = RSAKey.import_key(pem, parameters={"kid": "weak"})
        weak_jwks = {"keys": [key.as_dict(private=False)]}
        token = sign(claims(), key)
    rejected("key", token, weak_jwks, expect())


def test_jwe_shaped_tokens(keys, jwks):
    rejected("malformed", "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d", jwks, expect())
    header = b64(json.dumps({"alg": "RS256", "enc": "A256GCM"}).encode())
    token = sign(claims(), keys.rsa)
    rejected("malformed", header + token[token.index(".") :], jwks, expect())


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "###.###.###"])
def test_not_a_compact_jws(jwks, token):
    rejected("malformed", token, jwks, expect())


def test_critical_header_extension(keys, jwks):
    header = {"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": NOW}
    token = raw_rs256(header, json.dumps(claims()).encode(), keys.rsa)
    rejected("crit", token, jwks, expect())


def test_unencoded_payload_header(keys, jwks):
    header = {"alg": "RS256", "kid": "rsa-1", "b64": False}
    token = raw_rs256(header, json.dumps(claims()).encode(), keys.rsa)
    rejected("malformed", token, jwks, expect())


def test_duplicate_claims(keys, jwks):
    payload = json.dumps(claims())[:-1] + ', "sub": "admin"}'
    token = raw_rs256({"alg": "RS256", "kid": "rsa-1"}, payload.encode(), keys.rsa)
    rejected("malformed", token, jwks, expect())


def test_payload_must_be_a_json_object(keys, jwks):
    token = raw_rs256({"alg": "RS256", "kid": "rsa-1"}, b"[1, 2]", keys.rsa)
    rejected("malformed", token, jwks, expect())


def test_padded_base64(keys, jwks):
    head, body, signature = sign(claims(), keys.rsa).split(".")
    rejected("malformed", f"{head}.{body}.{signature}==", jwks, expect())


def test_logout_token_is_not_an_id_token(keys, jwks):
    rejected("typ", sign(claims(), keys.rsa, typ="logout+jwt"), jwks, expect())


# --- Claims ---------------------------------------------------------------------------------


@pytest.mark.parametrize("iss", ["https://evil.example.com", ISSUER + "/", DROP, 42])
def test_wrong_iss(keys, jwks, iss):
    rejected("iss", sign(claims(iss=iss), keys.rsa), jwks, expect())


@pytest.mark.parametrize("aud", ["someone-else", ["someone-else"], [], DROP, 7, [CLIENT_ID, 7]])
def test_wrong_aud(keys, jwks, aud):
    rejected("aud", sign(claims(aud=aud), keys.rsa), jwks, expect())


def test_untrusted_extra_audience(keys, jwks):
    token = sign(claims(aud=[CLIENT_ID, "other-api"], azp=CLIENT_ID), keys.rsa)
    rejected("aud", token, jwks, expect())
    trusting = expect(trusted_audiences=frozenset({"other-api"}))
    assert validate_id_token(token, jwks, trusting)["azp"] == CLIENT_ID


def test_multiple_audiences_without_azp(keys, jwks):
    token = sign(claims(aud=[CLIENT_ID, "other-api"]), keys.rsa)
    rejected("azp", token, jwks, expect(trusted_audiences=frozenset({"other-api"})))


def test_azp_mismatch(keys, jwks):
    rejected("azp", sign(claims(azp="other-client"), keys.rsa), jwks, expect())


def test_exp_within_skew_accepted_beyond_rejected(keys, jwks):
    assert validate_id_token(sign(claims(exp=NOW - 100), keys.rsa), jwks, expect())
    rejected("exp", sign(claims(exp=NOW - 121), keys.rsa), jwks, expect())
    rejected("exp", sign(claims(exp=NOW - 1), keys.rsa), jwks, expect(clock_skew=0))


@pytest.mark.parametrize("exp", [DROP, "1750000300", True, None])
def test_exp_missing_or_not_a_number(keys, jwks, exp):
    rejected("exp", sign(claims(exp=exp), keys.rsa), jwks, expect())


def test_exp_overflowing_to_infinity(keys, jwks):
    payload = json.dumps(claims(exp=0)).replace('"exp": 0', '"exp": 1e400')
    token = raw_rs256({"alg": "RS256", "kid": "rsa-1"}, payload.encode(), keys.rsa)
    rejected("exp", token, jwks, expect())


def test_iat_in_the_future(keys, jwks):
    assert validate_id_token(sign(claims(iat=NOW + 100), keys.rsa), jwks, expect())
    rejected("iat", sign(claims(iat=NOW + 121), keys.rsa), jwks, expect())
    rejected("iat", sign(claims(iat=10**400), keys.rsa), jwks, expect())
    rejected("iat", sign(claims(iat=DROP), keys.rsa), jwks, expect())


def test_nbf_in_the_future(keys, jwks):
    assert validate_id_token(sign(claims(nbf=NOW + 60), keys.rsa), jwks, expect())
    rejected("nbf", sign(claims(nbf=NOW + 600), keys.rsa), jwks, expect())


@pytest.mark.parametrize("sub", [DROP, "", 12345, "x" * 256, None])
def test_bad_sub(keys, jwks, sub):
    rejected("sub", sign(claims(sub=sub), keys.rsa), jwks, expect())


def test_sub_of_255_characters_is_fine(keys, jwks):
    assert validate_id_token(sign(claims(sub="x" * 255), keys.rsa), jwks, expect())


def test_nonce_missing_when_expected(keys, jwks):
    rejected("nonce", sign(claims(nonce=DROP), keys.rsa), jwks, expect())


def test_nonce_mismatch(keys, jwks):
    rejected("nonce", sign(claims(nonce="another-nonce"), keys.rsa), jwks, expect())
    rejected("nonce", sign(claims(nonce=["n"]), keys.rsa), jwks, expect())


def test_nonce_present_when_none_was_sent(keys, jwks):
    rejected("nonce", sign(claims(), keys.rsa), jwks, expect(nonce=None))
    assert validate_id_token(sign(claims(nonce=DROP), keys.rsa), jwks, expect(nonce=None))


def test_max_age_requires_a_recent_auth_time(keys, jwks):
    fresh = expect(max_age=300)
    assert validate_id_token(sign(claims(auth_time=NOW - 200), keys.rsa), jwks, fresh)
    rejected("auth_time", sign(claims(auth_time=NOW - 3600), keys.rsa), jwks, fresh)
    rejected("auth_time", sign(claims(), keys.rsa), jwks, fresh)


# --- at_hash and c_hash ---------------------------------------------------------------------

ACCESS_TOKEN = "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"
CODE = "Qcb0Orv1zh30vL1MPRsbm-diHiMwcLyZvn1arpZv-Jxf_11jnpEX3Tgfvk"


@pytest.mark.parametrize(
    ("alg", "key_name", "digest"),
    [("RS256", "rsa", "sha256"), ("ES384", "ec384", "sha384"), ("EdDSA", "ed25519", "sha512")],
)
def test_at_hash_and_c_hash(keys, jwks, alg, key_name, digest):
    key = getattr(keys, key_name)
    good = claims(at_hash=left_half(ACCESS_TOKEN, digest), c_hash=left_half(CODE, digest))
    token = sign(good, key, alg)
    result = validate_id_token(
        token, jwks, expect(), access_token=ACCESS_TOKEN, code=CODE, require_at_hash=True
    )
    assert result["c_hash"] == good["c_hash"]

    bad_at = sign(claims(at_hash=left_half("another-token", digest)), key, alg)
    rejected("at_hash", bad_at, jwks, expect(), access_token=ACCESS_TOKEN)
    bad_c = sign(claims(c_hash=left_half("another-code", digest)), key, alg)
    rejected("c_hash", bad_c, jwks, expect(), code=CODE)


def test_hash_of_the_wrong_size_is_refused(keys, jwks):
    # ES384 uses SHA-384: a SHA-256 half (as if the alg were ignored) must not pass.
    token = sign(claims(c_hash=left_half(CODE, "sha256")), keys.ec384, "ES384")
    rejected("c_hash", token, jwks, expect(), code=CODE)


def test_ed448_hashes_with_shake256(keys, jwks):
    digest = hashlib.shake_256(CODE.encode()).digest(114)
    token = sign(claims(c_hash=b64(digest[:57])), keys.ed448, "EdDSA")
    assert validate_id_token(token, jwks, expect(), code=CODE)


def test_c_hash_required_with_a_code(keys, jwks):
    rejected("c_hash", sign(claims(), keys.rsa), jwks, expect(), code=CODE)


def test_at_hash_optional_unless_required(keys, jwks):
    token = sign(claims(), keys.rsa)
    assert validate_id_token(token, jwks, expect(), access_token=ACCESS_TOKEN)
    rejected("at_hash", token, jwks, expect(), access_token=ACCESS_TOKEN, require_at_hash=True)


# --- Microsoft multi-tenant issuer ----------------------------------------------------------


def ms_iss(tenant: str) -> str:
    return MS_TEMPLATE.replace("{tenantid}", tenant)


def test_tenant_issuer_with_matching_tid(keys):
    # Entra ID's JWKS entries carry extra members (x5t, x5c, issuer): they must not matter.
    entry = keys.rsa.as_dict(private=False, use="sig", x5t="abc", x5c=["MIIC"], issuer=MS_TEMPLATE)
    token = sign(claims(iss=ms_iss(TENANT_A), tid=TENANT_A), keys.rsa, x5t="abc", typ="JWT")
    result = validate_id_token(token, {"keys": [entry]}, expect(issuer=MS_TEMPLATE))
    assert result["tid"] == TENANT_A


@pytest.mark.parametrize(
    "changes",
    [
        {"iss": ms_iss(TENANT_A), "tid": TENANT_B},
        {"iss": ms_iss(TENANT_A), "tid": DROP},
        {"iss": ms_iss("common"), "tid": "common"},
        {"iss": MS_TEMPLATE, "tid": DROP},
        {"iss": MS_TEMPLATE, "tid": "{tenantid}"},
        {"iss": MS_TEMPLATE, "tid": TENANT_A},
    ],
)
def test_tenant_issuer_rejections(keys, jwks, changes):
    rejected("iss", sign(claims(**changes), keys.rsa), jwks, expect(issuer=MS_TEMPLATE))


# --- RFC 9207 iss parameter -----------------------------------------------------------------


def test_iss_parameter():
    check_authorization_response_issuer(ISSUER, ISSUER, required=True)
    check_authorization_response_issuer(None, ISSUER, required=False)
    for wrong in ("https://evil.example.com", ISSUER + "/", ""):
        with pytest.raises(TokenRejected) as caught:
            check_authorization_response_issuer(wrong, ISSUER, required=False)
        assert caught.value.check == "iss"


def test_iss_parameter_missing_when_required():
    with pytest.raises(TokenRejected) as caught:
        check_authorization_response_issuer(None, ISSUER, required=True)
    assert caught.value.check == "iss"


def test_iss_parameter_with_a_tenant_template():
    check_authorization_response_issuer(ms_iss(TENANT_A), MS_TEMPLATE, required=True)
    wrong = [
        ms_iss("common"),
        MS_TEMPLATE,
        "https://evil.example.com/" + TENANT_A + "/v2.0",
        ms_iss(TENANT_A) + "/extra",
    ]
    for value in wrong:
        with pytest.raises(TokenRejected):
            check_authorization_response_issuer(value, MS_TEMPLATE, required=True)


# --- Logout tokens --------------------------------------------------------------------------


def logout_rejected(check: str, token: str, jwks: dict[str, Any]) -> None:
    with pytest.raises(TokenRejected) as caught:
        validate_logout_token(token, jwks, expect(nonce=None))
    assert caught.value.check == check, caught.value.message


def test_logout_token_with_sid(keys, jwks):
    token = sign(logout_claims(), keys.rsa, typ="logout+jwt")
    result = validate_logout_token(token, jwks, expect(nonce=None))
    assert result == LogoutClaims(iss=ISSUER, sub=None, sid="session-1", jti="jti-1", iat=NOW)


def test_logout_token_with_sub(keys, jwks):
    token = sign(logout_claims(sid=DROP, sub="user-1", exp=DROP), keys.ec256, "ES256")
    result = validate_logout_token(token, jwks, expect(nonce=None))
    assert (result.sub, result.sid) == ("user-1", None)


@pytest.mark.parametrize("typ", ["JWT", "application/logout+jwt"])
def test_logout_token_accepted_types(keys, jwks, typ):
    assert validate_logout_token(sign(logout_claims(), keys.rsa, typ=typ), jwks, expect())


@pytest.mark.parametrize("events", [DROP, {}, {"http://example.com/other-event": {}}, "logout"])
def test_logout_token_missing_event(keys, jwks, events):
    logout_rejected("events", sign(logout_claims(events=events), keys.rsa), jwks)


@pytest.mark.parametrize("value", [True, [], "yes", None])
def test_logout_token_event_value_not_an_object(keys, jwks, value):
    token = sign(logout_claims(events={BACKCHANNEL_LOGOUT_EVENT: value}), keys.rsa)
    logout_rejected("events", token, jwks)


def test_logout_token_with_nonce(keys, jwks):
    logout_rejected("nonce", sign(logout_claims(nonce=NONCE), keys.rsa), jwks)


def test_id_token_is_not_a_logout_token(keys, jwks):
    logout_rejected("nonce", sign(claims(), keys.rsa), jwks)
    logout_rejected("events", sign(claims(nonce=DROP, jti="j"), keys.rsa), jwks)


@pytest.mark.parametrize("jti", [DROP, "", 5])
def test_logout_token_without_jti(keys, jwks, jti):
    logout_rejected("jti", sign(logout_claims(jti=jti), keys.rsa), jwks)


def test_logout_token_without_sub_or_sid(keys, jwks):
    logout_rejected("sid", sign(logout_claims(sid=DROP), keys.rsa), jwks)
    logout_rejected("sid", sign(logout_claims(sid=""), keys.rsa), jwks)


def test_logout_token_too_old(keys, jwks):
    old = logout_claims(iat=NOW - 600 - 121, exp=DROP)
    logout_rejected("iat", sign(old, keys.rsa), jwks)
    recent = logout_claims(iat=NOW - 600, exp=DROP)
    assert validate_logout_token(sign(recent, keys.rsa), jwks, expect())


def test_logout_token_time_claims(keys, jwks):
    logout_rejected("iat", sign(logout_claims(iat=NOW + 300), keys.rsa), jwks)
    logout_rejected("iat", sign(logout_claims(iat=DROP), keys.rsa), jwks)
    logout_rejected("exp", sign(logout_claims(iat=NOW - 400, exp=NOW - 300), keys.rsa), jwks)


@pytest.mark.parametrize("typ", ["at+jwt", "secevent+jwt", "JOSE"])
def test_logout_token_wrong_typ(keys, jwks, typ):
    logout_rejected("typ", sign(logout_claims(), keys.rsa, typ=typ), jwks)


def test_logout_token_issuer_audience_and_signature(keys, jwks):
    logout_rejected("iss", sign(logout_claims(iss="https://evil.example.com"), keys.rsa), jwks)
    logout_rejected("aud", sign(logout_claims(aud="other"), keys.rsa), jwks)
    logout_rejected("signature", sign(logout_claims(), keys.rsa_impostor), jwks)
    logout_rejected("alg", hs256({"alg": "HS256"}, logout_claims(), b"x" * 32), jwks)
