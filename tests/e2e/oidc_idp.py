"""A real OpenID Connect provider for end-to-end tests: node ``oidc-provider`` in a subprocess.

    with OidcIdp(clients=[CLIENT], accounts={"alice": {"sub": "a1", "email": "a@x.test"}}) as idp:
        idp.issuer                 # "http://127.0.0.1:<port>"
        result = sign_in_with_http(authorize_url, "alice", "any password")
        result.params["code"]      # or result.params["id_token"] for form_post
        idp.rotate_keys()          # a new RS256 signing key, the old one leaves the JWKS

The provider (tests/e2e/idp/server.mjs, oidc-provider pinned in its package-lock.json) needs
its packages: ``npm ci --prefix tests/e2e/idp``. It listens on 127.0.0.1 only; its output
is kept in a temporary file (``output()``) and shown when it fails to start.

``sign_in_with_http`` and ``sign_out_with_http`` drive the provider's own pages with
``requests`` and stop before the browser would go back to the relying party, so a test can
finish the callback itself (for example with Flask's test client).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import IO
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import urljoin
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

import requests

from tests.processes import stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
IDP_DIR = Path(__file__).resolve().parent / "idp"
HOST = "127.0.0.1"
INSTALL_HINT = "npm ci --prefix tests/e2e/idp"


class OidcIdpError(RuntimeError):
    """The provider could not be started or answered a control request with an error."""


class IdpFlowError(RuntimeError):
    """The provider's pages did not lead where expected (the message carries the page)."""


