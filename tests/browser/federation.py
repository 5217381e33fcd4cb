"""What the browser tests against an identity provider share.

- ``idp_port``: chosen first, because Keyward's outbound allow-list names it (and an OpenID
  provider's clients name Keyward).
- ``live_server``: overrides the browser tests' server: reached as ``localhost`` (so the
  browser keeps the IdP's and Keyward's cookies apart) and allowed to fetch the IdP.
- ``config``: the test's app (which writes the providers) agrees with the live server.
- ``account``, and ``whoami`` as the page sees it.

A module imports the fixtures it uses (importing a fixture makes it that module's)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page

from tests.conftest import base_config
from tests.live_server import LiveServer
from tests.live_server import free_port

KEYWARD_HOST = "localhost"


class NamedLiveServer(LiveServer):
    """A LiveServer that the browser, and its PUBLIC_URL, call ``http://<host>:<port>``.

    LiveServer picks its port inside start() and builds PUBLIC_URL from ``url`` there, so
    the host name is put into ``url`` when the environment is built (after the port is
    chosen, before gunicorn starts). gunicorn still binds 127.0.0.1 only.
    """

    def __init__(self, *args, host: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.host = host

    def environment(self) -> dict[str, str]:
        self.url = f"http://{self.host}:{self.port}"
        return super().environment()


@pytest.fixture(scope="module")
def idp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def live_server(database_url: str, idp_port: int) -> Iterator[LiveServer]:
    env = {"OUTBOUND_ALLOW_PRIVATE": f"127.0.0.1:{idp_port}"}
    with NamedLiveServer(database_url, host=KEYWARD_HOST, env=env) as server:
        yield server


@pytest.fixture
def config(database_url: str, live_server: LiveServer, idp_port: int) -> dict:
    return base_config(
        database_url, OUTBOUND_ALLOW_PRIVATE=f"127.0.0.1:{idp_port}", PUBLIC_URL=live_server.url
    )


@pytest.fixture
def account(make_account):
    return make_account("Acme Rockets", "acme-rockets")


def whoami(page: Page) -> dict:
    response = page.goto("/whoami")
    assert response is not None and response.status == 200
    return json.loads(response.text())
