""" "Test sign-in": an admin runs a provider's flow and sees what a real sign-in would do.

The flow is the provider's real one (same request, same token or assertion checks); only its
end differs: the callback (auth/federated.py, auth/saml_flow.py for SAML) hands a flow with
``intent == "test"`` to render_test_result, which shows the verified claims (SAML: the
attributes), the user the identity resolves to (or that one would be created), the role and
the CEL verdict. No session is created, and no user, membership, link or audit row is written.
"""

from __future__ import annotations

import logging

from flask import abort
from flask import g
from flask import render_template
from flask_login import current_user

from app.blueprints.providers import bp
from app.extensions import db
from app.models import Role
from app.models import SsoProvider
from app.permissions import account_role_required
from app.services import accounts
from app.services import linking
from app.services import oidc
from app.services import providers
from app.services.errors import NotFound

log = logging.getLogger(__name__)


def _account_provider(account_id: int, guid: str) -> SsoProvider:
    """The provider ``guid`` of this account; anything else is 403 (as guessing tells
    nothing)."""
    try:
        provider = providers.get_provider(guid)
    except NotFound:
        abort(403)
    if provider.account_id != account_id:
        abort(403)
    return provider


@bp.route("/<guid>/test", methods=["POST"])
@account_role_required()
def test_signin(account_id: int, guid: str):
    """Start the provider's flow marked as a test by this admin."""
    from app.blueprints.auth.federated import _start_flow

    provider = _account_provider(account_id, guid)
    # OIDC and OAuth 2.0 keep the test in the flow state, SAML in the pending AuthnRequest.
    return _start_flow(
        provider,
        next_url=None,
        intent="test",
        extra={"tester_id": str(current_user.id), "account_id": g.account.id},
    )


def render_test_result(
    provider: SsoProvider,
    flow: dict,
    *,
    result: oidc.FederatedSignIn | None = None,
    failure: oidc.SignInFailed | None = None,
):
    """The test's result page; called by the callback. Only the admin who started the test,
    still an admin of the provider's account, sees it."""
    if (
        not current_user.is_authenticated
        or str(current_user.id) != flow.get("tester_id")
        or provider.account_id != flow.get("account_id")
        or not accounts.has_role(current_user, provider.account_id, Role.ADMIN)
    ):
        abort(403)
    preview = None
    claims: dict = {}
    if result is not None:
        claims = dict(result.identity.claims)
        preview = linking.preview_login(provider, result.identity)
    # Read-only by construction; the rollback makes sure nothing of the test is kept.
    db.session.rollback()
    log.info(
        "test sign-in of provider %s: %s", provider.id, preview.outcome if preview else "failed"
    )
    return render_template(
        "providers/test_result.html",
        account=accounts.get_account(provider.account_id),
        provider=provider,
        claims=sorted(claims.items()),
        preview=preview,
        failure=failure,
        identity=result.identity if result is not None else None,
    )
