"""services.outbound: the SSRF rules, redirects, size and time caps, TLS, and what goes out.

Fake host names resolve through a patched socket.getaddrinfo, so the address rules are
tested without DNS; everything that really connects talks to servers started here on
127.0.0.1 (the conftest blocks every other address).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID
from flask import Flask

from app import create_app
from app.extensions import db
from app.services import outbound
from app.services.errors import ServiceError
from app.services.outbound import OutboundError
from app.services.outbound import OutboundFailed
from app.services.outbound import OutboundRefused
from app.services.outbound import OutboundTooLarge
from tests.conftest import base_config
from tests.helpers import serving

FAKE_HOST = "idp.example.test"


# --- a small scriptable HTTP(S) server ------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    # Join handler threads on close, so no socket outlives the test (filterwarnings=error
    # turns a late ResourceWarning into a failure of some other test).
    daemon_threads = False
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stop = threading.Event()
        self.requests: list[SimpleNamespace] = []

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str = "/", scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        if "Content-Length" not in headers and headers.get("X-No-Length") is None:
            headers["Content-Length"] = str(len(body))
        for name, value in headers.items():
            if name != "X-No-Length":
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append(
            SimpleNamespace(method=self.command, path=self.path, headers=self.headers, body=body)
        )
        route = parts.path
        if route == "/json":
            self._send(200, b'{"ok": true}')
        elif route == "/echo":
            echo = {
                "method": self.command,
                "path": self.path,
                "headers": {name.lower(): value for name, value in self.headers.items()},
                "body": body.decode(),
            }
            self._send(200, json.dumps(echo).encode())
        elif route == "/html":
            self._send(
                200, "<p>café</p>".encode("latin-1"), {"Content-Type": "text/html; charset=latin-1"}
            )
        elif route == "/redirect":
            self._send(int(query.get("status", "302")), b"", {"Location": query["to"]})
        elif route.startswith("/loop/"):
            hop = int(route.rsplit("/", 1)[1])
            self._send(302, b"", {"Location": f"/loop/{hop + 1}"})
        elif route == "/big":
            size = int(query["size"])
            headers = {} if query.get("length") == "1" else {"X-No-Length": "1"}
            self._send(200, b"x" * size, headers)
        elif route == "/huge":  # announces a gigabyte, sends a little, then stalls
            self._send(200, b"x" * 10, {"Content-Length": str(10**9)})
            self.wfile.flush()
            self.server.stop.wait(5)
        elif route == "/slow":
            self.server.stop.wait(5)
            self._send(200, b"{}")
        elif route == "/late-body":
            time.sleep(0.5)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.flush()
            self.server.stop.wait(3)
            self.wfile.write(b"{}")
        elif route == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            while not self.server.stop.wait(0.1):
                self.wfile.write(b"x")
                self.wfile.flush()
        else:
            self._send(404, b"{}")


@contextmanager
def _serve(tls: ssl.SSLContext | None = None) -> Iterator[_Server]:
    server = _Server()
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    with serving(server):
        try:
            yield server
        finally:
            server.stop.set()  # wake /slow and /drip handlers before the shutdown


@pytest.fixture
def server() -> Iterator[_Server]:
    with _serve() as running:
        yield running


@pytest.fixture
def other_server() -> Iterator[_Server]:
    with _serve() as running:
        yield running


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- fake DNS and connection tracking -------------------------------------------------------------
@pytest.fixture
def fake_dns(monkeypatch) -> SimpleNamespace:
    """Names in ``table`` resolve to the listed addresses; every such lookup is recorded."""
    table: dict[str, list[str]] = {}
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host not in table:
            return real(host, port, family, type, proto, flags)
        lookups.append(host)
        answers = []
        for address in table[host]:
            if ":" in address:
                sockaddr = (address, port, 0, 0)
                answers.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", sockaddr))
            else:
                answers.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return answers

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return SimpleNamespace(table=table, lookups=lookups)


@pytest.fixture
def connections(monkeypatch) -> list[tuple]:
    """Every address a socket connects to during the test (then the conftest's rules apply)."""
    seen: list[tuple] = []
    inner = socket.socket.connect

    def connect(self, address):
        seen.append(address)
        return inner(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


@pytest.fixture(scope="module")
def rules_app(database_url) -> Iterator[Flask]:
    """One app for the many tests that only read settings, instead of one app per test."""
    app = create_app(base_config(database_url))
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def ctx(rules_app) -> Iterator[Flask]:
    with rules_app.app_context():
        yield rules_app


@contextmanager
def _context(make_app, **settings: str) -> Iterator[None]:
    with make_app(**settings).app_context():
        yield


# --- URL rules ------------------------------------------------------------------------------------
def test_errors_are_service_errors():
    for error in (OutboundRefused, OutboundFailed, OutboundTooLarge):
        assert issubclass(error, OutboundError)
    assert issubclass(OutboundError, ServiceError)


def test_http_is_refused_by_default(ctx, fake_dns, connections):
    fake_dns.table[FAKE_HOST] = ["93.184.216.34"]
    with pytest.raises(OutboundRefused, match="only https"):
        outbound.check_url(f"http://{FAKE_HOST}/.well-known/openid-configuration")
    with pytest.raises(OutboundRefused, match="only https"):
        outbound.fetch(f"http://{FAKE_HOST}/")
    assert connections == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://idp.example.test/metadata.xml",
        "file:///etc/passwd",
        "gopher://idp.example.test/",
        "//idp.example.test/",
        "https:///path",
        "https://idp.example.test:99999/",
        "https://idp.example.test/ space",
        "https://[fe80::1%25eth0]/",
        "",
    ],
)
def test_malformed_and_other_schemes_are_refused(ctx, url):
    with pytest.raises(OutboundRefused):
        outbound.check_url(url)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "0.0.0.0",  # noqa: S104 - an address the fetcher must refuse, nothing binds to it
        "::",
        "100.64.0.1",  # RFC 6598 shared address space
        "198.18.0.1",  # benchmarking
        "224.0.0.1",  # multicast
        "255.255.255.255",
        "240.0.0.1",  # reserved
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b:1::1",  # local-use NAT64
        "2001::1",  # Teredo
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",  # site-local
        "ff0e::1",  # global-scope multicast
        "2001:db8::1",  # documentation
    ],
)
def test_private_addresses_are_refused(ctx, fake_dns, connections, address):
    fake_dns.table[FAKE_HOST] = [address]
    with pytest.raises(OutboundRefused, match="not public") as error:
        outbound.check_url(f"https://{FAKE_HOST}/")
    # The admin sees the host name, never the internal address it resolved to.
    assert address not in str(error.value)
    with pytest.raises(OutboundRefused):
        outbound.fetch(f"https://{FAKE_HOST}/jwks")
    assert connections == []


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://[::1]:8443/",
        "https://2130706433/",  # 127.0.0.1 written as one number
        "https://0x7f.1/",
        "https://[::ffff:a9fe:a9fe]/",
    ],
)
def test_private_ip_literals_are_refused(ctx, connections, url):
    with pytest.raises(OutboundRefused, match="public"):
        outbound.fetch(url)
    assert connections == []


