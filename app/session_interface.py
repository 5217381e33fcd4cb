"""Flask session interface backed by the Session table: the cookie carries only a random id.

Anonymous visitors get a row only once something is stored for them (a flash, a ``next``
URL, a sign-in flow's state). Before that, the cookie is a row-less anonymous token
(``a.<issued>.<random>``) and the visitor's CSRF token is derived from it with an HMAC under
SECRET_KEY, so showing the sign-in page writes nothing and the password sign-in reads no
session row: the CSRF check still binds the form to this browser (only a page that knows the
cookie can produce the token, and the cookie is HttpOnly). Sign-in replaces whatever the
browser had with a new row under a new id (see sign_in()).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from typing import Any

from flask import Flask
from flask import Request
from flask import Response
from flask import current_app
from flask import g
from flask import request
from flask import session as flask_session
from flask.sessions import SessionInterface
from flask.sessions import SessionMixin
from werkzeug.datastructures import CallbackDict

from app.extensions import db
from app.models import Session
from app.models import User
from app.services import sessions

# Flask-WTF keeps the raw CSRF token under this session key (WTF_CSRF_FIELD_NAME) and the
# signed form token under the same name in ``g`` once a page asked for it.
CSRF_KEY = "csrf_token"
ANONYMOUS_PREFIX = "a."


def _fingerprint(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def new_anonymous_token() -> str:
    """A row-less anonymous cookie value: its issue time (to bound its life) and 256 random
    bits."""
    return f"{ANONYMOUS_PREFIX}{int(time.time()):x}.{secrets.token_urlsafe(32)}"


def anonymous_token_is_live(token: str, now: float | None = None) -> bool:
    """Well-formed and issued less than ANONYMOUS_SESSION_TIMEOUT ago (and not in the
    future): an older one is replaced, so a CSRF token derived from it expires too."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 128 or len(parts[2]) < 43:
        return False
    try:
        issued = int(parts[1], 16)
    except ValueError:
        return False
    age = (now if now is not None else time.time()) - issued
    return 0 <= age < current_app.config["ANONYMOUS_SESSION_TIMEOUT"]


def derived_csrf_secret(token: str) -> str:
    """The CSRF secret of a row-less anonymous session: HMAC-SHA256 of its cookie under
    SECRET_KEY, so it is known to the server and the cookie holder only."""
    key = current_app.config["SECRET_KEY"]
    if isinstance(key, str):
        key = key.encode()
    return hmac.new(key, b"keyward-anonymous-csrf:" + token.encode(), hashlib.sha256).hexdigest()


class ServerSession(CallbackDict, SessionMixin):
    """The dict a view sees as ``flask.session``, plus what is known of the row behind it.

    The row's id, user, payload and last_seen_at are copied when the request starts (or at
    sign-in), so saving at the end needs no reload of a row the view's commit expired. The
    ORM object (``record``) is loaded only when a view asks for it.
    """

    def __init__(
        self,
        initial: dict[str, Any] | None = None,
        record: Session | sessions.LiveSession | None = None,
    ):
        def on_update(_self: ServerSession) -> None:
            _self.modified = True

        super().__init__(initial or {}, on_update)
        self.modified = False
        self._record: Session | None = None
        self.bind(record)
        # Set by sign_in() (new cookie) and sign_out() (cookie removed).
        self.new_token: str | None = None
        self.ended = False
        # True when the request presented a cookie that no longer maps to a live session.
        self.stale_cookie = False
        # The row-less anonymous cookie this browser has (or gets, when new_anonymous).
        self.anonymous_token: str | None = None
        self.new_anonymous = False
        self._derived_csrf: str | None = None

    @classmethod
    def anonymous(cls, token: str | None = None) -> ServerSession:
        """A row-less anonymous session: ``token`` from the cookie, or a new one."""
        new = token is None
        token = token or new_anonymous_token()
        derived = derived_csrf_secret(token)
        session = cls({CSRF_KEY: derived})
        session.anonymous_token, session.new_anonymous, session._derived_csrf = token, new, derived
        return session

    def only_derived_csrf(self) -> bool:
        """Nothing stored but the CSRF secret derived from the anonymous cookie."""
        if self.anonymous_token is None:
            return not self
        return len(self) == 0 or (len(self) == 1 and self.get(CSRF_KEY) == self._derived_csrf)

    def bind(self, record: Session | sessions.LiveSession | None) -> None:
        """Take the snapshots of ``record`` (an ORM row or what find_live read)."""
        self._record = record if isinstance(record, Session) else None
        self.record_id = record.id if record is not None else None
        self.user_id = record.user_id if record is not None else None
        self.last_seen = record.last_seen_at if record is not None else None
        self.saved = _fingerprint(dict(self)) if record is not None else None

    @property
    def record(self) -> Session | None:
        """The session row as an ORM object, loaded on first use."""
        if self._record is None and self.record_id is not None:
            self._record = db.session.get(Session, self.record_id)
        return self._record


