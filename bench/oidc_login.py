"""OpenID Connect code-flow sign-ins per second through Keyward, against the same run's
IdP-only rate, and the provider metadata (discovery/JWKS) fetches per 1,000 sign-ins.

Usage (from the repository root)::

    .venv/bin/python bench/oidc_login.py [--seconds N | --count K] [--concurrency C]
        [--workers W] [--warmup S] [--rounds R] [--database-url URL] [--baseline-userinfo]
        [--record]

Steps: start the test identity provider (node oidc-provider, tests/e2e/oidc_idp.py) with one
confidential client whose redirect URI is Keyward's callback on a port chosen now; migrate a
fresh database and create an account and a JIT provider for that IdP (``flask`` CLI
subprocesses); start gunicorn with W sync workers (default 2). One checked sign-in (the
cold one, then ``/whoami``) and S warm-up sign-ins (default 20) follow. Then, R times
(default once), an IdP-only phase and a Keyward phase of N seconds each (default 20, or K
sign-ins with --count), and a last IdP-only phase: the baseline is the mean of the phases
around the Keyward load, taken on the same machine at about the same time.

A Keyward sign-in, in each of C client threads (default 2), with a fresh cookie jar:
``GET /sso/<guid>`` (303 to the IdP), the IdP's login page signed in with ``requests`` in a
fresh IdP session (``sign_in_with_http``: the IdP really authenticates every time), then
``GET /signin-<scheme>?code=...`` on Keyward, which must answer 303 to ``/`` with a new
session cookie. Keyward redeems the code (token endpoint), validates the ID token and calls
userinfo in between.

An IdP-only sign-in is what any relying party has to do, without Keyward: the bench builds
the authorization request itself (state, nonce, PKCE S256), signs in the same way, then
redeems the code at the token endpoint (client_secret_basic) and checks the ID token
(signature against the JWKS fetched once, iss, aud, nonce, exp). With --baseline-userinfo it
calls userinfo too, as Keyward does. ``ratio = Keyward sign-ins/s / mean IdP-only/s``.

The IdP counts the requests it serves; they are reset before each Keyward phase and read
after it: discovery and JWKS fetches per 1,000 sign-ins (target 0 after warm-up), and token
and userinfo calls per sign-in (1 each). Nothing is written to instance/.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

from password_login import bench_database  # noqa: E402
from password_login import cpu_model  # noqa: E402
from password_login import cpu_seconds  # noqa: E402
from password_login import embedded_environ  # noqa: E402
from password_login import flask_cli  # noqa: E402
from password_login import flask_json  # noqa: E402
from password_login import free_port  # noqa: E402
from password_login import gunicorn  # noqa: E402
from password_login import worker_pids  # noqa: E402

from tests.e2e.oidc_idp import OidcIdp  # noqa: E402
from tests.e2e.oidc_idp import new_http_session  # noqa: E402
from tests.e2e.oidc_idp import sign_in_with_http  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN_MARK = "<!-- oidc_login:begin -->"
END_MARK = "<!-- oidc_login:end -->"
COOKIE_NAME = "keyward_session"

SCHEME = "BenchIdp"
CLIENT_ID = "keyward-bench"
CLIENT_SECRET = "bench-client-secret-" + "x" * 24
LOGIN = "ada"
PASSWORD = "any password"
ACCOUNT = {
    "sub": "ada-sub",
    "email": "ada@bench.example",
    "email_verified": True,
    "name": "Ada Lovelace",
    "given_name": "Ada",
    "family_name": "Lovelace",
}
TIMEOUT = 30.0


# --- setup -------------------------------------------------------------------------------
def client_metadata(public_url: str) -> dict:
    return {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [f"{public_url}/signin-{SCHEME}"],
        "post_logout_redirect_uris": [f"{public_url}/signout-callback-{SCHEME}"],
        "response_types": ["code"],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "client_secret_basic",
    }


# --- one sign-in -------------------------------------------------------------------------
class Failed(Exception):
    """A sign-in that did not end as it must; the message is the failure's category."""


