"""Views of the provider management pages; every one goes through account_role_required."""

from __future__ import annotations

from flask import abort
from flask import current_app
from flask import flash
from flask import g
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_login import current_user

from app.blueprints.providers import bp
from app.blueprints.providers.forms import ActionForm
from app.blueprints.providers.forms import ProviderForm
from app.extensions import db
from app.models import SsoProvider
from app.models.base import utcnow
from app.models.provider import CERT_EXPIRY_WARNING
from app.permissions import account_role_required
from app.services import presets
from app.services import providers
from app.services.errors import NotFound
from app.services.errors import ValidationError
from app.tasks.metadata import enqueue_refresh
from app.web import request_meta

# The callback URLs an admin registers at the IdP, in the order the pages list them.
CALLBACKS = (
    ("signin", "Redirect URI (sign-in callback)", "/signin-"),
    ("signout_callback", "Post-logout redirect URI", "/signout-callback-"),
    ("signout", "Front-channel logout URL", "/signout-"),
    ("backchannel_logout", "Back-channel logout URI", "/backchannel-logout-"),
)
# What an admin enters at a SAML IdP: (key, label, path before the scheme, path after it).
SAML_URLS = (
    ("entity_id", "SP entity ID (Identifier, Audience URI)", "/saml/", "/metadata"),
    ("acs", "Assertion consumer service URL (Reply URL, Single sign-on URL)", "/signin-", ""),
    ("slo", "Single logout URL", "/signout-", ""),
    ("sp_metadata", "SP metadata URL", "/saml/", "/metadata"),
)


def saml_urls(scheme: str) -> dict[str, str]:
    """The SAML URLs of a scheme, by SAML_URLS key (from PUBLIC_URL)."""
    base = providers.public_url()
    return {key: f"{base}{before}{scheme}{after}" for key, _, before, after in SAML_URLS}


def certificate_rows(provider: SsoProvider) -> list[dict]:
    """The provider's SAML signing certificates for the pages: fingerprint, expiry and
    ``status`` (expired, soon = within CERT_EXPIRY_WARNING, ok), soonest expiry first."""
    now = utcnow()
    rows = []
    for cert in sorted(
        provider.certificates, key=lambda c: (c.not_after is None, c.not_after or now)
    ):
        status = "ok"
        if cert.not_after is not None and cert.not_after <= now:
            status = "expired"
        elif cert.not_after is not None and cert.not_after - now <= CERT_EXPIRY_WARNING:
            status = "soon"
        rows.append(
            {"fingerprint": cert.fingerprint_sha256, "not_after": cert.not_after, "status": status}
        )
    return rows


@bp.context_processor
def _page_helpers() -> dict:
    return {
        "callbacks": CALLBACKS,
        "saml_url_labels": SAML_URLS,
        "saml_urls": saml_urls,
        "certificate_rows": certificate_rows,
        "public_url": providers.public_url(),
        "alias_days": current_app.config.get("PROVIDER_SCHEME_ALIAS_DAYS", 30),
    }


def _provider_of_account(account_id: int, guid: str) -> SsoProvider:
    """The provider ``guid`` of this account. Unknown, malformed and other accounts' GUIDs
    all answer 403, like account_role_required: guessing tells nothing."""
    try:
        provider = providers.get_provider(guid)
    except NotFound:
        abort(403)
    if provider.account_id != account_id:
        abort(403)
    return provider


def _field_errors(error: ValidationError) -> dict[str, str]:
    return error.errors or {error.field or "": error.message}


def _to_index(account_id: int):
    return redirect(url_for("providers.index", account_id=account_id), code=303)


@bp.route("")
@account_role_required()
def index(account_id: int):
    rows = [
        (p, providers.callback_urls(p), providers.live_aliases(p))
        for p in providers.list_providers(account_id)
    ]
    return render_template(
        "providers/index.html",
        account=g.account,
        rows=rows,
        alias_callback_urls=providers.alias_callback_urls,
    )


@bp.route("/new")
@account_role_required()
def new(account_id: int):
    return render_template("providers/new.html", account=g.account, presets=presets.list_presets())


@bp.route("/new/<preset>", methods=["GET", "POST"])
@account_role_required()
def create(account_id: int, preset: str):
    try:
        chosen = presets.get_preset(preset)
    except NotFound:
        abort(404)
    # The preset fills whatever the request does not send.
    form = ProviderForm(data=chosen.form_data())
    if not form.validate_on_submit():
        status = 400 if form.is_submitted() else 200
        return _render_create(form, chosen, status)
    try:
        provider = providers.create_provider(
            form.to_fields(secret_stored=False),
            account=g.account,
            actor=current_user,
            meta=request_meta(),
            # The admin learns now, not at the first sign-in, that the IdP is unreachable.
            check_discovery=True,
        )
    except ValidationError as error:
        db.session.rollback()
        form.add_service_errors(_field_errors(error))
        return _render_create(form, chosen, 400)
    db.session.commit()
    enqueue_refresh(provider.id)
    flash(
        f"The SSO provider “{provider.display_name}” has been created. Register its callback "
        "URLs at your identity provider.",
        "success",
    )
    return _to_index(account_id)