class DatabaseSessionInterface(SessionInterface):
    def open_session(self, app: Flask, request: Request) -> ServerSession:
        token = request.cookies.get(app.config["SESSION_COOKIE_NAME"])
        if not token:
            return ServerSession.anonymous()
        if token.startswith(ANONYMOUS_PREFIX):
            # No row behind it, so nothing to read; an expired or malformed one is replaced.
            if anonymous_token_is_live(token):
                return ServerSession.anonymous(token)
            return ServerSession.anonymous()
        live = sessions.find_live(token)
        if live is None:
            session = ServerSession.anonymous()
            session.stale_cookie = True
            # find_live may have marked the row expired: keep that fact.
            db.session.commit()
            return session
        return ServerSession(dict(live.data or {}), live)

    def save_session(self, app: Flask, session: ServerSession, response: Response) -> None:
        name = self.get_cookie_name(app)
        cookie = {
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "httponly": True,
            "samesite": self.get_cookie_samesite(app),
        }
        response.vary.add("Cookie")
        if session.record_id is None:
            if session.only_derived_csrf():
                if session.ended:
                    db.session.commit()
                if (
                    session.anonymous_token is not None
                    and session.new_anonymous
                    and CSRF_KEY in g  # a form was rendered: its token needs this cookie
                ):
                    response.set_cookie(name, session.anonymous_token, **cookie)
                elif session.ended or session.stale_cookie:
                    response.delete_cookie(name, **cookie)
                return
            # Anonymous data to keep (including a flash after sign-out): a fresh row and id.
            values, session.new_token = sessions.insert_session(
                data=dict(session), ip_address=_client_ip(), user_agent=_user_agent()
            )
            session.bind(sessions.LiveSession.of(values))
            db.session.commit()
        else:
            data = dict(session)
            changed = sessions.save_changes(
                session.record_id,
                data=data if _fingerprint(data) != session.saved else None,
                last_seen=session.last_seen,
            )
            if changed:
                db.session.commit()
        if session.new_token:
            # No Max-Age: the cookie dies with the browser; the server enforces the timeouts.
            response.set_cookie(name, session.new_token, **cookie)


def _client_ip() -> str | None:
    return request.remote_addr


def _user_agent() -> str | None:
    return request.headers.get("User-Agent")


def current_record() -> Session | None:
    """The live session row behind this request, if any."""
    session = flask_session
    if isinstance(session, ServerSession):
        return session.record
    return None


def sign_in(
    user: User,
    *,
    auth_method: str,
    provider_id=None,
    idp_sid: str | None = None,
    idp_subject: str | None = None,
    id_token_encrypted: str | None = None,
) -> Session:
    """Bind the request's browser to ``user`` under a brand-new session id; returns the new
    row.

    The payload of the anonymous session (``next``, flow state) is carried over; the CSRF
    token is not, so a token seen before sign-in is useless after it.
    """
    values = _rotate(
        user.id,
        auth_method=auth_method,
        provider_id=provider_id,
        idp_sid=idp_sid,
        idp_subject=idp_subject,
        id_token_encrypted=id_token_encrypted,
    )
    record = sessions.attach(values)
    flask_session.bind(record)  # type: ignore[attr-defined]
    return record


def sign_in_without_record(user_id: uuid.UUID, *, auth_method: str) -> None:
    """sign_in() for a caller that has no use for the new row as an ORM object, nor for the
    user as one (the password sign-in): building and tracking those objects is a measurable
    share of its CPU. A view that asks for current_record() afterwards gets the row loaded."""
    _rotate(user_id, auth_method=auth_method)


def _rotate(user_id: uuid.UUID, *, auth_method: str, **federated: Any) -> dict[str, Any]:
    session: ServerSession = flask_session  # type: ignore[assignment]
    data = {key: value for key, value in session.items() if key != "csrf_token"}
    values, token = sessions.rotate(
        # The row itself when a view loaded it (so that object sees the revocation too).
        session._record or session.record_id,
        user_id,
        auth_method=auth_method,
        data=data,
        ip_address=_client_ip(),
        user_agent=_user_agent(),
        **federated,
    )
    session.clear()
    session.update(data)
    session.bind(sessions.LiveSession.of(values))
    session.new_token = token
    session.anonymous_token = None
    return values


def sign_out(reason: str = "signed_out") -> None:
    """End the request's session; the response deletes the cookie (or, when something is
    stored afterwards such as a flash, replaces it with a fresh anonymous session)."""
    session: ServerSession = flask_session  # type: ignore[assignment]
    if session.record is not None:
        sessions.revoke(session.record, reason)
    session.clear()
    session.bind(None)
    session.new_token = None
    session.anonymous_token = None
    session.ended = True
