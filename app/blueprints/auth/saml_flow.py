"""SAML 2.0 sign-in and single logout views: the AuthnRequest, the ACS, SLO and SP metadata.

The routes are shared with OpenID Connect (/sso/<guid>, /signin-<scheme>, /signout-<scheme>)
and branch to these functions on ``provider.protocol``; only /saml/<scheme>/metadata is
SAML's own. services.saml does every check; the views keep this browser's pending requests
in its session, turn refusals into pages and audit events, and sign in through
services.linking like every other federated sign-in.

The session cookie is SameSite=Lax, so the IdP's cross-site POST to the ACS arrives without
it. Like an OpenID Connect form_post, that POST is relayed: a page of ours re-posts the
same fields from our own origin (static/relay.js), and that request carries the cookie, so
InResponseTo can be matched to a request this browser made.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import abort
from flask import flash
from flask import make_response
from flask import redirect
from flask import request
from flask import session
from flask import url_for

from app.extensions import db
from app.extensions import signins
from app.models import SsoProvider
from app.services import audit
from app.services import linking
from app.services import oidc
from app.services import providers
from app.services import saml
from app.services import sessions
from app.session_interface import current_record
from app.session_interface import sign_in
from app.session_interface import sign_out
from app.web import request_meta
from app.web import safe_next

log = logging.getLogger(__name__)

# Pending AuthnRequests of this browser: request ID -> provider, expiry, next, intent.
REQUESTS_KEY = "saml_requests"
# Pending SP-initiated LogoutRequests: request ID -> provider, expiry.
LOGOUTS_KEY = "saml_logouts"
# The NameID format of the signed-in SAML session (its LogoutRequest must repeat it).
NAMEID_FORMAT_KEY = "saml_nameid_format"
# Enough for a few tabs, bounded against session bloat (as for OpenID Connect flows).
MAX_PENDING = 5
# An AuthnRequest answered later than this is refused: the IdP's login page was left open.
PENDING_TTL = 600
METHOD = "saml"


def _pending(key: str) -> dict[str, dict[str, Any]]:
    """This browser's pending requests of one kind, expired ones dropped."""
    now = time.time()
    entries = session.get(key) or {}
    return {rid: entry for rid, entry in entries.items() if entry.get("expires_at", 0) > now}


def _remember(key: str, request_id: str, entry: dict[str, Any]) -> None:
    entries = _pending(key)
    while len(entries) >= MAX_PENDING:
        entries.pop(min(entries, key=lambda rid: entries[rid]["expires_at"]))
    entries[request_id] = {**entry, "expires_at": int(time.time()) + PENDING_TTL}
    session[key] = entries


def _as_failure(refusal: saml.SamlRefused) -> oidc.SignInFailed:
    # The federated refusal page, audit event and test page all read SignInFailed.
    return oidc.SignInFailed(refusal.check, refusal.message, refusal.status, refusal.detail)


def _refuse(provider: SsoProvider, refusal: saml.SamlRefused):
    from app.blueprints.auth.federated import _refuse as refuse_federated

    return refuse_federated(provider, _as_failure(refusal))


# --- sign-in -------------------------------------------------------------------------------
def start(
    provider: SsoProvider, *, next_url: str | None, intent: str = "login", extra: dict | None = None
):
    """Send the browser to the IdP with an AuthnRequest (HTTP-Redirect) and remember its ID
    in this browser's session. While an old scheme is a live alias the request names the
    old ACS URL and entity id, which are what the IdP knows (providers.active_scheme)."""
    try:
        authn = saml.begin_sign_in(provider, scheme=providers.active_scheme(provider))
    except saml.SamlRefused as refusal:
        return _refuse(provider, refusal)
    _remember(
        REQUESTS_KEY,
        authn.request_id,
        {"provider_id": str(provider.id), "next": next_url, "intent": intent, **(extra or {})},
    )
    return redirect(authn.url, code=303)


