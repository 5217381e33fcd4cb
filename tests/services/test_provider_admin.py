"""services.providers for self-service management: per-field validation, the discovery check,
update (secret lock, audit), scheme renames and their aliases, show/hide, and delete."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import pytest
from sqlalchemy import func
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent
from app.models import ExternalLogin
from app.models import ProviderMetadata
from app.models import ProviderRoleMapping
from app.models import ProviderSchemeAlias
from app.models import ScimToken
from app.models import SsoProvider
from app.models.base import utcnow
from app.services import accounts
from app.services import providers
from app.services import users
from app.services.errors import ValidationError
from app.services.providers import ProviderFields
from tests.conftest import base_config
from tests.helpers import serving

UNREACHABLE = "http://127.0.0.1:9"  # allowed by the outbound policy; nothing listens there
SECRET = "s3cr3t-value-1"
OTHER_SECRET = "an0ther-s3cr3t-2"


# --- a tiny identity provider: serves discovery documents from 127.0.0.1 -------------------------
class _IdP(ThreadingHTTPServer):
    # Join handler threads on close (filterwarnings=error turns a late ResourceWarning into
    # a failure of some other test).
    daemon_threads = False
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[str] = []
        self.status = 200
        self.body: bytes | None = None  # None: a good discovery document

    @property
    def authority(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def discovery(self, **changes) -> dict:
        base = self.authority
        document = {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks",
        }
        document.update(changes)
        return {k: v for k, v in document.items() if v is not None}

    def serve(self, document: dict | None = None, *, status: int = 200, raw: bytes | None = None):
        self.status = status
        self.body = raw if raw is not None else json.dumps(document or self.discovery()).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _IdP

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.path != "/.well-known/openid-configuration":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.server.body if self.server.body is not None else b""
        if self.server.body is None:
            body = json.dumps(self.server.discovery()).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def idp() -> Iterator[_IdP]:
    with serving(_IdP()) as server:
        yield server


@pytest.fixture
def config(database_url, idp):
    port = idp.server_address[1]
    return base_config(database_url, OUTBOUND_ALLOW_PRIVATE=f"127.0.0.1:{port},127.0.0.1:9")


@pytest.fixture
def ctx(app) -> Iterator[None]:
    with app.app_context():
        yield


@pytest.fixture
def account(ctx):
    account = accounts.create_account("Acme", "acme")
    db.session.flush()
    return account


def fields(**changes) -> ProviderFields:
    base = ProviderFields(
        display_name="Acme SSO",
        scheme="AcmeSSO",
        authority=UNREACHABLE,
        client_id="keyward",
        client_secret=SECRET,
    )
    return replace(base, **changes)


def make(account, **changes) -> SsoProvider:
    return providers.create_provider(fields(**changes), account=account)


def provider_count() -> int:
    return db.session.scalar(select(func.count()).select_from(SsoProvider))


def audit_details(action: str) -> list[dict]:
    return list(
        db.session.scalars(
            select(AuditEvent.details).where(AuditEvent.action == action).order_by(AuditEvent.id)
        )
    )


def invalid(call) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        call()
    return caught.value


# --- validation: every field, every message, all at once ----------------------------------------
OAUTH2 = {
    "protocol": "oauth2",
    "authority": None,
    "authorization_endpoint": f"{UNREACHABLE}/authorize",
    "token_endpoint": f"{UNREACHABLE}/token",
    "userinfo_endpoint": f"{UNREACHABLE}/userinfo",
}


@pytest.mark.parametrize(
    "changes,field,fragment",
    [
        ({"protocol": "ldap"}, "protocol", "Protocol must be oidc, oauth2 or saml."),
        ({"protocol": "saml"}, "saml_metadata_xml", "Paste the identity provider's metadata"),
        ({"display_name": "  "}, "display_name", "Display name is required."),
        ({"display_name": "x" * 101}, "display_name", "at most 100 characters"),
        ({"scheme": ""}, "scheme", "must not be empty"),
        ({"scheme": "1bad"}, "scheme", "must start with a letter"),
        ({"scheme": "has space"}, "scheme", "must start with a letter"),
        ({"scheme": "dot.ted"}, "scheme", "letters, digits, underscores and hyphens"),
        ({"scheme": "a" * 65}, "scheme", "at most 64 characters"),
        ({"scheme": "Google"}, "scheme", "'Google' is reserved"),
        ({"scheme": "SAML"}, "scheme", "is reserved"),
        ({"authority": None}, "authority", "Authority URL is required."),
        ({"authority": "http://idp.example.com"}, "authority", "only https URLs are allowed"),
        ({"authority": "https://10.0.0.5"}, "authority", "10.0.0.5 is not a public address"),
        ({"authority": "https://user:pw@idp.example.com"}, "authority", "user name or password"),
        ({"client_id": ""}, "client_id", "Client ID is required."),
        ({"client_id": "c" * 256}, "client_id", "at most 255 characters"),
        ({"response_type": "token"}, "response_type", "one of: code, id_token, code id_token"),
        ({"icon_url": "javascript:alert(1)"}, "icon_url", "Icon URL must be an http(s) URL"),
        ({"icon_url": "ftp://icons.example.com/a.png"}, "icon_url", "http(s) URL"),
        ({"default_role": "root"}, "default_role", "Default role must be owner, admin or member."),
        ({"authorization_expression": "email.endsWith("}, "authorization_expression", "Line 1,"),
        ({"authorization_expression": "nope(1)"}, "authorization_expression", "column 1:"),
        ({"allow_hs256": True, "client_secret": None}, "allow_hs256", "need a client secret"),
        ({"additional_scopes": "s" * 1025}, "additional_scopes", "at most 1024 characters"),
        ({"remote_signout_path": "/" * 256}, "remote_signout_path", "at most 255 characters"),
        ({"external_id_claim": "c" * 101}, "external_id_claim", "at most 100 characters"),
        ({"role_claim": "c" * 101}, "role_claim", "Role claim must be at most 100"),
        (
            {"role_claim": None, "role_mappings": (("Admins", "admin"),)},
            "role_claim",
            "Role claim is required for role mappings",
        ),
        (
            {"role_claim": "groups", "role_mapping_default": "boss"},
            "role_mapping_default",
            "must be owner, admin or member",
        ),
        (
            {"role_claim": "groups", "role_mappings": (("  ", "admin"),)},
            "role_mappings[0]",
            "Role mapping 1: the claim value must not be empty.",
        ),
        (
            {"role_claim": "groups", "role_mappings": (("Admins", "admin"), ("Admins", "member"))},
            "role_mappings[1]",
            "the claim value 'Admins' is already mapped (mapping 1)",
        ),
        (
            {"role_claim": "groups", "role_mappings": (("Admins", "boss"),)},
            "role_mappings[0]",
            "Role mapping 1 ('Admins') must be owner, admin or member, not 'boss'.",
        ),
        (
            {"role_claim": "groups", "role_mappings": (("x" * 256, "admin"),)},
            "role_mappings[0]",
            "longer than 255 characters",
        ),
        (
            {
                "role_claim": "groups",
                "role_mappings": tuple((f"g{i}", "member") for i in range(101)),
            },
            "role_mappings",
            "At most 100 role mappings.",
        ),
        ({**OAUTH2, "authorization_endpoint": None}, "authorization_endpoint", "is required"),
        ({**OAUTH2, "token_endpoint": "http://idp.example.com/t"}, "token_endpoint", "https"),
        ({**OAUTH2, "userinfo_endpoint": "https://127.0.0.1/u"}, "userinfo_endpoint", "public"),
        ({**OAUTH2, "response_type": "id_token"}, "response_type", "use the code response type"),
    ],
)
def test_each_bad_field_gets_its_message_and_nothing_is_saved(account, changes, field, fragment):
    error = invalid(lambda: make(account, **changes))
    assert field in error.errors, error.errors
    assert fragment in error.errors[field]
    assert list(error.errors) == [field], error.errors  # the other fields are fine
    assert (error.field, error.message) == (field, error.errors[field])
    assert provider_count() == 0
    assert audit_details("provider.created") == []


def test_every_bad_field_is_reported_at_once(account):
    error = invalid(
        lambda: make(
            account,
            display_name="",
            scheme="9lives",
            authority="ftp://idp.example.com",
            client_id="",
            response_type="token",
            icon_url="data:image/png;base64,AAAA",
            default_role="root",
            authorization_expression="a ==",
            role_claim="groups",
            role_mapping_default="boss",
            role_mappings=(("", "admin"), ("Admins", "king")),
        )
    )
    assert set(error.errors) == {
        "display_name",
        "scheme",
        "authority",
        "client_id",
        "response_type",
        "icon_url",
        "default_role",
        "authorization_expression",
        "role_mapping_default",
        "role_mappings[0]",
        "role_mappings[1]",
    }
    # field/message stay the first error, for callers that show only one.
    assert error.field == "display_name" and error.message == "Display name is required."
    assert str(error) == error.message
    assert provider_count() == 0


def test_cel_errors_give_line_and_column_with_a_caret(account):
    error = invalid(lambda: make(account, authorization_expression='email.endsWith("@acme.com"'))
    message = error.errors["authorization_expression"]
    assert message.startswith("Line 1, column 16: unexpected end of expression.")
    assert message.splitlines()[-1].endswith("^")


def test_scheme_is_unique_ignoring_case_and_checked_against_other_providers_only(account):
    first = make(account)
    error = invalid(lambda: make(account, scheme="acmesso", display_name="Other"))
    assert error.errors == {
        "scheme": "Authentication scheme 'acmesso' is already in use (schemes ignore case)."
    }
    # Saving the provider itself (same scheme, new case) is fine.
    providers.update_provider(first, fields(scheme="ACMESSO"))
    assert first.scheme == "ACMESSO"


def test_validation_error_keeps_the_old_single_field_shape():
    error = ValidationError("Bad.", "scheme")
    assert (error.message, error.field, error.errors) == ("Bad.", "scheme", {"scheme": "Bad."})
    assert ValidationError("No field.").errors == {}


# --- the discovery check ------------------------------------------------------------------------
def test_discovery_check_loads_the_document_and_saves(account, idp):
    provider = providers.create_provider(
        fields(authority=idp.authority), account=account, check_discovery=True
    )
    assert idp.requests == ["/.well-known/openid-configuration"]
    assert provider.authority == idp.authority
    # Only checked: ProviderMetadata is the refresh's to write.
    assert db.session.get(ProviderMetadata, provider.id) is None


def test_without_discovery_check_nothing_is_fetched(account, idp):
    providers.create_provider(fields(authority=idp.authority), account=account)
    providers.create_provider(
        fields(scheme="Plain", **OAUTH2), account=account, check_discovery=True
    )
    assert idp.requests == []


def test_discovery_issuer_must_be_the_authority(account, idp):
    idp.serve(idp.discovery(issuer="https://evil.example.com"))
    error = invalid(
        lambda: providers.create_provider(
            fields(authority=idp.authority), account=account, check_discovery=True
        )
    )
    url = f"{idp.authority}/.well-known/openid-configuration"
    assert error.errors == {
        "authority": f"The discovery document at {url} names issuer https://evil.example.com, "
        f"not the authority {idp.authority}."
    }
    assert provider_count() == 0


def test_discovery_issuer_may_differ_by_a_trailing_slash(account, idp):
    idp.serve(idp.discovery(issuer=idp.authority + "/"))
    providers.create_provider(
        fields(authority=idp.authority), account=account, check_discovery=True
    )
    assert provider_count() == 1


@pytest.mark.parametrize(
    "serve,fragment",
    [
        ({"status": 404}, "could not be loaded: HTTP 404."),
        ({"status": 500}, "could not be loaded: HTTP 500."),
        ({"raw": b"<html>"}, "could not be loaded: 127.0.0.1 did not return valid JSON."),
        ({"raw": b"[1, 2]"}, "is not a JSON object."),
        ({"raw": b'{"jwks_uri": "x"}'}, "has no issuer."),
        ({"drop": "jwks_uri"}, "has no jwks_uri."),
        ({"drop": "token_endpoint"}, "has no token_endpoint."),
    ],
)
def test_bad_discovery_documents_are_refused(account, idp, serve, fragment):
    if "drop" in serve:
        idp.serve(idp.discovery(**{serve["drop"]: None}))
    else:
        idp.serve(raw=serve.get("raw", b"{}"), status=serve.get("status", 200))
    error = invalid(
        lambda: providers.create_provider(
            fields(authority=idp.authority), account=account, check_discovery=True
        )
    )
    url = f"{idp.authority}/.well-known/openid-configuration"
    assert error.errors["authority"].startswith(f"The discovery document at {url} ")
    assert error.errors["authority"].endswith(fragment)
    assert provider_count() == 0


def test_unreachable_authority_is_refused(account):
    error = invalid(
        lambda: providers.create_provider(fields(), account=account, check_discovery=True)
    )
    assert error.errors == {
        "authority": f"The discovery document at {UNREACHABLE}/.well-known/openid-configuration "
        "could not be loaded: could not connect to 127.0.0.1."
    }


def test_discovery_is_not_fetched_when_the_authority_is_already_invalid(account, idp):
    error = invalid(
        lambda: providers.create_provider(
            fields(authority="https://10.1.2.3", scheme="bad scheme"),
            account=account,
            check_discovery=True,
        )
    )
    assert set(error.errors) == {"authority", "scheme"}
    assert "not a public address" in error.errors["authority"]


def test_update_checks_discovery_only_when_the_authority_changes(account, idp):
    provider = make(account)  # UNREACHABLE, saved without the check
    providers.update_provider(provider, fields(display_name="Renamed"), check_discovery=True)
    assert provider.display_name == "Renamed"
    idp.serve(idp.discovery(issuer="https://elsewhere.example.com"))
    error = invalid(
        lambda: providers.update_provider(
            provider, fields(authority=idp.authority), check_discovery=True
        )
    )
    assert "names issuer https://elsewhere.example.com" in error.errors["authority"]
    assert provider.authority == UNREACHABLE
    idp.serve()
    providers.update_provider(provider, fields(authority=idp.authority), check_discovery=True)
    assert provider.authority == idp.authority


# --- update ---------------------------------------------------------------------------------------
def test_update_records_one_event_with_before_and_after_and_bumps_version(account):
    provider = make(account)
    version = provider.version
    changes = providers.update_provider(
        provider, fields(display_name="Acme Login", jit_provisioning=True, default_role="admin")
    )
    assert changes == {
        "display_name": {"before": "Acme SSO", "after": "Acme Login"},
        "jit_provisioning": {"before": False, "after": True},
        "default_role": {"before": "member", "after": "admin"},
    }
    assert provider.version == version + 1
    assert audit_details("provider.updated") == [{"changes": changes}]


def test_update_without_changes_records_nothing(account):
    provider = make(account)
    version = provider.version
    assert providers.update_provider(provider, fields()) == {}
    assert provider.version == version
    assert audit_details("provider.updated") == []


@pytest.mark.parametrize("kept", [None, ""])
def test_an_empty_secret_keeps_the_stored_one(account, kept):
    provider = make(account)
    stored = provider.client_secret_encrypted
    changes = providers.update_provider(provider, fields(client_secret=kept, display_name="New"))
    assert "client_secret" not in changes
    assert provider.client_secret_encrypted == stored
    assert providers.client_secret(provider) == SECRET


def test_a_new_secret_replaces_the_stored_one_and_is_never_audited(account):
    provider = make(account)
    changes = providers.update_provider(provider, fields(client_secret=OTHER_SECRET))
    assert changes == {"client_secret": "replaced"}
    assert providers.client_secret(provider) == OTHER_SECRET
    assert OTHER_SECRET not in provider.client_secret_encrypted
    db.session.flush()
    trail = json.dumps([event.details for event in db.session.scalars(select(AuditEvent))])
    assert SECRET not in trail and OTHER_SECRET not in trail
    assert provider.client_secret_encrypted not in trail
    assert audit_details("provider.updated") == [{"changes": {"client_secret": "replaced"}}]


def test_the_same_secret_again_is_no_change(account):
    provider = make(account)
    assert providers.update_provider(provider, fields(client_secret=SECRET)) == {}


def test_hs256_may_rely_on_the_stored_secret(account):
    provider = make(account)
    providers.update_provider(provider, fields(client_secret=None, allow_hs256=True))
    assert provider.allow_hs256 is True
    bare = make(account, scheme="Bare", client_secret=None)
    error = invalid(
        lambda: providers.update_provider(
            bare, fields(scheme="Bare", allow_hs256=True, client_secret=None)
        )
    )
    assert list(error.errors) == ["allow_hs256"]


def test_update_validates_everything_and_changes_nothing_on_error(account):
    provider = make(account)
    other = make(account, scheme="Other")
    error = invalid(
        lambda: providers.update_provider(
            provider, fields(scheme="other", display_name="", client_secret=OTHER_SECRET)
        )
    )
    assert set(error.errors) == {"scheme", "display_name"}
    assert "already in use" in error.errors["scheme"]
    assert (provider.scheme, provider.display_name) == ("AcmeSSO", "Acme SSO")
    assert providers.client_secret(provider) == SECRET
    assert other.scheme == "Other"
    assert audit_details("provider.updated") == []


def test_builtin_providers_are_not_edited_here(ctx):
    google = providers.create_provider(
        providers.builtin_fields(
            "google", client_id="g", client_secret=None, authority=UNREACHABLE
        ),
        account=None,
        builtin="google",
    )
    error = invalid(lambda: providers.update_provider(google, fields(scheme="google")))
    assert "configured from the environment" in error.message
    assert google.display_name == "Google"


def test_update_replaces_role_mappings(account):
    provider = make(
        account,
        role_claim="groups",
        role_mapping_default="member",
        role_mappings=(("Admins", "admin"), ("Staff", "member")),
    )
    db.session.flush()
    changes = providers.update_provider(
        provider,
        fields(
            role_claim="groups",
            role_mapping_default="member",
            # "Admins" stays (with another role), "Staff" goes, "Owners" comes.
            role_mappings=(("Admins", "member"), ("Owners", "owner")),
        ),
    )
    db.session.flush()
    assert changes == {
        "role_mappings": {
            "before": [["Admins", "admin"], ["Staff", "member"]],
            "after": [["Admins", "member"], ["Owners", "owner"]],
        }
    }
    db.session.expire(provider)
    assert [(m.claim_value, m.role) for m in provider.role_mappings] == [
        ("Admins", "member"),
        ("Owners", "owner"),
    ]
    # The same rows in another order change nothing (the strongest matching role wins).
    reordered = fields(
        role_claim="groups",
        role_mapping_default="member",
        role_mappings=(("Owners", "owner"), ("Admins", "member")),
    )
    assert providers.update_provider(provider, reordered) == {}
    serialised = providers.serialise(provider)
    assert serialised["role_claim"] == "groups"
    assert serialised["role_mapping_default"] == "member"
    assert serialised["role_mappings"] == [
        {"value": "Admins", "role": "member"},
        {"value": "Owners", "role": "owner"},
    ]


# --- scheme renames -------------------------------------------------------------------------------
def _with_logins(account, provider, count: int = 2) -> list[ExternalLogin]:
    logins = []
    for number in range(count):
        user = users.create_user(f"user{number}@example.com", None)
        login = ExternalLogin(user=user, provider=provider, subject=f"sub-{number}")
        db.session.add(login)
        logins.append(login)
    db.session.flush()
    return logins


def test_rename_keeps_every_login_and_the_old_callbacks_for_the_grace_period(app, account):
    app.config["PROVIDER_SCHEME_ALIAS_DAYS"] = 7
    provider = make(account)
    _with_logins(account, provider, 3)
    before = utcnow()
    changes = providers.update_provider(provider, fields(scheme="AcmeLogin"))
    db.session.flush()

    assert changes == {"scheme": {"before": "AcmeSSO", "after": "AcmeLogin"}}
    # Logins reference the provider's id, so every one of them follows the rename.
    assert db.session.scalars(select(ExternalLogin.provider_id)).all() == [provider.id] * 3
    (alias,) = providers.live_aliases(provider)
    assert (alias.scheme, alias.scheme_key) == ("AcmeSSO", "acmesso")
    assert before + timedelta(days=7) <= alias.expires_at <= utcnow() + timedelta(days=7)
    (details,) = audit_details("provider.updated")
    assert details["changes"] == changes
    assert details["scheme_alias"] == {
        "scheme": "AcmeSSO",
        "expires_at": alias.expires_at.isoformat(),
        "removed": None,
    }

    assert providers.resolve_callback_scheme("AcmeLogin") == (provider, None)
    assert providers.resolve_callback_scheme("acmesso") == (provider, alias)
    assert providers.find_by_scheme("AcmeSSO") is None
    just_before = alias.expires_at - timedelta(seconds=1)
    assert providers.resolve_callback_scheme("AcmeSSO", now=just_before) == (provider, alias)
    assert providers.resolve_callback_scheme("AcmeSSO", now=alias.expires_at) is None
    assert providers.resolve_callback_scheme("Unknown") is None

    assert providers.callback_urls(provider)["signin"] == "http://localhost/signin-AcmeLogin"
    assert providers.alias_callback_urls(alias) == {
        "signin": "http://localhost/signin-AcmeSSO",
        "signout_callback": "http://localhost/signout-callback-AcmeSSO",
        "signout": "http://localhost/signout-AcmeSSO",
        "backchannel_logout": "http://localhost/backchannel-logout-AcmeSSO",
    }
    assert providers.serialise(provider)["aliases"] == [
        {"scheme": "AcmeSSO", "expires_at": alias.expires_at.isoformat()}
    ]


def test_an_expired_alias_no_longer_resolves_and_is_purged(account):
    provider = make(account)
    providers.update_provider(provider, fields(scheme="AcmeLogin"))
    db.session.flush()
    (alias,) = providers.live_aliases(provider)
    alias.expires_at = utcnow() - timedelta(seconds=1)
    db.session.flush()
    assert providers.resolve_callback_scheme("AcmeSSO") is None
    assert providers.live_aliases(provider) == []
    assert providers.serialise(provider)["aliases"] == []
    assert providers.purge_expired_aliases() == 1
    assert db.session.scalar(select(func.count()).select_from(ProviderSchemeAlias)) == 0


def test_renaming_back_removes_the_alias(account):
    provider = make(account)
    providers.update_provider(provider, fields(scheme="AcmeLogin"))
    db.session.flush()
    providers.update_provider(provider, fields(scheme="acmeSSO"))
    db.session.flush()
    # The current scheme resolves by itself; the name used in between is the alias now.
    assert [a.scheme for a in providers.live_aliases(provider)] == ["AcmeLogin"]
    assert providers.resolve_callback_scheme("AcmeSSO") == (provider, None)
    assert audit_details("provider.updated")[-1]["scheme_alias"]["removed"] == "AcmeSSO"


def test_a_case_only_rename_needs_no_alias(account):
    provider = make(account)
    providers.update_provider(provider, fields(scheme="ACMESSO"))
    db.session.flush()
    assert providers.live_aliases(provider) == []
    assert "scheme_alias" not in audit_details("provider.updated")[0]


def test_another_provider_cannot_take_a_live_alias(account):
    provider = make(account)
    providers.update_provider(provider, fields(scheme="AcmeLogin"))
    db.session.flush()
    error = invalid(lambda: make(account, scheme="acmesso", display_name="Squatter"))
    assert "was recently renamed on another provider" in error.errors["scheme"]
    other = make(account, scheme="Other")
    error = invalid(lambda: providers.update_provider(other, fields(scheme="AcmeSSO")))
    assert "old callback URLs keep working until" in error.errors["scheme"]
    assert other.scheme == "Other"
    with pytest.raises(ValidationError):
        providers.validate_scheme("ACMESSO")


def test_an_expired_alias_frees_the_scheme_even_before_it_is_purged(account):
    provider = make(account)
    providers.update_provider(provider, fields(scheme="AcmeLogin"))
    db.session.flush()
    (alias,) = providers.live_aliases(provider)
    alias.expires_at = utcnow() - timedelta(days=1)
    db.session.flush()
    other = make(account, scheme="AcmeSSO", display_name="Newcomer")
    assert providers.resolve_callback_scheme("acmesso") == (other, None)
    # Renaming the newcomer away makes a fresh alias with the key the stale one still holds.
    providers.update_provider(other, fields(scheme="Newcomer", display_name="Newcomer"))
    db.session.flush()
    assert providers.resolve_callback_scheme("AcmeSSO")[0] is other
    assert providers.live_aliases(provider) == []


# --- show / hide ----------------------------------------------------------------------------------
def test_set_visible_bumps_version_and_records_shown_and_hidden(account):
    provider = make(account)
    version = provider.version
    providers.set_visible(provider, False)
    assert provider.visible is False and provider.version == version + 1
    providers.set_visible(provider, False)  # no change: no event, no bump
    assert provider.version == version + 1
    providers.set_visible(provider, True)
    assert provider.visible is True and provider.version == version + 2
    db.session.flush()
    actions = db.session.scalars(
        select(AuditEvent.action)
        .where(AuditEvent.action.like("provider.%"))
        .order_by(AuditEvent.id)
    ).all()
    assert actions == ["provider.created", "provider.hidden", "provider.shown"]


# --- delete ---------------------------------------------------------------------------------------
def _token(account, provider, name: str, *, revoked: bool = False) -> ScimToken:
    token = ScimToken(
        account_id=account.id,
        provider_id=provider.id,
        name=name,
        token_hash=name.encode().hex().ljust(64, "0")[:64],
        revoked_at=utcnow() if revoked else None,
    )
    db.session.add(token)
    db.session.flush()
    return token


def test_a_linked_scim_token_blocks_the_delete_until_revoked(account):
    provider = make(account)
    _with_logins(account, provider, 2)
    okta = _token(account, provider, "Okta provisioning")
    entra = _token(account, provider, "Entra sync")
    _token(account, provider, "Old one", revoked=True)
    assert {t.name for t in providers.delete_blockers(provider)} == {
        "Okta provisioning",
        "Entra sync",
    }
    with pytest.raises(providers.ProviderInUse) as caught:
        providers.delete_provider(provider)
    assert str(caught.value) == (
        "Linked to SCIM token(s) Okta provisioning, Entra sync: revoke them or unlink them first."
    )
    assert {t.name for t in caught.value.tokens} == {"Okta provisioning", "Entra sync"}
    db.session.flush()
    assert db.session.get(SsoProvider, provider.id) is not None
    assert db.session.scalar(select(func.count()).select_from(ExternalLogin)) == 2
    assert audit_details("provider.deleted") == []

    okta.revoked_at = entra.revoked_at = utcnow()
    assert providers.delete_blockers(provider) == []
    provider_id = provider.id
    assert providers.delete_provider(provider) == 2
    db.session.flush()
    db.session.expire_all()
    assert db.session.get(SsoProvider, provider_id) is None
    # The revoked tokens stay as history, linked to nothing.
    assert db.session.scalars(select(ScimToken.provider_id)).all() == [None, None, None]
    assert audit_details("provider.deleted")[0]["revoked_scim_tokens_unlinked"] == 3


def test_delete_impact_counts_logins_and_users_left_without_a_way_in(account):
    provider = make(account)
    elsewhere = make(account, scheme="Elsewhere")
    with_password = users.create_user("pw@example.com", "correct horse battery staple")
    only_here = users.create_user("only@example.com", None)
    also_elsewhere = users.create_user("both@example.com", None)
    not_here = users.create_user("other@example.com", None)
    db.session.add_all(
        [
            ExternalLogin(user=with_password, provider=provider, subject="1"),
            ExternalLogin(user=only_here, provider=provider, subject="2"),
            ExternalLogin(user=also_elsewhere, provider=provider, subject="3"),
            ExternalLogin(user=also_elsewhere, provider=elsewhere, subject="3"),
            ExternalLogin(user=not_here, provider=elsewhere, subject="4"),
        ]
    )
    db.session.flush()
    assert providers.delete_impact(provider) == (3, 1)
    assert providers.delete_impact(elsewhere) == providers.DeleteImpact(
        logins=2, users_losing_only_method=1
    )
    assert providers.delete_provider(provider) == 3
    db.session.flush()
    (details,) = audit_details("provider.deleted")
    assert details["logins_removed"] == 3 and details["users_losing_only_method"] == 1
    assert db.session.scalar(select(func.count()).select_from(ExternalLogin)) == 2
    # Now the user who also had the other provider depends on it alone.
    assert providers.delete_impact(elsewhere) == (2, 2)


def test_delete_removes_aliases_and_role_mappings_with_the_provider(account):
    provider = make(account, role_claim="groups", role_mappings=(("A", "admin"),))
    providers.update_provider(
        provider, fields(scheme="Renamed", role_claim="groups", role_mappings=(("A", "admin"),))
    )
    db.session.flush()
    providers.delete_provider(provider)
    db.session.flush()
    assert providers.resolve_callback_scheme("AcmeSSO") is None
    for model in (ProviderSchemeAlias, ProviderRoleMapping):
        assert db.session.scalar(select(func.count()).select_from(model)) == 0