def test_public_addresses_pass(ctx, fake_dns):
    fake_dns.table[FAKE_HOST] = ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    outbound.check_url(f"https://{FAKE_HOST}/.well-known/openid-configuration")
    outbound.check_url("https://8.8.8.8/")
    # IPv4 addresses written in IPv6 forms count as the IPv4 address they carry: DNS64 on
    # IPv6-only hosts answers 64:ff9b::/96 for every public IdP.
    fake_dns.table[FAKE_HOST] = ["64:ff9b::5db8:d822", "2002:5db8:d822::1", "::ffff:93.184.216.34"]
    outbound.check_url(f"https://{FAKE_HOST}/")
    assert fake_dns.lookups == [FAKE_HOST, FAKE_HOST]


def test_one_private_address_among_public_ones_is_refused(ctx, fake_dns, connections):
    fake_dns.table[FAKE_HOST] = ["93.184.216.34", "10.0.0.7"]
    with pytest.raises(OutboundRefused):
        outbound.fetch(f"https://{FAKE_HOST}/")
    assert connections == []


def test_unresolvable_host_fails(ctx, fake_dns):
    fake_dns.table[FAKE_HOST] = []
    with pytest.raises(OutboundFailed, match="could not resolve"):
        outbound.check_url(f"https://{FAKE_HOST}/")


@pytest.mark.parametrize(
    "url",
    [
        "https://admin:s3cret@idp.example.test/",
        "https://admin@idp.example.test/",
        "https://idp.example.test@10.0.0.1/",
    ],
)
def test_credentials_in_url_are_refused(ctx, fake_dns, url):
    fake_dns.table[FAKE_HOST] = ["93.184.216.34"]
    with pytest.raises(OutboundRefused, match="user name or password") as error:
        outbound.check_url(url)
    assert "s3cret" not in str(error.value)


