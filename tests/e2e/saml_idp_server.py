"""The pysaml2 test IdP as a WSGI server: ``python tests/e2e/saml_idp_server.py CONFIG.json``.

Listens on 127.0.0.1 (a free port, or ``port`` in the config), prints ``READY <base URL>``
once it serves, and runs until SIGTERM. tests/e2e/saml_idp.py (SamlIdp) starts and stops it;
the IdP logic is IdpCore there, shared with the in-process builders.

Endpoints: GET /metadata; GET /sso (HTTP-Redirect AuthnRequest: auto-login or a login form),
POST /sso/login; GET /idp-initiated?sp=&user=; GET /slo (the SP's LogoutRequest or its
LogoutResponse); POST /control/{sp,rotate,auto-login,logout-request,events} (JSON).
"""

from __future__ import annotations

import html
import json
import signal
import socketserver
import sys
import threading
import traceback
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl
from urllib.request import urlopen
from wsgiref.simple_server import WSGIRequestHandler
from wsgiref.simple_server import WSGIServer
from wsgiref.simple_server import make_server

from tests.e2e.saml_idp import HOST
from tests.e2e.saml_idp import IdpCore
from tests.e2e.saml_idp import IdpUser
from tests.e2e.saml_idp import KeyPair

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

LOGIN_PAGE = """<!doctype html>
<html><head><title>Test IdP sign-in</title></head>
<body><h1>Test IdP</h1>{error}
<form method="post" action="/sso/login">
<input type="hidden" name="SAMLRequest" value="{saml_request}">
<input type="hidden" name="RelayState" value="{relay_state}">
<input type="hidden" name="SigAlg" value="{sig_alg}">
<input type="hidden" name="Signature" value="{signature}">
<label for="login">Login</label> <input id="login" name="login" autocomplete="username">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password">
<button type="submit">Sign in</button>
</form></body></html>
"""


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        sys.stdout.write("%s %s\n" % (self.command, format % args))  # noqa: UP031