def _render_create(form: ProviderForm, preset: presets.Preset, status: int):
    return (
        render_template("providers/create.html", account=g.account, form=form, preset=preset),
        status,
    )


@bp.route("/<guid>/edit", methods=["GET", "POST"])
@account_role_required()
def edit(account_id: int, guid: str):
    provider = _provider_of_account(account_id, guid)
    form = ProviderForm(data=ProviderForm.data_from_provider(provider))
    if not form.validate_on_submit():
        status = 400 if form.is_submitted() else 200
        return _render_edit(form, provider, status)
    secret_stored = provider.client_secret_encrypted is not None
    old_scheme = provider.scheme
    try:
        changes = providers.update_provider(
            provider,
            form.to_fields(secret_stored=secret_stored),
            actor=current_user,
            meta=request_meta(),
            check_discovery=True,
        )
    except ValidationError as error:
        db.session.rollback()
        form.add_service_errors(_field_errors(error))
        return _render_edit(form, provider, 400)
    db.session.commit()
    enqueue_refresh(provider.id)
    if not changes:
        flash("Nothing changed.", "info")
    elif provider.scheme != old_scheme:
        days = current_app.config.get("PROVIDER_SCHEME_ALIAS_DAYS", 30)
        flash(
            f"The SSO provider “{provider.display_name}” has been saved. Its scheme is now "
            f"{provider.scheme}: register the new callback URLs at your identity provider; "
            f"the old ones keep working for {days} days.",
            "success",
        )
    else:
        flash(f"The SSO provider “{provider.display_name}” has been saved.", "success")
    return _to_index(account_id)


def _render_edit(form: ProviderForm, provider: SsoProvider, status: int):
    return (
        render_template(
            "providers/edit.html",
            account=g.account,
            form=form,
            provider=provider,
            callback_urls=providers.callback_urls(provider),
            aliases=providers.live_aliases(provider),
            alias_callback_urls=providers.alias_callback_urls,
            secret_stored=provider.client_secret_encrypted is not None,
        ),
        status,
    )


def _change_state(account_id: int, guid: str, setter, value: bool, message: str):
    """enable/disable/show/hide: one service call, one commit, one flash."""
    provider = _provider_of_account(account_id, guid)
    setter(provider, value, actor=current_user, meta=request_meta())
    db.session.commit()
    flash(message.format(name=provider.display_name), "success")
    return _to_index(account_id)


@bp.route("/<guid>/enable", methods=["POST"])
@account_role_required()
def enable(account_id: int, guid: str):
    return _change_state(
        account_id, guid, providers.set_enabled, True, "“{name}” is enabled: users can sign in."
    )


@bp.route("/<guid>/disable", methods=["POST"])
@account_role_required()
def disable(account_id: int, guid: str):
    return _change_state(
        account_id,
        guid,
        providers.set_enabled,
        False,
        "“{name}” is disabled: it refuses every sign-in; its settings are kept.",
    )


@bp.route("/<guid>/show", methods=["POST"])
@account_role_required()
def show(account_id: int, guid: str):
    return _change_state(
        account_id, guid, providers.set_visible, True, "“{name}” is shown on the sign-in page."
    )


@bp.route("/<guid>/hide", methods=["POST"])
@account_role_required()
def hide(account_id: int, guid: str):
    return _change_state(
        account_id,
        guid,
        providers.set_visible,
        False,
        "“{name}” is hidden from the sign-in page; its direct SSO link still works.",
    )


@bp.route("/<guid>/end-aliases", methods=["POST"])
@account_role_required()
def end_aliases(account_id: int, guid: str):
    """After a rename, once the IdP has the new callback URLs: stop using the old ones."""
    provider = _provider_of_account(account_id, guid)
    ended = providers.end_scheme_aliases(provider, actor=current_user, meta=request_meta())
    db.session.commit()
    if ended:
        flash(
            f"“{provider.display_name}” now uses only its new callback URLs; "
            f"the old ones ({', '.join(ended)}) no longer answer.",
            "success",
        )
    return redirect(url_for("providers.edit", account_id=account_id, guid=guid), code=303)


@bp.route("/<guid>/delete", methods=["GET", "POST"])
@account_role_required()
def delete(account_id: int, guid: str):
    provider = _provider_of_account(account_id, guid)
    if request.method == "GET":
        blockers = providers.delete_blockers(provider)
        return render_template(
            "providers/delete.html",
            account=g.account,
            provider=provider,
            blockers=blockers,
            impact=None if blockers else providers.delete_impact(provider),
            form=ActionForm(),
        )
    name = provider.display_name
    try:
        providers.delete_provider(provider, actor=current_user, meta=request_meta())
    except providers.ProviderInUse as error:
        db.session.rollback()
        names = ", ".join(token.name for token in error.tokens)
        flash(
            f"“{name}” is linked to SCIM tokens ({names}) and cannot be deleted. "
            "Unlink or revoke them first.",
            "error",
        )
        return redirect(url_for("providers.delete", account_id=account_id, guid=guid), code=303)
    db.session.commit()
    flash(f"The SSO provider “{name}” and its login records have been deleted.", "success")
    return _to_index(account_id)