def acs(provider: SsoProvider, scheme: str):
    """The assertion consumer service (POST /signin-<scheme>): verify, then sign in."""
    from app.blueprints.auth.federated import ACCOUNT_INTENTS
    from app.blueprints.auth.federated import _relay_form_post
    from app.blueprints.auth.federated import _test_result
    from app.blueprints.auth.federated import refusal_page

    if request.method != "POST":
        # Bindings 3.5: responses come by HTTP-POST only; a GET is a bookmark or a mistake.
        return refusal_page(405, "Sign-in answers from this identity provider come by POST.")
    pending = _pending(REQUESTS_KEY)
    mine = {rid: e for rid, e in pending.items() if e.get("provider_id") == str(provider.id)}
    if not mine and request.form.get("keyward_relay") != "1":
        # Cross-site POST without our cookie (or an IdP-initiated answer): re-post it from
        # our own origin so the cookie, and with it the pending requests, come along.
        return _relay_form_post(provider)
    tests = {rid: e for rid, e in mine.items() if e.get("intent") == "test"}
    if not provider.enabled:
        # Admins test a provider before enabling it; everyone else is refused while it is off.
        if not tests:
            return _refuse_disabled(provider)
        mine = tests
    testing_only = bool(mine) and len(tests) == len(mine)
    try:
        identity = saml.complete_sign_in(
            provider, request.form, expected_request_ids=list(mine), scheme=scheme
        )
    except saml.SamlRefused as refusal:
        db.session.rollback()
        if testing_only:
            return _test_result(provider, list(tests.values())[-1], failure=_as_failure(refusal))
        return _refuse(provider, refusal)
    entry = mine.get(identity.in_response_to) if identity.in_response_to else None
    if identity.in_response_to:
        # One-time use: the request is answered.
        pending.pop(identity.in_response_to, None)
        session[REQUESTS_KEY] = pending
    external = saml.identity_from(provider, identity)
    if entry is not None and entry.get("intent") == "test":
        return _test_result(provider, entry, result=oidc.FederatedSignIn(external, None))
    if not provider.enabled:
        return _refuse_disabled(provider)
    if entry is not None and entry.get("intent") in ACCOUNT_INTENTS:
        # Linking from the profile: bound to the session and user that started it, and it
        # never signs anyone in as someone else (app/blueprints/account/link_flow.py).
        from app.blueprints.account.link_flow import finish_saml_account_flow

        nameid = {NAMEID_FORMAT_KEY: identity.nameid_format} if identity.nameid_format else {}
        return finish_saml_account_flow(provider, entry, external, nameid)
    try:
        resolved = linking.resolve_login(provider, external, meta=request_meta())
    except linking.SignInRefused as failure:
        # resolve_login added only its auth.signin.refused event: keep it.
        db.session.commit()
        signins.labels(METHOD, "refused").inc()
        return refusal_page(failure.status, failure.message)
    sign_in(
        resolved.user,
        auth_method=METHOD,
        provider_id=provider.id,
        idp_sid=identity.session_index,
        idp_subject=identity.subject,
    )
    if identity.nameid_format:
        session[NAMEID_FORMAT_KEY] = identity.nameid_format
    db.session.commit()
    signins.labels(METHOD, "succeeded").inc()
    # IdP-initiated: a RelayState that is a local path is where the user wanted to go.
    target = entry.get("next") if entry is not None else request.form.get("RelayState")
    return redirect(safe_next(target) or url_for("home.index"), code=303)


def _refuse_disabled(provider: SsoProvider):
    from app.blueprints.auth.federated import _refuse as refuse_federated

    return refuse_federated(
        provider,
        oidc.SignInFailed(
            "provider_disabled", f"Sign-in with {provider.display_name} is disabled.", 403
        ),
    )


# --- single logout -------------------------------------------------------------------------
def logout_redirect(provider: SsoProvider, record) -> str | None:
    """SP-initiated single logout (profiles 4.4.3.1) after the local sign-out of ``record``:
    the IdP's URL with a LogoutRequest for the session's NameID and SessionIndex, or None
    when the IdP has no SLO endpoint. The request ID is kept in the (new, anonymous) session
    to match the LogoutResponse."""
    if not record.idp_subject or not provider.saml_slo_url:
        return None
    name_id_format = (record.data or {}).get(NAMEID_FORMAT_KEY)
    try:
        found = saml.logout_request_url(
            provider,
            name_id=record.idp_subject,
            session_index=record.idp_sid,
            name_id_format=name_id_format,
            scheme=providers.active_scheme(provider),
        )
    except saml.SamlRefused as refusal:
        log.warning("SAML logout request not sent (%s): %s", refusal.check, refusal.detail)
        return None
    if found is None:
        return None
    url, request_id = found
    _remember(LOGOUTS_KEY, request_id, {"provider_id": str(provider.id)})
    return url