class IdpApp:
    """The WSGI application around one IdpCore (one lock: pysaml2 objects are not shared
    safely between threads)."""

    def __init__(self, core: IdpCore, auto_login: str | None) -> None:
        self.core = core
        self.auto_login = auto_login
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.sessions: list[dict[str, Any]] = []

    # --- WSGI ---------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        try:
            with self.lock:
                status, headers, body = self.route(method, path, query, environ)
        except Exception:
            traceback.print_exc()
            sys.stdout.flush()
            status, headers, body = "500 Internal Server Error", [], traceback.format_exc()
        data = body.encode("utf-8")
        headers = [*headers, ("Content-Length", str(len(data)))]
        if not any(name == "Content-Type" for name, _ in headers):
            headers.append(("Content-Type", "text/html; charset=utf-8"))
        start_response(status, headers)
        return [data]

    def route(
        self, method: str, path: str, query: dict[str, str], environ: dict[str, Any]
    ) -> tuple[str, list[tuple[str, str]], str]:
        if path == "/metadata" and method == "GET":
            return (
                "200 OK",
                [("Content-Type", "application/samlmetadata+xml")],
                self.core.metadata_xml(),
            )
        if path == "/sso" and method == "GET":
            return self.sso(query)
        if path == "/sso/login" and method == "POST":
            return self.login(_form(environ))
        if path == "/idp-initiated" and method == "GET":
            return self.idp_initiated(query)
        if path == "/slo" and method == "GET":
            return self.slo(query)
        if path.startswith("/control/") and method == "POST":
            payload = json.loads(_body(environ) or b"{}")
            result = self.control(path.removeprefix("/control/"), payload)
            return "200 OK", [("Content-Type", "application/json")], json.dumps(result)
        return "404 Not Found", [], "not found"

    # --- sign-in ------------------------------------------------------------------------
    def sso(self, query: dict[str, str]) -> tuple[str, list[tuple[str, str]], str]:
        request = self.core.parse_authn_request(query)
        self.events.append({"type": "authn_request", **request})
        if self.auto_login:
            return self.answer(self.auto_login, request, query.get("RelayState"))
        return (
            "200 OK",
            [],
            LOGIN_PAGE.format(
                error="",
                saml_request=html.escape(query["SAMLRequest"]),
                relay_state=html.escape(query.get("RelayState", "")),
                sig_alg=html.escape(query.get("SigAlg", "")),
                signature=html.escape(query.get("Signature", "")),
            ),
        )

    def login(self, form: dict[str, str]) -> tuple[str, list[tuple[str, str]], str]:
        params = {
            k: v
            for k, v in form.items()
            if k in ("SAMLRequest", "RelayState", "SigAlg", "Signature") and v
        }
        login = form.get("login", "")
        user = self.core.users.get(login)
        # A user with a password needs it; one without accepts any non-empty password.
        if (
            user is None
            or not form.get("password")
            or (user.password is not None and form.get("password") != user.password)
        ):
            return (
                "200 OK",
                [],
                LOGIN_PAGE.format(
                    error="<p role='alert'>Unknown login or wrong password.</p>",
                    saml_request=html.escape(params.get("SAMLRequest", "")),
                    relay_state=html.escape(params.get("RelayState", "")),
                    sig_alg=html.escape(params.get("SigAlg", "")),
                    signature=html.escape(params.get("Signature", "")),
                ),
            )
        request = self.core.parse_authn_request(params)
        return self.answer(login, request, params.get("RelayState"))

    def answer(
        self, login: str, request: dict[str, Any], relay_state: str | None
    ) -> tuple[str, list[tuple[str, str]], str]:
        xml = self.core.response_xml(
            login, sp_entity_id=request["issuer"], acs=request["acs"], in_response_to=request["id"]
        )
        return self._post(login, request["issuer"], request["acs"], xml, relay_state, request["id"])

    def idp_initiated(self, query: dict[str, str]) -> tuple[str, list[tuple[str, str]], str]:
        sp = query["sp"]
        login = query["user"]
        acs = self.core.sp_endpoint(sp)
        xml = self.core.response_xml(login, sp_entity_id=sp, acs=acs, in_response_to=None)
        return self._post(login, sp, acs, xml, query.get("relay_state"), None)

    def _post(
        self, login: str, sp: str, acs: str, xml: str, relay_state: str | None, irt: str | None
    ) -> tuple[str, list[tuple[str, str]], str]:
        session_index = self.core.session_index_of(xml)
        self.sessions.append({"user": login, "sp": sp, "session_index": session_index})
        self.events.append(
            {
                "type": "response",
                "user": login,
                "sp": sp,
                "acs": acs,
                "in_response_to": irt,
                "session_index": session_index,
            }
        )
        return "200 OK", [], self.core.post_form_html(xml, acs, relay_state)

    # --- logout -------------------------------------------------------------------------
    def slo(self, query: dict[str, str]) -> tuple[str, list[tuple[str, str]], str]:
        if "SAMLRequest" in query:
            asked, url = self.core.logout_response_url(query)
            self.events.append({"type": "logout_request", **asked})
            self.sessions = [
                s
                for s in self.sessions
                if not (
                    s["sp"] == asked["issuer"]
                    and (
                        not asked["session_indexes"]
                        or s["session_index"] in asked["session_indexes"]
                    )
                )
            ]
            return "303 See Other", [("Location", url)], ""
        if "SAMLResponse" in query:
            self.events.append(
                {
                    "type": "logout_response",
                    "signed": "Signature" in query,
                    "relay_state": query.get("RelayState"),
                }
            )
            return "200 OK", [], "<!doctype html><title>Signed out</title><p>Signed out.</p>"
        return "400 Bad Request", [], "no SAMLRequest or SAMLResponse"

    # --- control ------------------------------------------------------------------------
    def control(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        if action == "sp":
            xml = payload.get("metadata_xml")
            if not xml:
                with urlopen(payload["metadata_url"], timeout=10) as answer:  # noqa: S310 (loopback test SP)
                    xml = answer.read().decode("utf-8")
            return {"entity_id": self.core.add_sp_metadata(xml)}
        if action == "rotate":
            pair = self.core.rotate_certificate(keep_old=bool(payload.get("keep_old", True)))
            return {
                "current": pair.cert_pem,
                "certificates": [p.cert_pem for p in self.core.key_pairs],
            }
        if action == "auto-login":
            self.auto_login = payload.get("user")
            return {"auto_login": self.auto_login}
        if action == "logout-request":
            sp = payload.get("sp") or self._only_sp()
            url, request_id = self.core.logout_request_url(
                payload["user"],
                payload.get("session_index"),
                sp_entity_id=sp,
                relay_state=payload.get("relay_state"),
            )
            self.events.append({"type": "sent_logout_request", "id": request_id, "sp": sp})
            return {"url": url, "id": request_id}
        if action == "events":
            return {"events": self.events, "sessions": self.sessions}
        raise KeyError(action)

    def _only_sp(self) -> str:
        from lxml import etree

        ids = [etree.fromstring(x.encode()).get("entityID") for x in self.core.sp_metadata]
        if len(ids) != 1:
            raise ValueError(f"name the SP: {ids}")
        return ids[0]


def _body(environ: dict[str, Any]) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return environ["wsgi.input"].read(length) if length else b""


def _form(environ: dict[str, Any]) -> dict[str, str]:
    return dict(parse_qsl(_body(environ).decode("utf-8"), keep_blank_values=True))


def main(config_path: str) -> None:
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    # Bind first: the entity id and endpoints contain the port.
    server = make_server(
        HOST, int(config.get("port") or 0), lambda e, s: [], _ThreadingServer, _QuietHandler
    )
    base_url = f"http://{HOST}:{server.server_port}"
    core = IdpCore(
        base_url,
        key_pairs=[KeyPair(p["key"], p["cert"]) for p in config["key_pairs"]],
        users={login: IdpUser.from_json(data) for login, data in config.get("users", {}).items()},
        sp_metadata=config.get("sp_metadata", []),
        sign=config.get("sign", "assertion"),
    )
    server.set_app(IdpApp(core, config.get("auto_login")))

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"READY {base_url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        core.close()


if __name__ == "__main__":
    main(sys.argv[1])
