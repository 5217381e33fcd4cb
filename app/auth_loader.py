"""Flask-Login callbacks: the current user comes from the server-side session record."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import redirect
from flask import request
from flask import session as flask_session
from flask import url_for

from app.extensions import db
from app.extensions import login_manager
from app.models import User


@login_manager.request_loader
def load_user_from_session(_request):
    user_id = getattr(flask_session, "user_id", None)
    if user_id is None:
        return None
    user = db.session.get(User, user_id)
    # A deactivated user keeps no session: find_live revokes it on the next request,
    # and this check covers the request during which the deactivation happened.
    if user is None or not user.active:
        return None
    return user


@login_manager.unauthorized_handler
def redirect_to_login():
    # Only the local path goes into next=, never the absolute URL built from the Host header.
    query = urlencode({"next": request.full_path.rstrip("?")})
    return redirect(f"{url_for('auth.login')}?{query}", code=303)
