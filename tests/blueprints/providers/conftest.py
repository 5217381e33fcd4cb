"""Fixtures of the provider pages: two accounts with their people, a discovery server on
127.0.0.1 (the only outbound host these apps may reach), and providers made through the
service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.extensions import db
from app.services import accounts
from app.services import providers
from app.services.providers import ProviderFields
from tests.conftest import AuthActions
from tests.conftest import base_config
from tests.helpers import serving

JWKS = {
    "keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": "AQAB", "e": "AQAB"}]
}


class DiscoveryServer(ThreadingHTTPServer):
    """Serves an OpenID Connect discovery document and JWKS for any issuer path:
    http://127.0.0.1:<port>/<name> is an issuer; paths under /missing answer 404."""

    # Join handler threads on close: no socket outlives the tests (filterwarnings=error).
    daemon_threads = False
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def issuer(self, name: str = "idp") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


class _Handler(BaseHTTPRequestHandler):
    server: DiscoveryServer

    def log_message(self, format: str, *args) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        name = path.strip("/").split("/", 1)[0]
        issuer = self.server.issuer(name)
        if name == "missing":
            body, status = {"error": "not here"}, 404
        elif path.endswith("/.well-known/openid-configuration"):
            body, status = (
                {
                    "issuer": issuer,
                    "authorization_endpoint": f"{issuer}/authorize",
                    "token_endpoint": f"{issuer}/token",
                    "userinfo_endpoint": f"{issuer}/userinfo",
                    "jwks_uri": f"{issuer}/jwks",
                    "response_types_supported": ["code", "id_token", "code id_token"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                },
                200,
            )
        elif path.endswith("/jwks"):
            body, status = JWKS, 200
        else:
            body, status = {"error": "unknown path"}, 404
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="session")
def idp() -> Iterator[DiscoveryServer]:
    with serving(DiscoveryServer()) as server:
        yield server


@pytest.fixture
def config(database_url, idp) -> dict:
    # Only the local discovery server is allowed over http; every other private or http
    # authority stays refused, as in production.
    return base_config(database_url, OUTBOUND_ALLOW_PRIVATE=f"127.0.0.1:{idp.port}")


@pytest.fixture
def people(make_account, make_user) -> SimpleNamespace:
    acme, globex = make_account("Acme"), make_account("Globex")
    return SimpleNamespace(
        acme=acme,
        globex=globex,
        acme_owner=make_user("owner@acme.example", account_id=acme.id, role="owner"),
        acme_admin=make_user("admin@acme.example", account_id=acme.id, role="admin"),
        acme_member=make_user("member@acme.example", account_id=acme.id, role="member"),
        globex_admin=make_user("admin@globex.example", account_id=globex.id, role="admin"),
        loner=make_user("loner@example.com"),
    )


@pytest.fixture
def make_provider(app, idp):
    """Create a provider through the service (discovery not fetched); returns its GUID."""

    def _make(account_id: int, scheme: str = "acme-sso", **changes) -> str:
        values = {
            "display_name": "Acme SSO",
            "scheme": scheme,
            "authority": idp.issuer(),
            "client_id": "keyward-client",
            **changes,
        }
        with app.app_context():
            provider = providers.create_provider(
                ProviderFields(**values),
                account=accounts.get_account(account_id),
                check_discovery=False,
            )
            db.session.commit()
            return str(provider.id)

    return _make


def browser_for(app: Flask, user) -> FlaskClient:
    """A test client signed in as ``user`` through the real sign-in page."""
    client = app.test_client()
    assert AuthActions(client).login(user.email).status_code == 303
    return client


def csrf_post(
    client: FlaskClient, path: str, data: dict | None = None, token_from: str = "/account"
):
    """POST with a CSRF token taken from a page, as a browser would."""
    return AuthActions(client).post(path, data, token_from=token_from)


def base(account_id: int) -> str:
    return f"/admin/accounts/{account_id}/sso-providers"


def form_data(issuer: str, **changes) -> dict:
    """Everything the provider form posts; a change of None leaves the key out (an unticked
    checkbox)."""
    data = {
        "protocol": "oidc",
        "display_name": "Acme Corp SSO",
        "scheme": "AcmeCorp-SSO",
        "authority": issuer,
        "client_id": "keyward-client",
        "client_secret": "",
        "response_type": "code",
        "icon_url": "",
        "remote_signout_path": "",
        "additional_scopes": "",
        "additional_claims": "",
        "authorization_expression": "",
        "default_role": "member",
        "external_id_claim": "",
        "authorization_endpoint": "",
        "token_endpoint": "",
        "userinfo_endpoint": "",
        "subject_field": "sub",
        "email_field": "email",
        "name_field": "name",
        "role_claim": "",
        "role_mappings": "",
        "role_mapping_default": "",
        "enabled": "y",
        "visible": "y",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}
