"""Views of the auth blueprint."""

from __future__ import annotations

from flask import abort
from flask import current_app
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_login import current_user
from sqlalchemy import select

from app import ratelimit
from app.blueprints.auth import bp
from app.blueprints.auth.federated import federated_logout_redirect
from app.blueprints.auth.forms import LoginForm
from app.extensions import db
from app.extensions import limiter
from app.extensions import signins
from app.models import Account
from app.services import audit
from app.services import providers
from app.services import users
from app.services.users import SignInRefusal
from app.session_interface import current_record
from app.session_interface import sign_in_without_record
from app.session_interface import sign_out
from app.web import request_meta
from app.web import safe_next


def _login_ip_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


def _login_email_limit() -> str:
    return current_app.config["LOGIN_EMAIL_RATE_LIMIT"]


def _login_email_key() -> str:
    # Per-address limit: stops one account being guessed at from many IPs.
    return (request.form.get("email") or "").strip().lower()[:254]


@limiter.request_filter
def _sign_in_page() -> bool:
    """The sign-in page is limited by the view itself (ratelimit.check_sign_in_attempt):
    Flask-Limiter has nothing to count there."""
    return request.endpoint == "auth.login"


def _render_login(
    form: LoginForm, account: Account | None = None, status: int = 200, error: str | None = None
):
    buttons = providers.login_buttons(account.id if account else None)
    return (
        render_template(
            "auth/login.html",
            form=form,
            account=account,
            error=error,
            buttons=buttons,
            next=form.next.data or None,
        ),
        status,
    )


@bp.route("/login", methods=["GET", "POST"])
@bp.route("/login/<slug>", methods=["GET", "POST"])
def login(slug: str | None = None):
    if request.method == "POST":
        # Counted before anything else, even a malformed form (every POST is an attempt).
        email_key = _login_email_key()
        ratelimit.check_sign_in_attempt(
            _login_ip_limit(), request.remote_addr or "", _login_email_limit(), email_key
        )
    account = _account_for_login(slug)
    form = LoginForm()
    if request.method == "GET":
        form.next.data = safe_next(request.args.get("next")) or ""
        if current_user.is_authenticated:
            return redirect(form.next.data or url_for("home.index"), code=303)
        return _render_login(form, account)

    if not form.validate_on_submit():
        ratelimit.count_failed_sign_in(_login_email_limit(), email_key)
        signins.labels("password", "invalid_form").inc()
        return _render_login(form, account, 400)

    check = users.check_password_sign_in(form.email.data, form.password.data, meta=request_meta())
    if not check.ok:
        ratelimit.count_failed_sign_in(_login_email_limit(), email_key)
        db.session.commit()  # keep the audit event of the refusal
        signins.labels("password", "refused").inc()
        if check.refusal is SignInRefusal.INACTIVE:
            return _render_login(form, account, 403, "This user is deactivated.")
        # One message for unknown email and wrong password: no account enumeration.
        return _render_login(form, account, 401, "Email or password is not correct.")

    sign_in_without_record(check.user_id, auth_method="password")
    db.session.commit()
    signins.labels("password", "succeeded").inc()
    return redirect(safe_next(form.next.data) or url_for("home.index"), code=303)


def _account_for_login(slug: str | None) -> Account | None:
    """The account whose sign-in page this is: /login/<slug> or /login?account=<id>."""
    if slug is not None:
        account = db.session.scalar(select(Account).where(Account.slug == slug.lower()))
        if account is None:
            abort(404)
        return account
    account_id = request.args.get("account", type=int)
    return db.session.get(Account, account_id) if account_id is not None else None


@bp.route("/logout", methods=["POST"])
def logout():
    record = current_record()
    if current_user.is_authenticated:
        audit.record(
            "auth.signout",
            actor=current_user,
            target_type="session",
            target_id=record.id if record else None,
            meta=request_meta(),
        )
    sign_out()
    # A federated session also ends at the IdP when it supports RP-initiated logout.
    idp_logout = federated_logout_redirect(record)
    db.session.commit()
    if idp_logout is not None:
        return redirect(idp_logout, code=303)
    flash("You have signed out.", "info")
    return redirect(url_for("auth.login"), code=303)
