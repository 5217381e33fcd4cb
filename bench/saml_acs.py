"""SAML assertion consumer service requests per second through Keyward, with every check on,
against the same run's python3-saml verify-only rate.

Usage (from the repository root)::

    .venv/bin/python bench/saml_acs.py [--count K] [--warmup S] [--concurrency C]
        [--workers W] [--seconds N] [--rounds R] [--database-url URL] [--record]

Steps: migrate a fresh database (SQLite by default), create an account and a SAML provider
with just-in-time provisioning from the metadata of an in-process pysaml2 IdP
(tests/e2e/saml_idp.py IdpCore; ``flask providers create --protocol saml --metadata-file``),
start gunicorn with W sync workers (default: one per core) and register Keyward's SP
metadata (GET /saml/<scheme>/metadata) at the IdP.

Before any timing, S + K browser sessions (default 200 + 4000) each start an SP-initiated
sign-in: ``GET /sso/<guid>`` with a fresh cookie jar answers 303 to the IdP and keeps the
AuthnRequest's ID among that session's pending requests. For each, the IdP builds the
answer (pysaml2: Response, Assertion, NameID, AuthnStatement, attributes, bearer
SubjectConfirmation with Recipient and InResponseTo, AudienceRestriction, 30-minute
window) and signs its assertion (RSA-SHA256, exclusive C14N) with python-xmlsec in process:
pysaml2's own signing runs the xmlsec1 command once per signature (~40 ms), which would
make preparing thousands of answers take minutes. Every answer is different (its own ID,
assertion ID, InResponseTo and signature).

Timed: C client threads POST the answers to ``/signin-<scheme>`` (the ACS), each with the
cookie of the session that asked, as the relay page's same-origin re-post does. Each must
answer 303 to ``/`` with a new session cookie: python3-saml strict with the provider's
checks (signed assertion required, SHA-1 refused, exact Destination and Recipient from
PUBLIC_URL, Audience, InResponseTo matched to the session's pending request, validity
window, Issuer, NameID) and the replay cache (the saml_assertion_ids table on SQLite: a
unique INSERT per answer), then the sign-in rules (the ExternalLogin look-up), a new
session row and the audit event, all committed. S answers warm the workers up first; the
rate is K answers over the time they take.

The verify-only baseline is what any python3-saml service provider pays for the same
answers without Keyward: C processes run ``OneLogin_Saml2_Response.is_valid`` in strict mode
with a signed assertion required (same XSD caching as Keyward, no HTTP, no database), for N
seconds (default 10) before and after the ACS phase; its mean is the baseline.
``ratio = ACS/s / verify-only/s``. The target is >= 200 ACS requests/s per core; the
per-core figure is ACS/s / min(W, cores), and ``1000 / worker CPU per request`` is the rate
one core would reach if its worker never waited. Nothing is written to instance/.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import multiprocessing
import os
import platform
import queue
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

from password_login import bench_database  # noqa: E402
from password_login import cpu_model  # noqa: E402
from password_login import cpu_seconds  # noqa: E402
from password_login import embedded_environ  # noqa: E402
from password_login import flask_json  # noqa: E402
from password_login import free_port  # noqa: E402
from password_login import gunicorn  # noqa: E402
from password_login import worker_pids  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN_MARK = "<!-- saml_acs:begin -->"
END_MARK = "<!-- saml_acs:end -->"
COOKIE_NAME = "keyward_session"
SCHEME = "BenchSaml"
TARGET_PER_CORE = 200.0
IDP_URL = "http://127.0.0.1:9"  # never contacted: the IdP runs in this process
USER = {
    "name_id": "ada-persistent-0001",
    "attributes": {
        "email": ["ada@bench.example"],
        "firstName": ["Ada"],
        "lastName": ["Lovelace"],
        "groups": ["staff", "engineering"],
    },
}
# Longer than preparing and running a large --count takes: the answers must still be valid.
ANSWER_LIFETIME = datetime.timedelta(minutes=30)
NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
}


# --- HTTP --------------------------------------------------------------------------------
def http(
    port: int, method: str, path: str, *, cookie: str | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection; (status, headers lower-cased, body). Set-Cookie
    is reduced to the session cookie's value (``cookie`` key). A minimal client, as in
    password_login.py: the load generator shares the cores it measures."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "User-Agent: keyward-bench/1",
        "Connection: close",
    ]
    if cookie:
        lines.append(f"Cookie: {COOKIE_NAME}={cookie}")
    if body is not None:
        lines.append("Content-Type: application/x-www-form-urlencoded")
        lines.append(f"Content-Length: {len(body)}")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "set-cookie":
            key, _, cookie_value = value.split(";", 1)[0].partition("=")
            if key == COOKIE_NAME:
                headers["cookie"] = cookie_value
        else:
            headers[name] = value
    length = headers.get("content-length")
    if length is not None and int(length) != len(content):
        raise OSError(f"body of {len(content)} bytes, Content-Length {length}")
    return int(status_line.split(" ", 2)[1]), headers, content


# --- the IdP's answers ---------------------------------------------------------------------
class Signer:
    """Enveloped RSA-SHA256 signatures over the assertion with python-xmlsec (the same
    shape IdpCore._sign makes with the xmlsec1 command)."""

    def __init__(self, key_pem: str, cert_pem: str) -> None:
        import xmlsec

        self.xmlsec = xmlsec
        self.key = xmlsec.Key.from_memory(key_pem.encode(), xmlsec.constants.KeyDataFormatPem)
        self.key.load_cert_from_memory(cert_pem.encode(), xmlsec.constants.KeyDataFormatPem)

    def sign_assertion(self, xml: str) -> str:
        from lxml import etree

        xmlsec = self.xmlsec
        root = etree.fromstring(xml.encode())
        assertion = root.find("saml:Assertion", NS)
        signature = xmlsec.template.create(
            assertion, xmlsec.constants.TransformExclC14N, xmlsec.constants.TransformRsaSha256
        )
        # Core 5.4.1: the signature goes right after the Issuer.
        assertion.find("saml:Issuer", NS).addnext(signature)
        reference = xmlsec.template.add_reference(
            signature, xmlsec.constants.TransformSha256, uri="#" + assertion.get("ID")
        )
        xmlsec.template.add_transform(reference, xmlsec.constants.TransformEnveloped)
        xmlsec.template.add_transform(reference, xmlsec.constants.TransformExclC14N)
        xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(signature))
        xmlsec.tree.add_ids(assertion, ["ID"])
        context = xmlsec.SignatureContext()
        context.key = self.key
        context.sign(signature)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode()


@dataclass
class Answer:
    cookie: str
    body: bytes
    in_response_to: str
    encoded: str


def prepare(port: int, guid: str, core, signer: Signer, count: int, threads: int) -> list[Answer]:
    """``count`` sessions, each with a pending AuthnRequest, and the IdP's signed answer to
    each (GET /sso/<guid> in ``threads`` threads; the IdP's work in this thread)."""
    from tests.e2e.saml_idp import query_params

    started: queue.Queue = queue.Queue()
    errors: list[str] = []

    def ask(n: int) -> None:
        for _ in range(n):
            try:
                status, headers, _ = http(port, "GET", f"/sso/{guid}")
            except OSError as exc:
                errors.append(f"GET /sso: {exc}")
                continue
            if status != 303 or "cookie" not in headers:
                errors.append(f"GET /sso: {status}")
                continue
            started.put((headers["cookie"], headers["location"]))

    shares = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    workers = [threading.Thread(target=ask, args=(n,), daemon=True) for n in shares]
    for worker in workers:
        worker.start()
    answers: list[Answer] = []
    while len(answers) + len(errors) < count:
        try:
            cookie, location = started.get(timeout=1)
        except queue.Empty:
            if not any(worker.is_alive() for worker in workers):
                break
            continue
        asked = core.parse_authn_request(query_params(location))
        xml = core.response_xml(
            "ada",
            sp_entity_id=asked["issuer"],
            acs=asked["acs"],
            in_response_to=asked["id"],
            sign="none",
        )
        encoded = base64.b64encode(signer.sign_assertion(xml).encode()).decode()
        body = urllib.parse.urlencode({"SAMLResponse": encoded}).encode()
        answers.append(Answer(cookie, body, asked["id"], encoded))
    for worker in workers:
        worker.join()
    if errors:
        raise SystemExit(f"preparing the sessions failed: {errors[:5]} ({len(errors)} in all)")
    return answers


# --- the ACS phase -------------------------------------------------------------------------
@dataclass
class AcsRun:
    count: int
    seconds: float
    failures: dict[str, int]
    latencies_ms: list[float]
    server_cpu_ms: float | None
    client_cpu_ms: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def post_answers(port: int, answers: list[Answer], concurrency: int, pids: list[int]) -> AcsRun:
    """POST every answer once, C at a time; (the run's figures)."""
    pending = iter(answers)
    lock = threading.Lock()
    failures: dict[str, int] = {}
    latencies: list[float] = []

    def loop() -> None:
        while True:
            with lock:
                answer = next(pending, None)
            if answer is None:
                return
            began = time.perf_counter()
            try:
                status, headers, _ = http(
                    port, "POST", f"/signin-{SCHEME}", cookie=answer.cookie, body=answer.body
                )
            except OSError as exc:
                reason = type(exc).__name__
            else:
                if status != 303:
                    reason = f"ACS {status}"
                elif headers.get("location") not in ("/", f"http://127.0.0.1:{port}/"):
                    reason = f"ACS redirected to {headers.get('location')}"
                elif not headers.get("cookie") or headers["cookie"] == answer.cookie:
                    reason = "ACS: session id not rotated"
                else:
                    reason = ""
            with lock:
                if reason:
                    failures[reason] = failures.get(reason, 0) + 1
                else:
                    latencies.append(1000 * (time.perf_counter() - began))

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
    cpu_start, client_start = cpu_seconds(pids), time.process_time()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    cpu_end, client_cpu = cpu_seconds(pids), time.process_time() - client_start
    count = len(latencies)
    server_cpu = None
    if cpu_start is not None and cpu_end is not None and count:
        server_cpu = 1000 * (cpu_end - cpu_start) / count
    return AcsRun(
        count=count,
        seconds=seconds,
        failures=failures,
        latencies_ms=sorted(latencies),
        server_cpu_ms=server_cpu,
        client_cpu_ms=1000 * client_cpu / max(count, 1),
    )


# --- the verify-only baseline ------------------------------------------------------------
def _verify_worker(settings: dict, acs: str, answers, seconds, barrier, results) -> None:
    from onelogin.saml2.response import OneLogin_Saml2_Response
    from onelogin.saml2.settings import OneLogin_Saml2_Settings

    # Keyward's module compiles python3-saml's XSDs once per thread instead of per message;
    # importing it gives the baseline the same advantage (nothing else of Keyward runs).
    import app.services.saml  # noqa: F401

    parts = urllib.parse.urlsplit(acs)
    saml_settings = OneLogin_Saml2_Settings(settings, sp_validation_only=True)

    def verify(encoded: str, request_id: str) -> None:
        data = {
            "https": "off",
            "http_host": parts.netloc,
            "script_name": parts.path,
            "post_data": {"SAMLResponse": encoded},
            "get_data": {},
        }
        response = OneLogin_Saml2_Response(saml_settings, encoded)
        response.is_valid(data, request_id, raise_exceptions=True)

    verify(*answers[0])
    barrier.wait()
    started, cpu_started, count = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - started < seconds:
        verify(*answers[count % len(answers)])
        count += 1
    results.put((count, time.perf_counter() - started, time.process_time() - cpu_started))


@dataclass
class VerifyRun:
    per_second: float
    cpu_ms: float


def verify_only_rate(
    settings: dict, acs: str, answers: list[Answer], processes: int, seconds: float
) -> VerifyRun:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    sample = [(a.encoded, a.in_response_to) for a in answers[:200]]
    workers = [
        context.Process(
            target=_verify_worker, args=(settings, acs, sample, seconds, barrier, results)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    rows = []
    deadline = time.monotonic() + seconds + 120
    while len(rows) < processes:
        try:
            rows.append(results.get(timeout=1))
        except queue.Empty:
            if any(w.exitcode not in (None, 0) for w in workers) or time.monotonic() > deadline:
                for worker in workers:
                    worker.terminate()
                raise SystemExit("a verify-only process failed or hung") from None
    for worker in workers:
        worker.join()
    count = sum(row[0] for row in rows)
    return VerifyRun(
        per_second=sum(row[0] / row[1] for row in rows),
        cpu_ms=1000 * sum(row[2] for row in rows) / max(count, 1),
    )


def library_settings(sp_entity_id: str, acs: str, idp_entity_id: str, cert: str) -> dict:
    """python3-saml settings of a plain strict SP requiring signed assertions."""
    return {
        "strict": True,
        "sp": {
            "entityId": sp_entity_id,
            "assertionConsumerService": {
                "url": acs,
                "binding": "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST",
            },
        },
        "idp": {
            "entityId": idp_entity_id,
            "singleSignOnService": {
                "url": f"{IDP_URL}/sso",
                "binding": "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect",
            },
            "x509cert": cert,
        },
        "security": {
            "wantAssertionsSigned": True,
            "wantNameId": True,
            "wantAttributeStatement": False,
            "rejectDeprecatedAlgorithm": True,
            "allowSingleLabelDomains": True,
        },
    }


# --- report --------------------------------------------------------------------------------
def render_table(result: dict) -> str:
    run: AcsRun = result["run"]
    verify: list[VerifyRun] = result["verify"]
    lat = run.latencies_ms or [0.0]
    cpu = f"{run.server_cpu_ms:.2f} ms" if run.server_cpu_ms else "n/a"
    one_core = f"{1000 / run.server_cpu_ms:.0f} /s" if run.server_cpu_ms else "n/a"
    rows = [
        ("verify-only phases", " / ".join(f"{v.per_second:.1f}" for v in verify) + " /s"),
        ("verify-only mean", f"{result['baseline']:.1f} /s"),
        (
            "ACS requests",
            f"{run.per_second:.1f} /s ({run.count} in {run.seconds:.1f} s, "
            f"C={result['concurrency']})",
        ),
        ("ACS per core", f"{result['per_core']:.1f} /s {result['verdict']} (target >= 200)"),
        ("ratio ACS / verify-only", f"{result['ratio']:.3f}"),
        (
            "ACS p50 / p95 / p99",
            f"{_pct(lat, 50):.1f} / {_pct(lat, 95):.1f} / {_pct(lat, 99):.1f} ms",
        ),
        ("worker CPU per request", cpu),
        ("one core at that CPU", one_core),
        (
            "python3-saml CPU per verify",
            f"{statistics.fmean(v.cpu_ms for v in verify):.2f} ms (verify-only phases)",
        ),
        ("client CPU per request", f"{run.client_cpu_ms:.2f} ms"),
        ("prepared answers", f"{result['prepared']} in {result['prepare_seconds']:.1f} s"),
        ("failures", ", ".join(f"{k}: {v}" for k, v in run.failures.items()) or "none"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def _pct(values: list[float], pct: int) -> float:
    return values[min(len(values) - 1, len(values) * pct // 100)]


def record(result: dict) -> None:
    """Replace our marked block in RESULTS.md (appended when absent), keeping its history."""
    run: AcsRun = result["run"]
    text = RESULTS.read_text() if RESULTS.exists() else ""
    history: list[str] = []
    if BEGIN_MARK in text and END_MARK in text:
        head, rest = text.split(BEGIN_MARK, 1)
        block, tail = rest.split(END_MARK, 1)
        history = [line for line in block.splitlines() if re.match(r"^\| \d{4}-", line)]
    else:
        head, tail = (text.rstrip() + "\n\n" if text else ""), "\n"
    history.append(
        f"| {result['date']} | {result['nproc']} | W={result['workers']} C={result['concurrency']} "
        f"K={run.count} | {result['database']} | "
        + " / ".join(f"{v.per_second:.1f}" for v in result["verify"])
        + f" | {run.per_second:.1f} | {result['per_core']:.1f} | {result['ratio']:.3f} | "
        + (f"{run.server_cpu_ms:.2f} ms" if run.server_cpu_ms else "n/a")
        + f" | {result['verdict']} |"
    )
    block = "\n".join(
        [
            BEGIN_MARK,
            "### saml_acs: latest run",
            "",
            f"{result['date']}; nproc {result['nproc']} ({result['cpu']}), Python "
            f"{result['python']}; {result['database']} (replay cache: the saml_assertion_ids "
            f"table); gunicorn sync workers W={result['workers']}, client threads "
            f"C={result['concurrency']}; {result['warmup']} warm-up answers, then "
            f"{run.count} timed; verify-only {len(result['verify'])} x {result['seconds']:g} s.",
            "",
            "```",
            render_table(result),
            "```",
            "",
            "### saml_acs: history",
            "",
            "| date | nproc | params | database | verify-only/s per phase | ACS/s | ACS/s per "
            "core | ratio | worker CPU per request | vs 200/s per core |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *history,
            END_MARK,
        ]
    )
    if (RESULTS.read_text() if RESULTS.exists() else "") != text:
        raise SystemExit("RESULTS.md changed while recording; run again")
    RESULTS.write_text(head + block + tail)
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


# --- main --------------------------------------------------------------------------------
def main() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=4000, help="timed ACS requests (4000)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed ACS requests (200)")
    parser.add_argument("--workers", type=int, default=cores, help=f"gunicorn workers ({cores})")
    parser.add_argument("--concurrency", type=int, default=None, help="client threads (2 x W)")
    parser.add_argument(
        "--seconds", type=float, default=10, help="each verify-only phase, seconds (10)"
    )
    parser.add_argument(
        "--database-url", default=None, help="sqlite:///NEW-FILE or postgresql://HOST:PORT/ANY"
    )
    parser.add_argument("--record", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    # Two clients per worker: one request in the worker while the next is on its way.
    args.concurrency = args.concurrency or 2 * args.workers

    from tests.e2e.saml_idp import IdpCore

    core = IdpCore(IDP_URL, users={"ada": USER}, lifetime=ANSWER_LIFETIME)
    signer = Signer(core.signing_key.key_pem, core.signing_key.cert_pem)
    with tempfile.TemporaryDirectory(prefix="keyward-bench-") as tmp:
        workdir = Path(tmp)
        metadata_file = workdir / "idp-metadata.xml"
        metadata_file.write_text(core.metadata_xml())
        with bench_database(args.database_url, workdir) as database_url:
            kind = "PostgreSQL" if database_url.startswith("postgres") else "SQLite"
            port = free_port()
            environ = embedded_environ(database_url, port)
            print(f"preparing the {kind} database, account and SAML provider", flush=True)
            subprocess.run(
                [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
                cwd=ROOT,
                env=environ,
                check=True,
                capture_output=True,
            )
            account = flask_json(environ, "accounts", "create", "--name", "Bench")
            provider = flask_json(
                environ,
                "providers",
                "create",
                "--account",
                str(account["id"]),
                "--protocol",
                "saml",
                "--display-name",
                "Bench SAML",
                "--scheme",
                SCHEME,
                "--metadata-file",
                str(metadata_file),
                "--signed",
                "assertion",
                "--jit",
                "--trust-email-verified",
            )
            log = workdir / "gunicorn.log"
            with gunicorn(environ, port, args.workers, log) as server:
                pids = worker_pids(server.pid)
                status, _, sp_metadata = http(port, "GET", f"/saml/{SCHEME}/metadata")
                if status != 200:
                    raise SystemExit(f"GET /saml/{SCHEME}/metadata answered {status}")
                core.add_sp_metadata(sp_metadata.decode())
                total = args.warmup + args.count
                print(f"preparing {total} sessions with a pending request, and answers", flush=True)
                began = time.perf_counter()
                answers = prepare(port, provider["id"], core, signer, total, args.workers)
                prepare_seconds = time.perf_counter() - began
                acs = provider["saml"]["acs_url"]
                settings = library_settings(
                    provider["saml"]["sp_entity_id"], acs, core.entity_id, core.signing_key.cert_pem
                )
                verify = []
                print(f"verify-only, {args.workers} processes, {args.seconds:g} s", flush=True)
                verify.append(verify_only_rate(settings, acs, answers, args.workers, args.seconds))
                print(f"ACS: {args.warmup} warm-up answers, then {args.count}", flush=True)
                warm = post_answers(port, answers[: args.warmup], args.concurrency, pids)
                if warm.failures:
                    print(f"warm-up failures: {warm.failures}\n{log.read_text()[-3000:]}")
                    return 1
                run = post_answers(port, answers[args.warmup :], args.concurrency, pids)
                print(f"verify-only again, {args.seconds:g} s", flush=True)
                verify.append(verify_only_rate(settings, acs, answers, args.workers, args.seconds))
                # An answer used once more, from a browser without the session: refused.
                status, _, _ = http(
                    port, "POST", f"/signin-{SCHEME}", body=answers[-1].body + b"&keyward_relay=1"
                )
                if status != 400:
                    raise SystemExit(f"a replayed answer was not refused (status {status})")

    baseline = statistics.fmean(v.per_second for v in verify)
    per_core = run.per_second / max(1, min(args.workers, cores or 1))
    result = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "database": kind,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "seconds": args.seconds,
        "verify": verify,
        "baseline": baseline,
        "run": run,
        "per_core": per_core,
        "ratio": run.per_second / baseline if baseline else 0.0,
        "verdict": "PASS" if per_core >= TARGET_PER_CORE else "FAIL",
        "prepared": len(answers),
        "prepare_seconds": prepare_seconds,
    }
    print()
    print(render_table(result))
    if args.record:
        record(result)
    return 0 if run.count and not run.failures else 1


if __name__ == "__main__":
    sys.exit(main())