def single_logout(provider: SsoProvider, scheme: str):
    """GET /signout-<scheme> for a SAML provider: the IdP's LogoutRequest (IdP-initiated:
    end the sessions it names, answer with a LogoutResponse) or its LogoutResponse to ours
    (back to the sign-in page)."""
    from app.blueprints.auth.federated import refusal_page

    if "SAMLRequest" in request.args:
        return _idp_logout_request(provider, scheme)
    if "SAMLResponse" in request.args:
        return _logout_response(provider, scheme)
    return refusal_page(400, "This sign-out link is incomplete.", "Sign-out failed")


def _idp_logout_request(provider: SsoProvider, scheme: str):
    from app.blueprints.auth.federated import refusal_page

    try:
        target, answer_url = saml.handle_idp_logout_request(
            provider, request.query_string, scheme=scheme
        )
    except saml.SamlRefused as refusal:
        db.session.rollback()
        log.warning("SAML logout request refused (%s): %s", refusal.check, refusal.detail)
        _audit_logout_refusal(provider, refusal, "logout_request")
        db.session.commit()
        return refusal_page(refusal.status, refusal.message, "Sign-out failed")
    # The browser's own session, when its cookie came along and it is one of those named.
    record = current_record()
    if (
        record is not None
        and record.provider_id == provider.id
        and record.idp_subject == target.name_id
        and (not target.session_indexes or record.idp_sid in target.session_indexes)
    ):
        sign_out("saml_logout")
    # Core 3.7.3.2: the NameID, and the SessionIndex values when there are any. It arrives
    # without the cookie in general (another site's redirect), so sessions are found by these.
    ended = sessions.revoke_subject_sessions(
        provider.id, subject=target.name_id, sids=target.session_indexes, reason="saml_logout"
    )
    audit.record(
        "auth.signout.saml",
        account_id=provider.account_id,
        target_type="provider",
        target_id=provider.id,
        details={"initiated_by": "idp", "sessions_ended": ended},
        meta=request_meta(),
    )
    db.session.commit()
    response = redirect(answer_url, code=303)
    response.headers["Cache-Control"] = "no-store"
    return response


def _logout_response(provider: SsoProvider, scheme: str):
    pending = _pending(LOGOUTS_KEY)
    mine = [rid for rid, e in pending.items() if e.get("provider_id") == str(provider.id)]
    try:
        saml.handle_logout_response(provider, request.query_string, mine, scheme=scheme)
    except saml.SamlRefused as refusal:
        # Our session ended before the browser went to the IdP: only the message differs.
        log.warning("SAML logout response refused (%s): %s", refusal.check, refusal.detail)
        _audit_logout_refusal(provider, refusal, "logout_response")
        db.session.commit()
        flash(
            "You have signed out of Keyward, but the identity provider did not confirm that "
            "you are signed out there.",
            "warning",
        )
    else:
        for rid in mine:
            pending.pop(rid, None)
        flash("You have signed out.", "info")
    session[LOGOUTS_KEY] = pending
    return redirect(url_for("auth.login"), code=303)


def _audit_logout_refusal(provider: SsoProvider, refusal: saml.SamlRefused, message: str) -> None:
    audit.record(
        "auth.signout.refused",
        account_id=provider.account_id,
        target_type="provider",
        target_id=provider.id,
        details={
            "method": METHOD,
            "message": message,
            "reason": refusal.check,
            "detail": refusal.detail[:300],
        },
        meta=request_meta(),
    )


# --- SP metadata ---------------------------------------------------------------------------
def sp_metadata(scheme: str):
    """GET /saml/<scheme>/metadata: Keyward's SP metadata for this provider (an old scheme
    in its grace period serves the old entity id and URLs, which the IdP still has)."""
    found = providers.resolve_callback_scheme(scheme)
    if found is None or found[0].protocol != "saml":
        abort(404)
    provider, alias = found
    xml = saml.sp_metadata_xml(provider, scheme=alias.scheme if alias else provider.scheme)
    response = make_response(xml)
    response.headers["Content-Type"] = "application/samlmetadata+xml; charset=utf-8"
    response.headers["Content-Disposition"] = f'inline; filename="keyward-{scheme}.xml"'
    return response