# --- OUTBOUND_ALLOW_PRIVATE -----------------------------------------------------------------------
def test_allow_list_allows_http_to_that_host_and_port_only(make_app, server):
    with _context(make_app, OUTBOUND_ALLOW_PRIVATE=f" example.org:443, 127.0.0.1:{server.port} "):
        response = outbound.fetch(server.url("/json"))
        assert response.status == 200
        assert response.json() == {"ok": True}
        assert response.url == server.url("/json")
        outbound.check_url(server.url("/anything?x=1"))
        # Another port, another spelling of the host, or https on another port: refused.
        for url in (
            f"http://127.0.0.1:{_unused_port()}/",
            f"https://127.0.0.1:{_unused_port()}/",
            f"http://localhost:{server.port}/",
            "http://127.0.0.1/",
        ):
            with pytest.raises(OutboundRefused):
                outbound.check_url(url)


def test_allow_list_matches_ipv6_literals_with_brackets(make_app, fake_dns):
    with _context(make_app, OUTBOUND_ALLOW_PRIVATE="[::1]:8443"):
        outbound.check_url("http://[::1]:8443/")
        with pytest.raises(OutboundRefused):
            outbound.check_url("http://[::1]:8444/")


def test_true_allows_everything(make_app, server, fake_dns):
    fake_dns.table[FAKE_HOST] = ["10.0.0.1"]
    with _context(make_app, OUTBOUND_ALLOW_PRIVATE="true"):
        assert outbound.fetch(server.url("/json")).json() == {"ok": True}
        outbound.check_url(f"http://{FAKE_HOST}/")
        outbound.check_url("https://169.254.169.254/")


def test_connects_to_the_vetted_address_not_the_name_again(make_app, server, fake_dns):
    # DNS rebinding: a second lookup could answer with another address; there must be none.
    fake_dns.table[FAKE_HOST] = ["127.0.0.1"]
    with _context(make_app, OUTBOUND_ALLOW_PRIVATE=f"{FAKE_HOST}:{server.port}"):
        echo = outbound.fetch(server.url("/echo", host=FAKE_HOST)).json()
    assert fake_dns.lookups == [FAKE_HOST]
    assert echo["headers"]["host"] == f"{FAKE_HOST}:{server.port}"
    assert echo["headers"]["accept-encoding"] == "identity"


def test_the_next_vetted_address_is_tried_when_one_refuses(make_app, server, fake_dns):
    # Nothing listens on 127.0.0.2 (like an AAAA record on a host without IPv6 routing).
    fake_dns.table[FAKE_HOST] = ["127.0.0.2", "127.0.0.1"]
    with _context(make_app, OUTBOUND_ALLOW_PRIVATE=f"{FAKE_HOST}:{server.port}"):
        assert outbound.fetch(server.url("/json", host=FAKE_HOST)).json() == {"ok": True}
    assert fake_dns.lookups == [FAKE_HOST]


# --- redirects ------------------------------------------------------------------------------------
@pytest.fixture
def local(make_app, server, other_server) -> Iterator[None]:
    allowed = f"127.0.0.1:{server.port},127.0.0.1:{other_server.port}"
    with _context(make_app, OUTBOUND_ALLOW_PRIVATE=allowed):
        yield


def test_relative_redirect_is_followed(local, server):
    response = outbound.fetch(server.url("/redirect?to=/json&status=301"))
    assert response.status == 200
    assert response.json() == {"ok": True}
    assert response.url == server.url("/json")


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/",
        "file:///etc/passwd",
    ],
)
def test_redirect_to_a_refused_target_is_not_followed(local, server, connections, location):
    with pytest.raises(OutboundRefused):
        outbound.fetch(server.url(f"/redirect?to={location}"))
    assert {address[0] for address in connections} == {"127.0.0.1"}
    assert [request.path for request in server.requests] == [f"/redirect?to={location}"]


def test_redirect_to_a_local_port_not_on_the_allow_list_is_refused(local, server, connections):
    target = f"http://127.0.0.1:{_unused_port()}/"
    with pytest.raises(OutboundRefused):
        outbound.fetch(server.url(f"/redirect?to={target}"))
    assert {address[1] for address in connections} == {server.port}


def test_more_than_three_redirects_are_refused(local, server):
    with pytest.raises(OutboundRefused, match="too many redirects"):
        outbound.fetch(server.url("/loop/0"))
    assert [request.path for request in server.requests] == [f"/loop/{n}" for n in range(4)]


def test_three_redirects_are_followed(local, server):
    hops = "/redirect?to=/redirect%3Fto%3D/redirect%253Fto%253D/json"
    assert outbound.fetch(server.url(hops)).json() == {"ok": True}
    assert len(server.requests) == 4


