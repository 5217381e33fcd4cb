"""Views of the account blueprint: profile, external logins, password, sessions."""

from __future__ import annotations

from flask import abort
from flask import current_app
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_login import current_user
from flask_login import login_required

from app import ratelimit
from app.blueprints.account import bp
from app.blueprints.account.forms import EndSessionForm
from app.blueprints.account.forms import PasswordChangeForm
from app.blueprints.account.forms import ReauthenticateForm
from app.blueprints.account.link_flow import continue_to_link
from app.extensions import db
from app.models import SsoProvider
from app.models import User
from app.services import linking
from app.services import sessions
from app.services import users
from app.services.errors import NotFound
from app.services.errors import ValidationError
from app.session_interface import current_record
from app.session_interface import sign_in
from app.web import request_meta


@bp.route("")
@login_required
def profile():
    return render_template("account/profile.html", record=current_record())


@bp.route("/password", methods=["GET", "POST"])
@login_required
def password():
    form = PasswordChangeForm()
    had_password = current_user.has_password
    if not had_password:
        del form.current_password
    if not form.validate_on_submit():
        status = 400 if form.is_submitted() else 200
        return render_template("account/password.html", form=form), status
    try:
        users.change_password(
            current_user,
            form.current_password.data if current_user.has_password else None,
            form.new_password.data,
            keep_session_id=current_record().id,
            meta=request_meta(),
        )
    except ValidationError as error:
        # The strength rules name the field "password"; on this form it is the new one.
        field = "current_password" if error.field == "current_password" else "new_password"
        getattr(form, field).errors.append(error.message)
        db.session.rollback()
        return render_template("account/password.html", form=form), 400
    # A new session id too: whoever held a copy of the old cookie is out.
    sign_in(current_user, auth_method=current_record().auth_method or "password")
    db.session.commit()
    done = "changed" if had_password else "set"
    flash(f"Your password has been {done}. Your other sessions have been ended.", "success")
    return redirect(url_for("account.profile"), code=303)


@bp.route("/sessions")
@login_required
def list_sessions():
    return render_template(
        "account/sessions.html",
        records=sessions.list_live_sessions(current_user),
        current=current_record(),
        form=EndSessionForm(),
    )


@bp.route("/sessions/<session_id>/end", methods=["POST"])
@login_required
def end_session(session_id: str):
    current = current_record()
    if current is not None and str(current.id) == session_id:
        abort(400, description="Use “Sign out” to end the session you are using.")
    try:
        sessions.end_session(current_user, session_id, meta=request_meta())
    except NotFound:
        abort(404)
    db.session.commit()
    flash("The session has been ended.", "success")
    return redirect(url_for("account.list_sessions"), code=303)


@bp.route("/sessions/end-others", methods=["POST"])
@login_required
def end_other_sessions():
    ended = sessions.end_other_sessions(current_user, current_record(), meta=request_meta())
    db.session.commit()
    flash(f"{ended} other session{'s' if ended != 1 else ''} ended.", "success")
    return redirect(url_for("account.list_sessions"), code=303)


# --- external logins --------------------------------------------------------------------------
def _user() -> User:
    return current_user._get_current_object()


def _back_to_external_logins():
    return redirect(url_for("account.external_logins"), code=303)