@dataclass
class Steps:
    """Wall-clock seconds of the parts of one sign-in."""

    start: float  # Keyward: GET /sso; IdP-only: building the request (nothing)
    idp: float  # the IdP's pages, from the authorization request to the answer for the RP
    finish: float  # Keyward: the callback; IdP-only: token exchange (+ userinfo) and checks


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def keyward_sign_in(base: str, sso_url: str) -> Steps:
    t0 = time.perf_counter()
    with new_http_session() as browser:  # a fresh cookie jar
        response = browser.get(sso_url, allow_redirects=False, timeout=TIMEOUT)
        if response.status_code != 303:
            raise Failed(f"GET /sso {response.status_code}")
        first_cookie = browser.cookies.get(COOKIE_NAME)
        if not first_cookie:
            raise Failed("GET /sso: no session cookie")
        t1 = time.perf_counter()
        # A fresh IdP session (own requests session): the IdP shows its form every time.
        answer = sign_in_with_http(response.headers["Location"], LOGIN, PASSWORD, timeout=TIMEOUT)
        if answer.mode != "query" or "code" not in answer.params:
            raise Failed(f"IdP answered {answer.mode} without a code")
        if not answer.url.startswith(base + "/"):
            raise Failed("IdP sent the browser elsewhere")
        t2 = time.perf_counter()
        response = browser.get(answer.url, allow_redirects=False, timeout=TIMEOUT)
        t3 = time.perf_counter()
        if response.status_code != 303:
            raise Failed(f"callback {response.status_code}")
        if response.headers.get("Location") not in ("/", base + "/"):
            raise Failed(f"callback redirected to {response.headers.get('Location')}")
        cookie = browser.cookies.get(COOKIE_NAME)
        if not cookie or cookie == first_cookie:
            raise Failed("callback: session id not rotated")
    return Steps(t1 - t0, t2 - t1, t3 - t2)


class IdpOnly:
    """The relying party's minimum without Keyward: authorization request, token exchange,
    ID token checks (JWKS fetched once, as a caching RP would)."""

    def __init__(self, idp: OidcIdp, redirect_uri: str, userinfo: bool) -> None:
        from joserfc.jwk import KeySet

        self.idp = idp
        self.redirect_uri = redirect_uri
        self.userinfo = userinfo
        with new_http_session() as http:
            jwks = http.get(idp.jwks_uri, timeout=TIMEOUT).json()
        self.keys = KeySet.import_key_set(jwks)

    def sign_in(self) -> Steps:
        from joserfc import jwt

        t0 = time.perf_counter()
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        query = {
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": self.redirect_uri,
            "scope": "openid profile email",
            "state": state,
            "nonce": nonce,
            "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()),
            "code_challenge_method": "S256",
        }
        url = f"{self.idp.authorization_endpoint}?{urlencode(query)}"
        t1 = time.perf_counter()
        answer = sign_in_with_http(url, LOGIN, PASSWORD, timeout=TIMEOUT)
        if answer.params.get("state") != state or "code" not in answer.params:
            raise Failed("IdP answer without code or with another state")
        t2 = time.perf_counter()
        with new_http_session() as http:  # a new connection, like Keyward's outbound fetcher
            response = http.post(
                self.idp.token_endpoint,
                data={
                    "grant_type": "authorization_code",
                    "code": answer.params["code"],
                    "redirect_uri": self.redirect_uri,
                    "code_verifier": verifier,
                },
                auth=(CLIENT_ID, CLIENT_SECRET),
                headers={"Accept": "application/json"},
                timeout=TIMEOUT,
            )
            if response.status_code != 200:
                raise Failed(f"token endpoint {response.status_code}")
            tokens = response.json()
        token = jwt.decode(tokens["id_token"], self.keys, algorithms=["RS256"])
        claims = token.claims
        if (
            claims.get("iss") != self.idp.issuer
            or claims.get("aud") not in (CLIENT_ID, [CLIENT_ID])
            or claims.get("nonce") != nonce
            or claims.get("exp", 0) < time.time()
        ):
            raise Failed("ID token claims")
        if self.userinfo:
            with new_http_session() as http:
                response = http.get(
                    self.idp.userinfo_endpoint,
                    headers={"Authorization": f"Bearer {tokens['access_token']}"},
                    timeout=TIMEOUT,
                )
                if response.status_code != 200 or response.json().get("sub") != claims["sub"]:
                    raise Failed(f"userinfo {response.status_code}")
        t3 = time.perf_counter()
        return Steps(t1 - t0, t2 - t1, t3 - t2)