# --- the provider process ----------------------------------------------------------------
class OidcIdp:
    """Start ``node tests/e2e/idp/server.mjs`` on 127.0.0.1 and stop exactly that process.

    ``clients`` are oidc-provider client metadata (snake_case: client_id, client_secret,
    redirect_uris, post_logout_redirect_uris, response_types, grant_types,
    token_endpoint_auth_method, id_token_signed_response_alg, backchannel_logout_uri,
    backchannel_logout_session_required, frontchannel_logout_uri,
    frontchannel_logout_session_required). ``accounts`` maps a login name to claims
    (sub, email, email_verified, name, ..., any extra claim such as groups or tid); an
    optional "password" entry is the only password accepted, otherwise any non-empty one is.
    ``claims`` adds {scope: [claim, ...]}; extra account claims are released with "openid".
    """

    def __init__(
        self,
        clients: Sequence[Mapping[str, Any]] = (),
        accounts: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        claims: Mapping[str, Sequence[str]] | None = None,
        pkce_required: bool = True,
        auto_confirm_logout: bool = True,
        node: str = "node",
        idp_dir: Path | str = IDP_DIR,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.config: dict[str, Any] = {
            "clients": [dict(client) for client in clients],
            "accounts": {login: dict(data) for login, data in (accounts or {}).items()},
            "claims": {scope: list(names) for scope, names in (claims or {}).items()},
            "pkce_required": pkce_required,
            "auto_confirm_logout": auto_confirm_logout,
        }
        self.node = node
        self.idp_dir = Path(idp_dir)
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.issuer = ""
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._config_file: IO[str] | None = None

    # --- context manager -------------------------------------------------------------
    def __enter__(self) -> OidcIdp:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- endpoints (fixed by oidc-provider's default routes) ---------------------------
    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def authorization_endpoint(self) -> str:
        return f"{self.issuer}/auth"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def userinfo_endpoint(self) -> str:
        return f"{self.issuer}/me"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def end_session_endpoint(self) -> str:
        return f"{self.issuer}/session/end"

    # --- lifecycle --------------------------------------------------------------------
    def _check_installed(self) -> str:
        node = shutil.which(self.node)
        if node is None:
            raise OidcIdpError(
                f"node ({self.node!r}) was not found on PATH: the OpenID Connect end-to-end "
                "tests need Node.js 20 or later"
            )
        package = self.idp_dir / "node_modules" / "oidc-provider" / "package.json"
        if not package.is_file():
            raise OidcIdpError(
                f"{self.idp_dir / 'node_modules'} is missing: install the test identity "
                f"provider with `{INSTALL_HINT}` (scripts/test does this)"
            )
        return node

    def start(self) -> None:
        if self.process is not None:
            raise OidcIdpError("this identity provider is already running")
        node = self._check_installed()
        self._config_file = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w", prefix="keyward-idp-", suffix=".json", encoding="utf-8"
        )
        json.dump(self.config, self._config_file)
        self._config_file.flush()
        # A file, not a pipe: nobody reads the output while it runs. Closed by stop().
        self._log = tempfile.NamedTemporaryFile(prefix="keyward-idp-", suffix=".log")  # noqa: SIM115
        env = dict(os.environ)
        env.update({"PORT": "0", "IDP_CONFIG": self._config_file.name, "NO_COLOR": "1"})
        env.update(self.extra_env)
        self.process = subprocess.Popen(
            [node, str(self.idp_dir / "server.mjs")],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for line in self.output().splitlines():
                if line.startswith("READY "):
                    self.issuer = line.split(" ", 1)[1].strip()
                    self.port = urlsplit(self.issuer).port or 0
                    return
            if self.process.poll() is not None:
                raise OidcIdpError(
                    f"the identity provider exited with status {self.process.returncode} "
                    f"before it was ready:\n{self.output()}"
                )
            time.sleep(0.05)
        raise OidcIdpError(
            f"the identity provider did not print READY within {self.startup_timeout:.0f} s:\n"
            f"{self.output()}"
        )

    def output(self) -> str:
        """What the provider wrote on stdout and stderr so far."""
        if self._log is None:
            return ""
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM to the node process we started, SIGKILL if it does not stop in time."""
        process, self.process = self.process, None
        try:
            stop_process(process, self.stop_timeout)
        finally:
            for handle in (self._log, self._config_file):
                if handle is not None:
                    handle.close()
            self._log = None
            self._config_file = None

    # --- test control -----------------------------------------------------------------
    def _control(self, method: str, path: str, **kwargs: Any) -> Any:
        if not self.issuer:
            raise OidcIdpError("the identity provider is not running")
        with new_http_session() as http:
            response = http.request(method, f"{self.issuer}/__test__/{path}", timeout=10, **kwargs)
            with response:
                if response.status_code != 200:
                    raise OidcIdpError(
                        f"{method} /__test__/{path} answered {response.status_code}: "
                        f"{response.text}"
                    )
                return response.json()

    def rotate_keys(self, keep_old: bool = False) -> str:
        """A new RS256 signing key (returned: its kid). ``keep_old`` keeps the previous keys
        in the JWKS (a graceful rotation); otherwise they are gone at once."""
        params = {"keep_old": "1"} if keep_old else {}
        return self._control("POST", "rotate-keys", params=params)["kid"]

    def signing_kid(self) -> str:
        """The kid of the key that signs now (without counting a JWKS fetch)."""
        return self._control("GET", "keys")["kid"]

    def published_kids(self) -> list[str]:
        """The kids in the JWKS, newest first (without counting a JWKS fetch)."""
        return self._control("GET", "keys")["kids"]

    def counters(self) -> dict[str, int]:
        """Requests served since the start or the last reset: discovery, jwks, authorization,
        token, userinfo, end_session."""
        return self._control("GET", "counters")

    def jwks_fetches(self) -> int:
        return self._control("GET", "jwks-fetches")["count"]

    def discovery_fetches(self) -> int:
        return self._control("GET", "discovery-fetches")["count"]

    def reset_counters(self) -> None:
        """Counters to zero; the recorded front- and back-channel logouts are forgotten."""
        self._control("POST", "reset-counters")

    def add_account(self, login: str, claims: Mapping[str, Any]) -> None:
        """Add (or replace) an account while the provider runs."""
        self._control("POST", "accounts", json={login: dict(claims)})

    def backchannel_logouts(self) -> list[dict[str, Any]]:
        """The logout tokens the provider sent: client_id, uri, logout_token, sub, sid, and
        status (the relying party's answer) or error (delivery failed, e.g. nothing listens
        there: the token can still be posted to the relying party by the test itself)."""
        return self._control("GET", "backchannel-logouts")

    def send_backchannel_logout(
        self, client_id: str, sub: str, sid: str | None = None
    ) -> dict[str, Any]:
        """Have the provider send a logout token now (as after a sign-out elsewhere)."""
        return self._control(
            "POST", "backchannel-logout", json={"client_id": client_id, "sub": sub, "sid": sid}
        )

    def frontchannel_logouts(self) -> list[dict[str, Any]]:
        """The front-channel logout URLs the provider rendered (client_id, url, sid)."""
        return self._control("GET", "frontchannel-logouts")


# --- driving the provider's pages ------------------------------------------------------
def new_http_session() -> requests.Session:
    """A requests session that ignores proxy settings from the environment (loopback only)."""
    session = requests.Session()
    session.trust_env = False
    return session


@dataclass
class _Form:
    action: str
    method: str
    id: str
    fields: dict[str, str] = field(default_factory=dict)


class _PageParser(HTMLParser):
    """Forms (with hidden and text inputs), iframes and the #continue link of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self.iframes: list[str] = []
        self.continue_href: str | None = None
        self._form: _Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._form = _Form(
                action=attributes.get("action", ""),
                method=attributes.get("method", "get").lower(),
                id=attributes.get("id", ""),
            )
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and attributes.get("name"):
            self._form.fields[attributes["name"]] = attributes.get("value", "")
        elif tag == "iframe" and attributes.get("src"):
            self.iframes.append(attributes["src"])
        elif tag == "a" and attributes.get("id") == "continue":
            self.continue_href = attributes.get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


def _parse_page(html: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@dataclass
class AuthorizationResponse:
    """Where the provider sends the browser back to the relying party, not followed.

    ``mode`` is "query" or "fragment" (a redirect: ``url`` is the whole Location) or
    "form_post" (an auto-submitting form: ``url`` is its action). ``params`` are the response
    parameters (code, id_token, state, iss, error, ...) from the query, the fragment or the
    form's hidden fields. ``redirect_uri`` is ``url`` without query and fragment.
    """

    mode: str
    url: str
    params: dict[str, str]

    @property
    def redirect_uri(self) -> str:
        return _without_query(self.url)

    @property
    def location(self) -> str:
        return self.url

    @property
    def fields(self) -> dict[str, str]:
        return self.params


@dataclass
class LogoutResponse:
    """The end of an RP-initiated sign-out at the provider, not followed.

    ``location`` is where the browser goes next (the post_logout_redirect_uri with state, or
    the provider's own "signed out" page). ``frontchannel_urls`` are the front-channel logout
    URLs the provider loaded in iframes (with iss and sid when the client asks for them).
    """

    location: str
    frontchannel_urls: list[str]


def _response_from_redirect(location: str) -> AuthorizationResponse:
    parts = urlsplit(location)
    if parts.fragment:
        return AuthorizationResponse("fragment", location, dict(parse_qsl(parts.fragment)))
    return AuthorizationResponse("query", location, dict(parse_qsl(parts.query)))


def _describe(response: requests.Response) -> str:
    return f"{response.request.method} {response.url} -> {response.status_code}:\n{response.text}"


def sign_in_with_http(
    authorize_url: str,
    login: str,
    password: str,
    *,
    session: requests.Session | None = None,
    max_steps: int = 10,
    timeout: float = 10.0,
) -> AuthorizationResponse:
    """Open ``authorize_url``, sign in on the provider's form, return the response to the RP.

    Redirects within the provider are followed; the one back to the relying party is not.
    With ``session`` (see ``new_http_session``) the provider's cookies are kept, e.g. for a
    later ``sign_out_with_http`` or a second sign-in without the form (single sign-on); if
    the provider's session already exists, no form is shown and ``login`` is not used.
    """
    own_session = session is None
    http = new_http_session() if own_session else session
    assert http is not None
    idp_origin = _origin(authorize_url)
    try:
        url, method, data = authorize_url, "GET", None
        signed_in = False
        for _ in range(max_steps):
            with http.request(
                method, url, data=data, allow_redirects=False, timeout=timeout
            ) as response:
                if response.is_redirect:
                    location = urljoin(response.url, response.headers["Location"])
                    if _origin(location) != idp_origin:
                        return _response_from_redirect(location)
                    url, method, data = location, "GET", None
                    continue
                page = _parse_page(response.text)
                login_form = next((f for f in page.forms if f.id == "login-form"), None)
                if login_form is not None:
                    if signed_in:
                        raise IdpFlowError(
                            f"the provider refused the sign-in: {_describe(response)}"
                        )
                    signed_in = True
                    url = urljoin(response.url, login_form.action)
                    method, data = "POST", {"login": login, "password": password}
                    continue
                if response.status_code == 200 and len(page.forms) == 1:
                    form = page.forms[0]
                    action = urljoin(response.url, form.action)
                    if form.method == "post" and _origin(action) != idp_origin:
                        return AuthorizationResponse("form_post", action, dict(form.fields))
                raise IdpFlowError(f"unexpected page from the provider: {_describe(response)}")
        raise IdpFlowError(f"no answer for the relying party after {max_steps} steps")
    finally:
        if own_session:
            http.close()


def sign_out_with_http(
    end_session_url: str,
    *,
    session: requests.Session,
    confirm: bool = True,
    timeout: float = 10.0,
) -> LogoutResponse:
    """Open the end-session URL (with id_token_hint, post_logout_redirect_uri, state, ...)
    in the provider session ``session`` and confirm the sign-out like the browser would
    (``confirm=False`` answers "No, stay signed in": only that client is signed out).

    The front-channel iframes are not loaded: their URLs are returned, for the test to call.
    """
    idp_origin = _origin(end_session_url)
    with session.get(end_session_url, allow_redirects=False, timeout=timeout) as response:
        if response.status_code != 200:
            raise IdpFlowError(f"the end-session page failed: {_describe(response)}")
        page = _parse_page(response.text)
        if not page.forms:
            raise IdpFlowError(f"the end-session page has no form: {_describe(response)}")
        form = page.forms[0]
        fields = dict(form.fields)
        if confirm:
            fields["logout"] = "yes"
        else:
            fields.pop("logout", None)
        action = urljoin(response.url, form.action)
    if _origin(action) != idp_origin:
        raise IdpFlowError(f"the end-session form posts elsewhere: {action}")
    with session.post(action, data=fields, allow_redirects=False, timeout=timeout) as response:
        if response.is_redirect:
            return LogoutResponse(urljoin(response.url, response.headers["Location"]), [])
        page = _parse_page(response.text)
        if response.status_code == 200 and page.continue_href is not None:
            return LogoutResponse(
                urljoin(response.url, page.continue_href),
                [urljoin(response.url, src) for src in page.iframes],
            )
        raise IdpFlowError(f"unexpected answer to the sign-out: {_describe(response)}")
