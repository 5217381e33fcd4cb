"""Federated sign-in and logout views: /sso/<guid>, /signin-<scheme>, /signout-*, back-channel.

Callback URLs put the scheme in the path (``/signin-acme``), as the product documents do;
Werkzeug converters cannot match a prefix inside one segment, so ``<path:endpoint>`` style
routing is avoided and each callback is a route of its own with a ``scheme`` part.
"""

from __future__ import annotations

import logging
import secrets
import time

from flask import abort
from flask import current_app
from flask import flash
from flask import g
from flask import jsonify
from flask import make_response
from flask import redirect
from flask import render_template
from flask import request
from flask import session
from flask import url_for
from flask_login import current_user

from app.blueprints.auth import bp
from app.blueprints.auth import saml_flow
from app.cache import get_cache
from app.extensions import csrf
from app.extensions import db
from app.extensions import signins
from app.models import SsoProvider
from app.services import audit
from app.services import crypto
from app.services import linking
from app.services import oidc
from app.services import providers
from app.services import sessions
from app.services.errors import NotFound
from app.session_interface import current_record
from app.session_interface import sign_in
from app.web import request_meta
from app.web import safe_next

log = logging.getLogger(__name__)

FLOWS_KEY = "oidc_flows"
LOGOUT_STATES_KEY = "logout_states"
# Pending sign-ins kept per browser: enough for a few tabs, bounded against session bloat.
MAX_PENDING_FLOWS = 5
# Flows the profile's "External logins" starts (start_bound_flow) and finishes.
ACCOUNT_INTENTS = frozenset({"link", "reauthenticate"})
# Longer than any logout token can stay valid (id_tokens.LOGOUT_TOKEN_MAX_AGE plus skew).
BACKCHANNEL_EVENT_TTL = 24 * 3600


def refusal_page(status: int, message: str, title: str = "Sign-in failed"):
    return (
        render_template(
            "auth/refused.html", title=title, message=message, request_id=g.get("request_id")
        ),
        status,
    )


def _provider_by_guid(guid: str) -> SsoProvider | None:
    try:
        return providers.get_provider(guid)
    except NotFound:
        return None


@bp.route("/sso/<guid>")
def sso(guid: str):
    """Start one provider's sign-in (the seed's SsoLogin?id=)."""
    provider = _provider_by_guid(guid)
    account_id = request.args.get("account", type=int)
    if provider is None or (
        account_id is not None and provider.account_id not in (None, account_id)
    ):
        return refusal_page(404, "There is no such sign-in provider.", "Unknown provider")
    if not provider.enabled:
        return refusal_page(
            403, f"Sign-in with {provider.display_name} is disabled.", "Provider disabled"
        )
    return _start_flow(provider, next_url=safe_next(request.args.get("next")))


def _start_flow(
    provider: SsoProvider,
    *,
    next_url: str | None,
    intent: str = "login",
    extra: dict | None = None,
):
    if provider.protocol == "saml":
        return saml_flow.start(provider, next_url=next_url, intent=intent, extra=extra)
    try:
        auth_request = oidc.begin(provider, intent=intent, next_url=next_url)
    except oidc.SignInFailed as failure:
        db.session.commit()  # keep a freshly recorded metadata error
        return _refuse(provider, failure)
    auth_request.flow.update(extra or {})
    flows = dict(session.get(FLOWS_KEY) or {})
    now = time.time()
    flows = {k: v for k, v in flows.items() if v.get("expires_at", 0) > now}
    while len(flows) >= MAX_PENDING_FLOWS:
        flows.pop(min(flows, key=lambda k: flows[k]["expires_at"]))
    flows[auth_request.state] = auth_request.flow
    session[FLOWS_KEY] = flows
    return redirect(auth_request.url, code=303)


def start_bound_flow(
    provider: SsoProvider, *, intent: str, user_id, session_id, extra: dict | None = None
):
    """Start a profile flow (``intent`` "link" or "reauthenticate") bound to this browser's
    session record and to its signed-in user: the callback refuses it anywhere else, and
    after a sign-out or another sign-in in between (see ACCOUNT_INTENTS in _callback)."""
    bound = {"link_user_id": str(user_id), "link_session_id": str(session_id)}
    return _start_flow(provider, next_url=None, intent=intent, extra={**(extra or {}), **bound})


def _refuse(provider: SsoProvider | None, failure: oidc.SignInFailed):
    check, detail = failure.check, failure.detail or ""
    log.warning("federated sign-in refused (%s): %s", check, detail)
    audit.record(
        "auth.signin.refused",
        account_id=provider.account_id if provider else None,
        target_type="provider" if provider else None,
        target_id=provider.id if provider else None,
        details={
            "method": provider.protocol if provider else "oidc",
            "reason": check,
            "detail": detail[:300],
        },
        meta=request_meta(),
    )
    db.session.commit()
    signins.labels(provider.protocol if provider else "oidc", "refused").inc()
    return refusal_page(failure.status, failure.user_message)


