"""SCIM token pages: /admin/accounts/<id>/scim-tokens (list, create — shown once — revoke)."""

from __future__ import annotations

from flask import abort
from flask import current_app
from flask import flash
from flask import g
from flask import redirect
from flask import render_template
from flask import url_for
from flask_login import current_user
from sqlalchemy import select
from wtforms import SelectChoice

from app.blueprints.admin import bp
from app.blueprints.admin.forms import ActionForm
from app.blueprints.admin.forms import ScimTokenForm
from app.extensions import db
from app.models import SsoProvider
from app.permissions import account_role_required
from app.services import scim_tokens
from app.services.errors import NotFound
from app.services.errors import ValidationError
from app.web import request_meta


def _form(account_id: int) -> ScimTokenForm:
    form = ScimTokenForm()
    providers = db.session.scalars(
        select(SsoProvider)
        .where(SsoProvider.account_id == account_id)
        .order_by(SsoProvider.display_name)
    )
    form.provider.choices = [SelectChoice("", "None")] + [
        SelectChoice(str(p.id), p.display_name) for p in providers
    ]
    return form


def _index(form: ScimTokenForm, status: int = 200):
    account_id = g.account.id
    return render_template(
        "admin/scim_tokens.html",
        account=g.account,
        tokens=scim_tokens.list_tokens(account_id),
        form=form,
        action_form=ActionForm(),
        scim_url=(current_app.config.get("PUBLIC_URL") or "").rstrip("/") + "/scim/v2",
    ), status


@bp.get("/scim-tokens")
@account_role_required()
def scim_tokens_index(account_id: int):
    return _index(_form(account_id))


@bp.post("/scim-tokens")
@account_role_required()
def scim_tokens_create(account_id: int):
    """Issue a token and show it on this response only. Not a redirect: the token would have
    to wait in the session (a database row) for the next page, and it is never stored."""
    form = _form(account_id)
    if not form.validate_on_submit():
        return _index(form, 400)
    try:
        token, secret = scim_tokens.create_token(
            g.account,
            form.name.data,
            provider_id=form.provider.data or None,
            actor=current_user,
            meta=request_meta(),
        )
    except ValidationError as error:
        db.session.rollback()
        target = form.provider if error.field == "provider" else form.name
        target.errors = [*target.errors, error.message]
        return _index(form, 400)
    db.session.commit()
    return render_template(
        "admin/scim_tokens_created.html",
        account=g.account,
        token=token,
        secret=secret,
        scim_url=(current_app.config.get("PUBLIC_URL") or "").rstrip("/") + "/scim/v2",
    )


@bp.post("/scim-tokens/<token_id>/revoke")
@account_role_required()
def scim_tokens_revoke(account_id: int, token_id: str):
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        # Another account's token id is simply not found here (403 like every admin page).
        token = scim_tokens.get_token(token_id, account_id=account_id)
    except NotFound:
        abort(403)
    if scim_tokens.revoke_token(token, actor=current_user, meta=request_meta()):
        flash(f"The SCIM token “{token.name}” has been revoked.", "success")
    db.session.commit()
    return redirect(url_for("admin.scim_tokens_index", account_id=account_id), code=303)