# --- load --------------------------------------------------------------------------------
@dataclass
class Sample:
    finished: float
    steps: Steps


@dataclass
class Phase:
    """Sign-ins of one measured phase (C threads for N seconds or K sign-ins)."""

    samples: list[Sample]  # completed inside the window
    attempts: int  # every sign-in started in the phase, including after the window
    failures: dict[str, int]
    seconds: float
    worker_cpu: float | None  # gunicorn workers, seconds
    idp_cpu: float | None  # node, seconds
    client_cpu: float  # this process (all client threads), seconds
    clock: tuple[float, float] = (0.0, 0.0)  # time.time() at its start and end (server log)

    @property
    def per_second(self) -> float:
        return len(self.samples) / self.seconds if self.seconds else 0.0


def run_phase(
    flow: Callable[[], Steps],
    concurrency: int,
    *,
    seconds: float | None,
    count: int | None,
    worker_pid_list: Sequence[int] = (),
    idp_pid: int | None = None,
) -> Phase:
    """C threads repeat ``flow`` until the window closes (N seconds) or K sign-ins started.

    The window opens when the threads start. With --seconds it closes at the deadline, while
    the clients are still busy: sign-ins finishing later are not counted in the rate (but
    are in ``attempts``). With --count it closes when the K-th sign-in finishes.
    """
    lock = threading.Lock()
    samples: list[Sample] = []
    failures: dict[str, int] = {}
    started = [0]
    stop = threading.Event()

    def take_ticket() -> bool:
        with lock:
            if stop.is_set() or (count is not None and started[0] >= count):
                return False
            started[0] += 1
            return True

    def loop() -> None:
        while take_ticket():
            try:
                steps = flow()
            except Failed as exc:
                reason = str(exc)
            except Exception as exc:  # every failure is counted, by its kind
                first_line = (str(exc).splitlines() or [""])[0]
                reason = f"{type(exc).__name__}: {first_line[:80]}"
            else:
                with lock:
                    samples.append(Sample(time.perf_counter(), steps))
                continue
            with lock:
                failures[reason] = failures.get(reason, 0) + 1

    def cpu() -> tuple[float | None, float | None]:
        workers = cpu_seconds(list(worker_pid_list)) if worker_pid_list else None
        return workers, (cpu_seconds([idp_pid]) if idp_pid else None)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
    worker_start, idp_start = cpu()
    client_start = time.process_time()
    clock_start = time.time()
    window_start = time.perf_counter()
    for thread in threads:
        thread.start()
    if seconds is not None:
        stop.wait(seconds)
        window_end = time.perf_counter()
        worker_end, idp_end = cpu()
        client_end = time.process_time()
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    else:
        for thread in threads:
            thread.join()
        window_end = time.perf_counter()
        worker_end, idp_end = cpu()
        client_end = time.process_time()

    def delta(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    return Phase(
        samples=[s for s in samples if s.finished <= window_end],
        attempts=started[0],
        failures=failures,
        seconds=window_end - window_start,
        worker_cpu=delta(worker_start, worker_end),
        idp_cpu=delta(idp_start, idp_end),
        client_cpu=client_end - client_start,
        clock=(clock_start, time.time()),
    )


def run_count(flow: Callable[[], Steps], concurrency: int, count: int) -> dict[str, int]:
    """Unmeasured sign-ins (warm-up): the failures by reason."""
    return run_phase(flow, concurrency, seconds=None, count=count).failures


# --- server log --------------------------------------------------------------------------
OUTBOUND_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*outbound (GET|POST) \S+?(/[^\s?]*) "
    r"-> (\d+), \d+ bytes, (\d+) ms"
)


