"""Views of the account blueprint."""

from __future__ import annotations

from flask import abort
from flask import flash
from flask import redirect
from flask import render_template
from flask import url_for
from flask_login import current_user
from flask_login import login_required

from app.blueprints.account import bp
from app.blueprints.account.forms import EndSessionForm
from app.blueprints.account.forms import PasswordChangeForm
from app.extensions import db
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
    if not current_user.has_password:
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
    flash("Your password has been changed. Your other sessions have been ended.", "success")
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