def _relay_form_post(provider: SsoProvider):
    """form_post callbacks arrive as cross-site POSTs, which browsers send without our
    SameSite=Lax cookie. Echo the fields back in a same-origin POST (auto-submitted by
    relay.js) so the second request carries the cookie and the state can be checked."""
    fields = {k: v for k, v in request.form.items() if k != "keyward_relay"}
    response = make_response(
        render_template("auth/form_post_relay.html", action=request.path, fields=fields)
    )
    return response


def _provider_for_callback(scheme: str) -> SsoProvider | None:
    """The provider of a callback path: its current scheme, or an old one still in its grace
    period after a rename (an IdP not yet updated keeps working)."""
    found = providers.resolve_callback_scheme(scheme)
    return found[0] if found is not None else None


def _callback(scheme: str):
    found = providers.resolve_callback_scheme(scheme)
    provider = found[0] if found is not None else None
    if provider is None:
        return refusal_page(404, "There is no such sign-in provider.", "Unknown provider")
    if provider.protocol == "saml":
        # The ACS: the URLs are compared in the scheme's own spelling (the alias's after a
        # rename), since that is what the IdP was told.
        return saml_flow.acs(provider, found[1].scheme if found[1] else provider.scheme)
    params = request.form if request.method == "POST" else request.args
    state = params.get("state") or ""
    flows = dict(session.get(FLOWS_KEY) or {})
    flow = flows.pop(state, None) if state else None
    if flow is None and request.method == "POST" and request.form.get("keyward_relay") != "1":
        return _relay_form_post(provider)
    testing = flow is not None and flow.get("intent") == "test"
    # Admins test a provider before enabling it; everyone else is refused while it is off.
    if not provider.enabled and not testing:
        return _refuse(
            provider,
            oidc.SignInFailed(
                "provider_disabled", f"Sign-in with {provider.display_name} is disabled.", 403
            ),
        )
    # One-time use: the state is gone from the session whatever happens next.
    session[FLOWS_KEY] = flows
    if flow is None or flow.get("provider_id") != str(provider.id):
        return _refuse(
            provider,
            oidc.SignInFailed(
                "state", "This sign-in link has expired or was already used. Please start again."
            ),
        )
    if flow.get("intent") in ACCOUNT_INTENTS:
        # Linking from the profile: bound to the session and user that started it, and it
        # never signs anyone in as someone else (app/blueprints/account/link_flow.py).
        from app.blueprints.account.link_flow import finish_account_flow

        return finish_account_flow(provider, flow, params)
    try:
        result = oidc.complete(provider, params, flow)
    except oidc.SignInFailed as failure:
        db.session.rollback()
        session[FLOWS_KEY] = flows
        if testing:
            return _test_result(provider, flow, failure=failure)
        return _refuse(provider, failure)
    if testing:
        return _test_result(provider, flow, result=result)
    try:
        resolved = linking.resolve_login(provider, result.identity, meta=request_meta())
    except linking.SignInRefused as failure:
        # resolve_login added only its auth.signin.refused event: keep it.
        db.session.commit()
        signins.labels(provider.protocol, "refused").inc()
        return refusal_page(failure.status, failure.message)
    method = provider.protocol  # read before the commit expires the row
    sign_in(
        resolved.user,
        auth_method=method,
        provider_id=provider.id,
        idp_sid=result.identity.sid,
        idp_subject=result.identity.subject,
        id_token_encrypted=crypto.encrypt(result.id_token) if result.id_token else None,
    )
    db.session.commit()
    signins.labels(method, "succeeded").inc()
    return redirect(safe_next(flow.get("next")) or url_for("home.index"), code=303)


def _test_result(provider: SsoProvider, flow: dict, *, result=None, failure=None):
    """The end of a "Test sign-in": what a real sign-in would do, and nothing written."""
    from app.blueprints.providers.test_signin import render_test_result

    return render_test_result(provider, flow, result=result, failure=failure)


@bp.route("/signin-<scheme>", methods=["GET", "POST"])
# The IdP posts here; state (OIDC) or InResponseTo (SAML), bound to this browser's session,
# is the CSRF check.
@csrf.exempt
def signin_callback(scheme: str):
    return _callback(scheme)


@bp.route("/saml/<scheme>/metadata")
def saml_metadata(scheme: str):
    """Keyward's SAML SP metadata for one provider (application/samlmetadata+xml)."""
    return saml_flow.sp_metadata(scheme)


