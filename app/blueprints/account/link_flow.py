"""The end of a profile flow (link, or re-authentication before a link) at /signin-<scheme>.

The callback (auth/federated.py) hands over every flow whose intent is in ACCOUNT_INTENTS,
after it has matched and used up the state; the SAML ACS (auth/saml_flow.py) every answer to
such a request, after it has verified the assertion. The flow was started by
start_bound_flow for one user in one session record; anything else (signed out meanwhile,
another user, a new session) is refused before the authorization code is even redeemed (for
SAML: before anything but the replay-cache entry is written), with a clear page and
``auth.link.refused``, and nothing is written. A link never creates a session or rotates the
current one; a re-authentication is a sign-in (new session id), then goes on to the link.
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import flash
from flask import g
from flask import redirect
from flask import render_template
from flask import session
from flask import url_for
from flask_login import current_user

from app.extensions import db
from app.models import SsoProvider
from app.models import User
from app.services import crypto
from app.services import linking
from app.services import oidc
from app.services.errors import NotFound
from app.services.linking import ExternalIdentity
from app.session_interface import current_record
from app.session_interface import sign_in
from app.web import request_meta


def refused_page(status: int, message: str):
    """The page of a refused link: the reason, a reference, and the way back."""
    return (
        render_template(
            "account/link_refused.html", message=message, request_id=g.get("request_id")
        ),
        status,
    )


def _signed_in_user() -> User | None:
    return current_user._get_current_object() if current_user.is_authenticated else None


def _binding_refused(provider: SsoProvider, flow: Mapping, user: User | None):
    """The refusal page when the flow was not started by this user in this session record
    (audited), else None."""
    record = current_record() if user is not None else None
    try:
        linking.check_flow_binding(
            provider,
            started_by=flow.get("link_user_id"),
            started_in=flow.get("link_session_id"),
            user=user,
            session_id=record.id if record is not None else None,
            intent=flow.get("intent", "link"),
            meta=request_meta(),
        )
    except linking.LinkRefused as refusal:
        db.session.commit()  # keep the audit event
        return refused_page(refusal.status, refusal.message)
    return None


def finish_account_flow(provider: SsoProvider, flow: Mapping, params: Mapping[str, str]):
    """Check the flow's binding, verify the IdP's answer, then link or re-authenticate."""
    user = _signed_in_user()
    intent = flow.get("intent", "link")
    meta = request_meta()
    refused = _binding_refused(provider, flow, user)
    if refused is not None:
        return refused
    try:
        result = oidc.complete(provider, params, flow)
    except oidc.SignInFailed as failure:
        db.session.rollback()
        refusal = linking.LinkRefused(
            failure.check, failure.user_message, failure.status, detail=failure.detail
        )
        linking.record_link_refusal(provider, refusal, user=user, meta=meta, intent=intent)
        db.session.commit()
        return refused_page(failure.status, failure.user_message)
    return _link_or_reauthenticate(provider, flow, user, result)


def finish_saml_account_flow(
    provider: SsoProvider,
    flow: Mapping,
    identity: ExternalIdentity,
    session_data: Mapping[str, str] | None = None,
):
    """The same for a SAML answer, which the ACS has verified already (an assertion has no
    code to redeem; its replay-cache entry is all that was written). ``session_data`` goes
    into the new session when the flow re-authenticates (what single logout needs)."""
    user = _signed_in_user()
    refused = _binding_refused(provider, flow, user)
    if refused is not None:
        return refused
    result = oidc.FederatedSignIn(identity, None)
    return _link_or_reauthenticate(provider, flow, user, result, session_data)


def _link_or_reauthenticate(
    provider: SsoProvider,
    flow: Mapping,
    user: User,
    result: oidc.FederatedSignIn,
    session_data: Mapping[str, str] | None = None,
):
    if flow.get("intent", "link") == "reauthenticate":
        return _reauthenticated(provider, flow, result, user, session_data)
    try:
        linking.link_identity(user, provider, result.identity, meta=request_meta())
    except linking.LinkRefused as refusal:
        db.session.commit()  # only auth.link.refused
        return refused_page(refusal.status, refusal.message)
    name = provider.display_name  # read before the commit expires the row
    db.session.commit()
    flash(f"Your {name} login is linked. You can now sign in with it.", "success")
    return redirect(url_for("account.external_logins"), code=303)


def _reauthenticated(
    provider: SsoProvider,
    flow: Mapping,
    result: oidc.FederatedSignIn,
    user: User,
    session_data: Mapping[str, str] | None = None,
):
    """A sign-in through one of the user's own logins: a fresh session, then the link."""
    try:
        linking.confirm_reauthentication(user, provider, result.identity, meta=request_meta())
    except linking.LinkRefused as refusal:
        db.session.commit()  # only auth.signin.refused
        return refused_page(refusal.status, refusal.message)
    sign_in(
        user,
        auth_method=provider.protocol,
        provider_id=provider.id,
        idp_sid=result.identity.sid,
        idp_subject=result.identity.subject,
        id_token_encrypted=crypto.encrypt(result.id_token) if result.id_token else None,
    )
    session.update(session_data or {})
    return continue_to_link(user, flow.get("link_provider_id"))


def continue_to_link(user: User, provider_id: str | None):
    """After a re-authentication (password or provider): start the link the user asked for,
    bound to the new session, or say why it cannot start any more."""
    from app.blueprints.auth.federated import start_bound_flow

    try:
        target = linking.provider_for_link(user, provider_id or "")
    except (NotFound, linking.LinkRefused) as error:
        db.session.commit()  # the re-authentication stands
        message = error.message if isinstance(error, linking.LinkRefused) else str(error)
        flash(message, "error")
        return redirect(url_for("account.external_logins"), code=303)
    response = start_bound_flow(
        target, intent="link", user_id=user.id, session_id=current_record().id
    )
    db.session.commit()
    return response
