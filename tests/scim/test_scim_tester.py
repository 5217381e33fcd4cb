"""scim2-tester (the python-scim project's RFC 7643/7644 compliance checks) against /scim/v2.

The checks run through scim2-client's WSGI engine: real HTTP requests, parsed and answered by
the whole Keyward app in this process (authentication, rate limit, routing, error handlers),
without a socket. Every check must succeed; a skipped check must say why it was skipped.
"""

from __future__ import annotations

import pytest
from scim2_client.engines.wsgi import WSGISCIMClient
from scim2_tester import Status
from scim2_tester import check_server


@pytest.fixture
def tester_client(app, account, make_token) -> WSGISCIMClient:
    token = make_token(account.id, "scim2-tester").token
    client = WSGISCIMClient(
        app,
        base_url="http://localhost/scim/v2",
        headers={"Authorization": f"Bearer {token}"},
    )
    client.discover()
    return client


def _describe(result) -> str:
    return f"{result.status.name} {result.title} [{result.resource_type}]: {result.reason}"


def test_every_scim2_tester_check_succeeds(tester_client):
    results = check_server(tester_client, raise_exceptions=False)

    assert results, "scim2-tester ran no check"
    failed = [r for r in results if r.status not in (Status.SUCCESS, Status.SKIPPED)]
    assert not failed, "\n".join(_describe(r) for r in failed)
    # Nothing the server supports is skipped: only checks for features it does not have.
    skipped = [r for r in results if r.status == Status.SKIPPED]
    assert not skipped, "\n".join(_describe(r) for r in skipped)