def outbound_calls(log_text: str, phases: list[Phase]) -> dict[str, list[int]]:
    """Keyward's own timings of its calls to the IdP during the phases (app.services.outbound
    logs one line per request): {"POST /token": [ms, ...], "GET /me": [...], ...}."""
    calls: dict[str, list[int]] = {}
    for line in log_text.splitlines():
        match = OUTBOUND_LINE.match(line)
        if not match:
            continue
        stamp = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").timestamp()
        stamp += int(match[2]) / 1000
        if any(start <= stamp <= end for start, end in (p.clock for p in phases)):
            calls.setdefault(f"{match[3]} {match[4]}", []).append(int(match[6]))
    return calls


# --- summary -----------------------------------------------------------------------------
@dataclass
class Combined:
    count: int
    seconds: float
    attempts: int
    failures: dict[str, int]
    start_ms: float
    idp_ms: float
    finish_ms: float
    p50_ms: float
    p95_ms: float
    worker_cpu_ms: float | None
    idp_cpu_ms: float | None
    client_cpu_ms: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def combine(phases: list[Phase]) -> Combined:
    samples = [s for phase in phases for s in phase.samples]
    count = len(samples)
    failures: dict[str, int] = {}
    for phase in phases:
        for reason, n in phase.failures.items():
            failures[reason] = failures.get(reason, 0) + n
    totals = sorted(1000 * (s.steps.start + s.steps.idp + s.steps.finish) for s in samples) or [0]

    def mean_ms(part: str) -> float:
        return 1000 * statistics.fmean(getattr(s.steps, part) for s in samples) if samples else 0

    def per_sign_in(values: list[float | None]) -> float | None:
        if any(v is None for v in values) or not count:
            return None
        return 1000 * sum(v for v in values if v is not None) / count

    return Combined(
        count=count,
        seconds=sum(phase.seconds for phase in phases),
        attempts=sum(phase.attempts for phase in phases),
        failures=failures,
        start_ms=mean_ms("start"),
        idp_ms=mean_ms("idp"),
        finish_ms=mean_ms("finish"),
        p50_ms=totals[len(totals) // 2],
        p95_ms=totals[min(len(totals) - 1, int(len(totals) * 0.95))],
        worker_cpu_ms=per_sign_in([p.worker_cpu for p in phases]),
        idp_cpu_ms=per_sign_in([p.idp_cpu for p in phases]),
        client_cpu_ms=1000 * sum(p.client_cpu for p in phases) / max(count, 1),
    )


def add_counters(total: dict[str, int], more: dict[str, int]) -> None:
    for name, value in more.items():
        total[name] = total.get(name, 0) + value


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def render_table(result: dict) -> str:
    kw: Combined = result["keyward"]
    base: Combined = result["baseline"]
    counters = result["counters"]
    attempts = max(kw.attempts, 1)
    per_k = {name: 1000 * counters.get(name, 0) / attempts for name in ("discovery", "jwks")}
    warm = result["warmup_counters"]
    worker_ms = 1000 * result["workers"] * kw.seconds / max(kw.count, 1)
    idp_phases: list[Phase] = result["idp_phases"]
    rows = [
        ("IdP-only phases", " / ".join(f"{p.per_second:.1f}" for p in idp_phases) + " /s"),
        ("IdP-only mean", f"{result['baseline_rate']:.1f} sign-ins/s"),
        ("Keyward sign-ins", f"{kw.per_second:.1f} sign-ins/s ({kw.count} in {kw.seconds:.0f} s)"),
        ("ratio Keyward / IdP-only", f"{result['ratio']:.3f}"),
        (
            "discovery per 1,000",
            f"{per_k['discovery']:.1f} ({counters.get('discovery', 0)} in {kw.attempts} "
            "sign-ins after warm-up; target 0)",
        ),
        (
            "JWKS per 1,000",
            f"{per_k['jwks']:.1f} ({counters.get('jwks', 0)} in {kw.attempts}; target 0)",
        ),
        (
            "token, userinfo per sign-in",
            f"{counters.get('token', 0) / attempts:.3f}, "
            f"{counters.get('userinfo', 0) / attempts:.3f}",
        ),
        (
            "warm-up fetches",
            f"discovery {warm.get('discovery', 0)}, JWKS {warm.get('jwks', 0)} in the first "
            f"{result['warmup'] + 1} sign-ins (cold start, W={result['workers']} workers)",
        ),
        (
            "Keyward: /sso, IdP, callback",
            f"{kw.start_ms:.1f} / {kw.idp_ms:.1f} / {kw.finish_ms:.1f} ms (mean)",
        ),
        ("Keyward: flow p50 / p95", f"{kw.p50_ms:.1f} / {kw.p95_ms:.1f} ms"),
        ("Keyward -> IdP (server log)", outbound_summary(result["outbound"])),
        (
            "Keyward worker time",
            f"{worker_ms:.1f} ms wall (W x window / sign-ins), {_ms(kw.worker_cpu_ms)} CPU "
            "per sign-in",
        ),
        (
            "IdP-only: IdP, token+checks",
            f"{base.idp_ms:.1f} / {base.finish_ms:.1f} ms (mean"
            + (", userinfo included)" if result["baseline_userinfo"] else ")"),
        ),
        ("IdP-only: flow p50 / p95", f"{base.p50_ms:.1f} / {base.p95_ms:.1f} ms"),
        (
            "CPU per sign-in: IdP",
            f"{_ms(kw.idp_cpu_ms)} with Keyward, {_ms(base.idp_cpu_ms)} IdP-only (node)",
        ),
        (
            "CPU per sign-in: client",
            f"{_ms(kw.client_cpu_ms)} with Keyward, {_ms(base.client_cpu_ms)} IdP-only "
            "(this process)",
        ),
        (
            "failures",
            ", ".join(f"{k}: {v}" for k, v in {**kw.failures, **base.failures}.items()) or "none",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def outbound_summary(calls: dict[str, list[int]]) -> str:
    if not calls:
        return "n/a"
    names = {"POST /token": "token", "GET /me": "userinfo"}
    parts = [
        f"{names.get(call, call)} {statistics.fmean(ms):.1f} ms x {len(ms)}"
        for call, ms in sorted(calls.items(), key=lambda item: item[0] != "POST /token")
    ]
    return ", ".join(parts) + " (mean)"


def _params(result: dict) -> str:
    window = f"K={result['count']}" if result["count"] else f"N={result['seconds']:g}s"
    params = f"W={result['workers']} C={result['concurrency']} {window}"
    if result["rounds"] > 1:
        params += f" R={result['rounds']}"
    if result["baseline_userinfo"]:
        params += " +userinfo"
    return params


def record(result: dict) -> None:
    """Replace our marked block in RESULTS.md (appended at the end when absent), keeping its
    history rows. Nothing outside the markers is changed; the file is read just before the
    write, as others edit their own sections."""
    kw: Combined = result["keyward"]
    counters = result["counters"]
    attempts = max(kw.attempts, 1)
    row = (
        f"| {result['date']} | {result['nproc']} | {_params(result)} | {result['database']} | "
        + " / ".join(f"{p.per_second:.1f}" for p in result["idp_phases"])
        + f" | {kw.per_second:.1f} | {result['ratio']:.3f} | "
        f"{1000 * counters.get('discovery', 0) / attempts:.1f} / "
        f"{1000 * counters.get('jwks', 0) / attempts:.1f} | "
        f"{counters.get('token', 0) / attempts:.2f} | {_ms(kw.worker_cpu_ms)} |"
    )
    text = RESULTS.read_text() if RESULTS.exists() else ""
    history: list[str] = []
    if BEGIN_MARK in text and END_MARK in text:
        head, rest = text.split(BEGIN_MARK, 1)
        block, tail = rest.split(END_MARK, 1)
        history = [line for line in block.splitlines() if re.match(r"^\| \d{4}-", line)]
    else:
        head, tail = (text.rstrip() + "\n\n" if text else ""), "\n"
    history.append(row)
    block = "\n".join(
        [
            BEGIN_MARK,
            "### oidc_login: latest run",
            "",
            f"{result['date']}; nproc {result['nproc']} ({result['cpu']}), "
            f"Python {result['python']}, node {result['node']}; code {result['code']}; "
            f"{result['database']}; "
            f"gunicorn sync workers W={result['workers']}, client threads "
            f"C={result['concurrency']}, {result['rounds']} x "
            + (f"{result['count']} sign-ins" if result["count"] else f"{result['seconds']:g} s")
            + f" per phase after {result['warmup']} warm-up sign-ins"
            + ("; IdP-only baseline with userinfo" if result["baseline_userinfo"] else "")
            + ".",
            "",
            "```",
            render_table(result),
            "```",
            "",
            "### oidc_login: history",
            "",
            "| date | nproc | params | database | IdP-only/s per phase | Keyward/s | ratio | "
            "discovery / JWKS per 1,000 | token per sign-in | Keyward CPU per sign-in |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *history,
            END_MARK,
        ]
    )
    current = RESULTS.read_text() if RESULTS.exists() else ""
    if current != text:
        raise SystemExit("RESULTS.md changed while recording; run again")
    RESULTS.write_text(head + block + tail)
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


# --- main --------------------------------------------------------------------------------
def node_version() -> str:
    try:
        return subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def code_version() -> str:
    """The commit, and whether the working tree had uncommitted changes (the run used them)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "app", "config"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{commit or '?'}{' + uncommitted changes in app/ or config/' if dirty else ''}"


def check_first_sign_in(base: str, sso_url: str) -> None:
    """The cold sign-in, then /whoami in the same browser: really signed in, as the IdP user."""
    with new_http_session() as browser:
        response = browser.get(sso_url, allow_redirects=False, timeout=TIMEOUT)
        if response.status_code != 303:
            raise SystemExit(f"GET /sso answered {response.status_code}:\n{response.text[:2000]}")
        answer = sign_in_with_http(response.headers["Location"], LOGIN, PASSWORD)
        response = browser.get(answer.url, allow_redirects=False, timeout=TIMEOUT)
        if response.status_code != 303:
            raise SystemExit(f"the callback answered {response.status_code}:\n{response.text}")
        me = browser.get(f"{base}/whoami", timeout=TIMEOUT).json()
    if not me.get("authenticated") or me.get("subject") != ACCOUNT["sub"]:
        raise SystemExit(f"not signed in after the first sign-in: /whoami says {me}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--seconds", type=float, default=20, help="window per phase (20)")
    window.add_argument("--count", type=int, default=None, help="sign-ins per phase instead")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (2)")
    parser.add_argument("--concurrency", type=int, default=2, help="client threads (2)")
    parser.add_argument(
        "--warmup", type=int, default=20, help="unmeasured sign-ins before measuring (20)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate IdP-only and Keyward phases R times, then IdP-only once more (1)",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="sqlite:///NEW-FILE or postgresql://HOST:PORT/ANY (temporary SQLite)",
    )
    parser.add_argument(
        "--baseline-userinfo",
        action="store_true",
        help="the IdP-only baseline calls userinfo too, as Keyward does",
    )
    parser.add_argument("--server-log", default=None, help="copy gunicorn's log to this file")
    parser.add_argument("--record", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    seconds = None if args.count else args.seconds

    code = code_version()  # before the run: what gunicorn loads
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    idp = OidcIdp(clients=[client_metadata(base)], accounts={LOGIN: ACCOUNT})
    with tempfile.TemporaryDirectory(prefix="keyward-bench-") as tmp, idp:
        workdir = Path(tmp)
        with bench_database(args.database_url, workdir) as database_url:
            kind = "PostgreSQL" if database_url.startswith("postgres") else "SQLite"
            # The IdP is plain http on loopback: allowed for exactly its host:port.
            environ = embedded_environ(
                database_url, port, OUTBOUND_ALLOW_PRIVATE=f"127.0.0.1:{idp.port}"
            )
            print(f"IdP at {idp.issuer}; preparing the {kind} database, account and provider")
            flask_cli(environ, "db", "upgrade")
            account = flask_json(environ, "accounts", "create", "--name", "Bench")
            provider = flask_json(
                environ,
                "providers",
                "create",
                "--account",
                str(account["id"]),
                "--display-name",
                "Bench IdP",
                "--scheme",
                SCHEME,
                "--authority",
                idp.issuer,
                "--client-id",
                CLIENT_ID,
                "--client-secret",
                CLIENT_SECRET,
                "--jit",
            )
            sso_url = f"{base}/sso/{provider['id']}"
            redirect_uri = provider["callback_urls"]["signin"]

            log = workdir / "gunicorn.log"
            with gunicorn(environ, port, args.workers, log) as server:
                pids = worker_pids(server.pid)
                assert idp.process is not None
                idp_pid = idp.process.pid
                print("cold sign-in and /whoami", flush=True)
                check_first_sign_in(base, sso_url)
                print(f"warm-up: {args.warmup} sign-ins through Keyward", flush=True)
                warm_failures = run_count(
                    lambda: keyward_sign_in(base, sso_url), args.concurrency, args.warmup
                )
                warmup_counters = idp.counters()
                baseline = IdpOnly(idp, redirect_uri, args.baseline_userinfo)
                run_count(baseline.sign_in, args.concurrency, args.warmup)

                def measure(flow: Callable[[], Steps]) -> Phase:
                    return run_phase(
                        flow,
                        args.concurrency,
                        seconds=seconds,
                        count=args.count,
                        worker_pid_list=pids,
                        idp_pid=idp_pid,
                    )

                what = f"{args.count} sign-ins" if args.count else f"{args.seconds:g} s"
                idp_phases: list[Phase] = []
                kw_phases: list[Phase] = []
                counters: dict[str, int] = {}
                for round_ in range(1, args.rounds + 1):
                    step = f"[{round_}/{args.rounds}]"
                    print(f"{step} IdP-only, C={args.concurrency}, {what}", flush=True)
                    idp_phases.append(measure(baseline.sign_in))
                    print(
                        f"{step} Keyward, W={args.workers} C={args.concurrency}, {what}",
                        flush=True,
                    )
                    idp.reset_counters()
                    kw_phases.append(measure(lambda: keyward_sign_in(base, sso_url)))
                    add_counters(counters, idp.counters())
                print(f"IdP-only again, {what}", flush=True)
                idp_phases.append(measure(baseline.sign_in))
            log_text = log.read_text(errors="replace")
            if args.server_log:
                Path(args.server_log).write_text(log_text)

    keyward = combine(kw_phases)
    base_run = combine(idp_phases)
    baseline_rate = statistics.fmean(p.per_second for p in idp_phases)
    result = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "node": node_version(),
        "code": code,
        "database": kind,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "count": args.count,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "baseline_userinfo": args.baseline_userinfo,
        "keyward": keyward,
        "baseline": base_run,
        "idp_phases": idp_phases,
        "baseline_rate": baseline_rate,
        "ratio": keyward.per_second / baseline_rate if baseline_rate else 0.0,
        "counters": counters,
        "warmup_counters": warmup_counters,
        "outbound": outbound_calls(log_text, kw_phases),
    }
    print()
    print(render_table(result))
    if warm_failures:
        print(f"warm-up failures: {warm_failures}")
    problems = [line for line in log_text.splitlines() if "Traceback" in line or "ERROR" in line]
    if problems:
        print(f"gunicorn log: {len(problems)} error lines, first: {problems[0][:200]}")
    if args.record:
        record(result)
    clean = keyward.count and not keyward.failures and not base_run.failures
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
