"""SCIM fixtures: accounts with bearer tokens and a small JSON client for /scim/v2."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask.testing import FlaskClient

from app.extensions import db
from app.services import accounts
from app.services import scim_tokens
from tests.conftest import base_config

FIXTURES = Path(__file__).parent / "fixtures"
BASE = "/scim/v2"
SCIM_JSON = "application/scim+json"


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@dataclass
class ScimClient:
    """Sends SCIM requests with one token; paths are relative to /scim/v2."""

    client: FlaskClient
    token: str

    def headers(self, extra: dict | None = None) -> dict:
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None):
        kwargs: dict[str, Any] = {"headers": self.headers(headers)}
        if body is not None:
            kwargs["data"] = body if isinstance(body, str | bytes) else json.dumps(body)
            kwargs["content_type"] = SCIM_JSON
        return self.client.open(BASE + path, method=method, **kwargs)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw):
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw):
        return self.request("PUT", path, body, **kw)

    def patch(self, path: str, body: Any = None, **kw):
        return self.request("PATCH", path, body, **kw)

    def delete(self, path: str, **kw):
        return self.request("DELETE", path, **kw)


@pytest.fixture
def config(database_url) -> dict:
    # scim2-tester and the replays send far more than 100 requests a second; the limit has
    # its own test (test_tokens.py) with a small one.
    return base_config(database_url, SCIM_RATE_LIMIT="1000000/second")


@pytest.fixture
def make_token(app):
    """A SCIM token for an account: returns its id and the secret."""

    def _make(account_id: int, name: str = "Entra ID", provider_id=None) -> SimpleNamespace:
        with app.app_context():
            row, secret = scim_tokens.create_token(
                accounts.get_account(account_id), name, provider_id=provider_id
            )
            db.session.commit()
            return SimpleNamespace(id=row.id, token=secret)

    return _make


@pytest.fixture
def account(make_account):
    return make_account("Acme", "acme")


@pytest.fixture
def other_account(make_account):
    return make_account("Globex", "globex")


@pytest.fixture
def scim(client, account, make_token) -> ScimClient:
    return ScimClient(client, make_token(account.id).token)


@pytest.fixture
def other_scim(app, other_account, make_token) -> ScimClient:
    return ScimClient(app.test_client(), make_token(other_account.id, "Okta").token)


def user_body(user_name: str, **extra: Any) -> dict:
    body = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": user_name,
        "name": {"givenName": "Barbara", "familyName": "Jensen"},
        "emails": [{"value": user_name, "type": "work", "primary": True}],
        "active": True,
    }
    body.update(extra)
    return body