def federated_logout_redirect(record) -> str | None:
    """After a local sign-out, where to send the browser for RP-initiated logout (OIDC) or
    an SP-initiated LogoutRequest (SAML), or None."""
    if record is None or record.provider_id is None:
        return None
    provider = db.session.get(SsoProvider, record.provider_id)
    if provider is None or not provider.enabled:
        return None
    if provider.protocol == "saml":
        return saml_flow.logout_redirect(provider, record)
    id_token = crypto.decrypt(record.id_token_encrypted) if record.id_token_encrypted else None
    state = secrets.token_urlsafe(24)
    url = oidc.end_session_url(provider, id_token, state)
    if url is None:
        return None
    states = dict(session.get(LOGOUT_STATES_KEY) or {})
    states[state] = {"provider_id": str(provider.id), "expires_at": int(time.time()) + 600}
    session[LOGOUT_STATES_KEY] = states
    return url


@bp.route("/signout-callback-<scheme>")
def signout_callback(scheme: str):
    """post_logout_redirect_uri: back from the IdP's end_session_endpoint."""
    states = dict(session.get(LOGOUT_STATES_KEY) or {})
    state = request.args.get("state") or ""
    known = states.pop(state, None)
    session[LOGOUT_STATES_KEY] = states
    if known is not None:
        flash("You have signed out.", "info")
    return redirect(url_for("auth.login"), code=303)


@bp.route("/signout-<scheme>")
def frontchannel_logout(scheme: str):
    """OIDC Front-Channel Logout 1.0 §2: the IdP loads this in an iframe with iss and sid.

    It arrives without our (SameSite=Lax) cookie, so the sessions are found by the IdP's sid.
    For a SAML provider this is the single logout service (saml_flow.single_logout).
    """
    found = providers.resolve_callback_scheme(scheme)
    if found is None:
        abort(404)
    provider = found[0]
    if provider.protocol == "saml":
        return saml_flow.single_logout(provider, found[1].scheme if found[1] else provider.scheme)
    sid = request.args.get("sid")
    iss = request.args.get("iss")
    if sid and iss:
        if iss != oidc.issuer(provider):
            abort(400)
        oidc.end_idp_sessions(provider, "frontchannel", sid=sid, meta=request_meta())
    else:
        # Without iss/sid only the browser's own session can be meant (when its cookie came).
        record = current_record()
        if record is not None and record.provider_id == provider.id:
            sessions.revoke(record, "frontchannel_logout")
    db.session.commit()
    response = make_response("", 200)
    # This response is meant to be framed by the IdP's logout page.
    response.headers["Content-Security-Policy"] = "default-src 'none'; frame-ancestors *"
    response.headers["X-Frame-Options"] = "ALLOWALL"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/backchannel-logout-<scheme>", methods=["POST"])
@csrf.exempt  # server-to-server; the signed logout token is the authentication
def backchannel_logout(scheme: str):
    """OIDC Back-Channel Logout 1.0 §2.5-2.8: 200 and the sessions end, or 400."""
    provider = _provider_for_callback(scheme)
    if provider is None or not provider.enabled:
        return _backchannel_error("unknown or disabled provider")
    token = request.form.get("logout_token")
    if not token:
        return _backchannel_error("no logout_token")
    try:
        claims = oidc.validate_logout_token(provider, token)
    except oidc.SignInFailed as failure:
        log.warning("back-channel logout refused (%s): %s", failure.check, failure.detail)
        audit.record(
            "auth.signout.backchannel_refused",
            account_id=provider.account_id,
            target_type="provider",
            target_id=provider.id,
            details={"reason": failure.check},
            meta=request_meta(),
        )
        db.session.commit()
        return _backchannel_error("invalid logout_token")
    # §2.6: a logout token is used once; its jti is remembered until it could no longer pass.
    if not get_cache().add(f"logout-jti:{provider.id}:{claims.jti}", 1, BACKCHANNEL_EVENT_TTL):
        return _backchannel_error("logout_token already used")
    oidc.end_idp_sessions(
        provider, "backchannel", sid=claims.sid, subject=claims.sub, meta=request_meta()
    )
    db.session.commit()
    response = make_response("", 200)
    response.headers["Cache-Control"] = "no-store"
    return response


def _backchannel_error(description: str):
    response = jsonify(error="invalid_request", error_description=description)
    response.status_code = 400
    response.headers["Cache-Control"] = "no-store"
    return response


def whoami_extra() -> dict:
    """provider_id and subject for /whoami when the session is federated."""
    record = current_record()
    if record is None or record.provider_id is None or not current_user.is_authenticated:
        return {}
    return {"provider_id": str(record.provider_id), "subject": record.idp_subject}


__all__ = ["federated_logout_redirect", "refusal_page", "whoami_extra", "current_app"]
