"""The one authorisation helper every admin view uses: a role in the account of the URL."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import abort
from flask import g
from flask_login import current_user

from app.extensions import db
from app.extensions import login_manager
from app.models import Account
from app.models import Role
from app.services import accounts


def account_role_required(minimum: Role = Role.ADMIN) -> Callable:
    """Decorate a view taking ``account_id``: anonymous -> /login; anyone without at least
    ``minimum`` in that account -> 403. A missing account is also 403, so guessing ids tells
    nothing about which accounts exist. The account is put in ``g.account``."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args: Any, account_id: int, **kwargs: Any):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if not accounts.has_role(current_user, account_id, minimum):
                abort(403)
            g.account = db.session.get(Account, account_id)
            return view(*args, account_id=account_id, **kwargs)

        return wrapped

    return decorator