@bp.route("/external-logins")
@login_required
def external_logins():
    user = _user()
    return render_template(
        "account/external_logins.html",
        logins=linking.list_external_logins(user),
        available=linking.linkable_providers(user),
        window_minutes=int(linking.REAUTHENTICATION_WINDOW.total_seconds() // 60),
    )


def _provider_to_link(user: User, guid: str) -> SsoProvider:
    """The provider the user asks to link; 404 when it is not theirs to link."""
    try:
        return linking.provider_for_link(user, guid)
    except NotFound:
        abort(404)


@bp.route("/external-logins/<guid>/link", methods=["POST"])
@login_required
def link_login(guid: str):
    """Start the provider's flow with a link intent, after a re-authentication when the last
    sign-in is older than linking.REAUTHENTICATION_WINDOW."""
    from app.blueprints.auth.federated import start_bound_flow

    user = _user()
    try:
        provider = _provider_to_link(user, guid)
    except linking.LinkRefused as refusal:
        flash(refusal.message, "error")
        return _back_to_external_logins()
    record = current_record()
    if linking.needs_reauthentication(record.authenticated_at if record else None):
        return redirect(url_for("account.reauthenticate", guid=guid), code=303)
    return start_bound_flow(provider, intent="link", user_id=user.id, session_id=record.id)


def _render_reauthenticate(provider: SsoProvider, form, status: int = 200):
    return (
        render_template(
            "account/reauthenticate.html",
            provider=provider,
            form=form,
            via=linking.reauthentication_providers(_user()),
            window_minutes=int(linking.REAUTHENTICATION_WINDOW.total_seconds() // 60),
        ),
        status,
    )


@bp.route("/external-logins/<guid>/reauthenticate", methods=["GET", "POST"])
@login_required
def reauthenticate(guid: str):
    """Confirm it is you (the password again), then straight on to the provider's link."""
    user = _user()
    try:
        provider = _provider_to_link(user, guid)
    except linking.LinkRefused as refusal:
        flash(refusal.message, "error")
        return _back_to_external_logins()
    form = ReauthenticateForm() if user.has_password else None
    if request.method == "GET" or form is None:
        return _render_reauthenticate(provider, form, 200 if request.method == "GET" else 400)
    # The same budget as /login: re-authentication must not be a way to guess the password.
    limits = current_app.config
    ratelimit.check_sign_in_attempt(
        limits["LOGIN_RATE_LIMIT"],
        request.remote_addr or "",
        limits["LOGIN_EMAIL_RATE_LIMIT"],
        user.email,
    )
    if not form.validate_on_submit():
        return _render_reauthenticate(provider, form, 400)
    check = users.check_password_sign_in(user.email, form.password.data, meta=request_meta())
    if not check.ok:
        ratelimit.count_failed_sign_in(limits["LOGIN_EMAIL_RATE_LIMIT"], user.email)
        db.session.commit()  # keep the audit event of the refusal
        form.password.errors.append("Password is not correct.")
        return _render_reauthenticate(provider, form, 401)
    # A fresh sign-in: a new session id and authenticated_at, then the link itself.
    sign_in(user, auth_method="password")
    return continue_to_link(user, guid)


@bp.route("/external-logins/<guid>/reauthenticate/<via>", methods=["POST"])
@login_required
def reauthenticate_with(guid: str, via: str):
    """Confirm it is you by signing in through one of your linked providers ``via``; the
    callback then goes on to link ``guid``."""
    from app.blueprints.auth.federated import start_bound_flow

    user = _user()
    try:
        target = _provider_to_link(user, guid)
        provider = linking.provider_for_reauthentication(user, via)
    except NotFound:
        abort(404)
    except linking.LinkRefused as refusal:
        flash(refusal.message, "error")
        return _back_to_external_logins()
    return start_bound_flow(
        provider,
        intent="reauthenticate",
        user_id=user.id,
        session_id=current_record().id,
        extra={"link_provider_id": str(target.id)},
    )


@bp.route("/external-logins/<int:login_id>/unlink", methods=["POST"])
@login_required
def unlink_login(login_id: int):
    try:
        login = linking.unlink(_user(), login_id, meta=request_meta())
    except NotFound:
        abort(404)
    except linking.LinkRefused as refusal:
        db.session.rollback()
        flash(refusal.message, "error")
        return _back_to_external_logins()
    name = login.provider.display_name  # loaded by unlink, before the commit
    db.session.commit()
    flash(f"Your {name} login is unlinked.", "success")
    return _back_to_external_logins()