def test_redirects_are_not_followed_for_post_or_when_disabled(local, server):
    response = outbound.fetch(server.url("/redirect?to=/json"), method="POST", data=b"x")
    assert response.status == 302
    assert response.headers["location"] == "/json"
    response = outbound.fetch(server.url("/redirect?to=/json"), follow_redirects=False)
    assert response.status == 302
    assert len(server.requests) == 2


def test_credentials_are_not_forwarded_to_another_origin(local, server, other_server):
    location = other_server.url("/echo")
    response = outbound.fetch(
        server.url(f"/redirect?to={location}"),
        basic_auth=("client", "secret"),
        headers={"Accept": "application/json"},
    )
    echo = response.json()
    assert "authorization" not in echo["headers"]
    assert echo["headers"]["accept"] == "application/json"
    assert "authorization" in {name.lower() for name in server.requests[0].headers}


# --- what goes out, and what comes back -----------------------------------------------------------
def test_post_form_and_basic_auth_arrive_as_sent(local, server):
    response = outbound.fetch(
        server.url("/echo?x=1"),
        method="post",
        data={"grant_type": "authorization_code", "code": "a b&c"},
        basic_auth=("client-id", "s3cret:with colon"),
    )
    echo = response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/echo?x=1"
    assert echo["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(echo["body"]) == {"grant_type": ["authorization_code"], "code": ["a b&c"]}
    expected = base64.b64encode(b"client-id:s3cret:with colon").decode()
    assert echo["headers"]["authorization"] == f"Basic {expected}"


def test_raw_bytes_body_and_caller_headers(local, server):
    echo = outbound.fetch(
        server.url("/echo"),
        method="POST",
        data=b'{"a": 1}',
        headers={"Content-Type": "application/json", "User-Agent": "Keyward-test"},
    ).json()
    assert echo["body"] == '{"a": 1}'
    assert echo["headers"]["content-type"] == "application/json"
    assert echo["headers"]["user-agent"] == "Keyward-test"


def test_response_text_headers_and_invalid_json(local, server):
    response = outbound.fetch(server.url("/html"))
    assert response.text == "<p>café</p>"
    assert response.headers["content-type"] == response.headers["Content-Type"]
    with pytest.raises(OutboundError, match="did not return valid JSON"):
        response.json()


def test_non_2xx_statuses_are_returned(local, server):
    assert outbound.fetch(server.url("/missing")).status == 404


@pytest.mark.parametrize("with_length", [True, False])
def test_a_body_over_the_cap_is_refused(local, server, with_length):
    length = "1" if with_length else "0"
    assert len(outbound.fetch(server.url(f"/big?size=1000&length={length}"), max_bytes=1000).body)
    with pytest.raises(OutboundTooLarge, match="larger than 1000 bytes"):
        outbound.fetch(server.url(f"/big?size=1001&length={length}"), max_bytes=1000)


def test_a_declared_length_over_the_cap_is_refused_before_reading(local, server):
    with pytest.raises(OutboundTooLarge):
        outbound.fetch(server.url("/huge"), max_bytes=1000, timeout=3)


def test_a_head_request_reads_no_body(local, server):
    response = outbound.fetch(server.url("/big"), method="HEAD", max_bytes=10)
    assert (response.status, response.body) == (200, b"")


def test_the_size_cap_comes_from_the_settings(make_app, server):
    allowed = f"127.0.0.1:{server.port}"
    with (
        _context(make_app, OUTBOUND_ALLOW_PRIVATE=allowed, OUTBOUND_MAX_BYTES="100"),
        pytest.raises(OutboundTooLarge),
    ):
        outbound.fetch(server.url("/big?size=200000&length=0"))


def test_a_server_slower_than_the_timeout_fails(make_app, server):
    allowed = f"127.0.0.1:{server.port}"
    with _context(make_app, OUTBOUND_ALLOW_PRIVATE=allowed, OUTBOUND_TIMEOUT="1"):
        started = time.monotonic()
        with pytest.raises(OutboundFailed, match="did not answer within 1 seconds"):
            outbound.fetch(server.url("/slow"))
    assert time.monotonic() - started < 4  # the server would have answered after 5 s


def test_the_timeout_bounds_the_whole_body_not_each_read(local, server):
    # One byte every 0.1 s never trips a per-read timeout; the overall deadline stops it.
    started = time.monotonic()
    with pytest.raises(OutboundFailed, match="did not answer"):
        outbound.fetch(server.url("/drip"), timeout=0.5)
    assert time.monotonic() - started < 3  # the whole body would take 100 s


def test_the_timeout_bounds_the_wait_for_the_body_after_slow_headers(local, server):
    # Headers after 0.5 s, then a stall: the body read may only wait for the 0.1 s left of
    # the budget, not for a fresh 0.6 s read timeout (which would end near 1.1 s).
    started = time.monotonic()
    with pytest.raises(OutboundFailed, match="did not answer"):
        outbound.fetch(server.url("/late-body"), timeout=0.6)
    assert time.monotonic() - started < 0.95


def test_connection_errors_fail_without_leaking_the_request(make_app):
    port = _unused_port()
    with (
        _context(make_app, OUTBOUND_ALLOW_PRIVATE=f"127.0.0.1:{port}"),
        pytest.raises(OutboundFailed, match="could not connect") as error,
    ):
        outbound.fetch(
            f"http://127.0.0.1:{port}/token",
            method="POST",
            data={"client_secret": "hunter2"},
            basic_auth=("client", "hunter2"),
        )
    assert "hunter2" not in str(error.value)


def test_each_fetch_is_logged_without_query_string(local, server, caplog):
    with caplog.at_level(logging.INFO, logger="app.services.outbound"):
        outbound.fetch(server.url("/json?code=SECRETCODE"), headers={"X-Token": "SECRETHEADER"})
    lines = [record.getMessage() for record in caplog.records if record.name == outbound.__name__]
    assert len(lines) == 1
    assert lines[0].startswith(f"outbound GET 127.0.0.1:{server.port}/json -> 200, 12 bytes, ")
    assert "SECRET" not in caplog.text


# --- TLS ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> SimpleNamespace:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1 signed by it."""
    directory = tmp_path_factory.mktemp("tls")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Keyward test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = SimpleNamespace(
        ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key"
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@pytest.fixture
def tls_server(tls_files) -> Iterator[_Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.cert, tls_files.key)
    with _serve(context) as running:
        yield running


def test_https_with_the_private_ca_bundle(make_app, tls_server, tls_files):
    settings = {
        "OUTBOUND_ALLOW_PRIVATE": f"localhost:{tls_server.port}",
        "OUTBOUND_CA_BUNDLE": str(tls_files.ca),
    }
    with _context(make_app, **settings):
        response = outbound.fetch(tls_server.url("/echo", scheme="https", host="localhost"))
    assert response.status == 200
    assert response.json()["headers"]["host"] == f"localhost:{tls_server.port}"


def test_the_deadline_also_ends_a_stalled_tls_read(make_app, tls_server, tls_files):
    settings = {
        "OUTBOUND_ALLOW_PRIVATE": f"localhost:{tls_server.port}",
        "OUTBOUND_CA_BUNDLE": str(tls_files.ca),
    }
    started = time.monotonic()
    with _context(make_app, **settings), pytest.raises(OutboundFailed, match="did not answer"):
        outbound.fetch(tls_server.url("/late-body", scheme="https", host="localhost"), timeout=0.6)
    assert time.monotonic() - started < 0.95


def test_https_without_the_bundle_is_not_trusted(make_app, tls_server):
    with (
        _context(make_app, OUTBOUND_ALLOW_PRIVATE=f"localhost:{tls_server.port}"),
        pytest.raises(OutboundFailed, match="TLS connection to localhost failed"),
    ):
        outbound.fetch(tls_server.url("/json", scheme="https", host="localhost"))
    assert tls_server.requests == []


def test_https_checks_the_name_in_the_url_not_the_address(
    make_app, tls_server, tls_files, fake_dns
):
    # The certificate is valid for 127.0.0.1, but the URL names another host.
    fake_dns.table[FAKE_HOST] = ["127.0.0.1"]
    settings = {
        "OUTBOUND_ALLOW_PRIVATE": f"{FAKE_HOST}:{tls_server.port}",
        "OUTBOUND_CA_BUNDLE": str(tls_files.ca),
    }
    with _context(make_app, **settings), pytest.raises(OutboundFailed, match="TLS"):
        outbound.fetch(tls_server.url("/json", scheme="https", host=FAKE_HOST))
    assert tls_server.requests == []


def test_an_unreadable_ca_bundle_fails_clearly(make_app, tmp_path: Path, fake_dns):
    fake_dns.table[FAKE_HOST] = ["127.0.0.1"]
    settings = {
        "OUTBOUND_ALLOW_PRIVATE": f"{FAKE_HOST}:443",
        "OUTBOUND_CA_BUNDLE": str(tmp_path / "missing.pem"),
    }
    with _context(make_app, **settings), pytest.raises(OutboundFailed, match="OUTBOUND_CA_BUNDLE"):
        outbound.fetch(f"https://{FAKE_HOST}/")
