"""The one HTTP fetcher for admin-entered URLs: https only, public addresses only, bounded."""

from __future__ import annotations

import base64
import contextlib
import functools
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from urllib.parse import urldefrag
from urllib.parse import urlencode
from urllib.parse import urljoin
from urllib.parse import urlsplit

import certifi
import urllib3
from flask import current_app
from urllib3 import HTTPHeaderDict
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from app.services.errors import ServiceError

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}
# Enough for an IdP that moved its discovery document once or twice; more is a loop or a trap.
MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_SIZE = 64 * 1024
# Headers that carry credentials: never forwarded to another origin on a redirect (as browsers
# and requests do), so an IdP cannot bounce our client secret to a host of its choosing.
CREDENTIAL_HEADERS = ("Authorization", "Cookie", "Proxy-Authorization")
# Request targets are percent-encoded like requests' requote_uri: reserved characters and
# existing escapes are kept, anything else (spaces, non-ASCII) is encoded.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_CHARSET = re.compile(r"charset\s*=\s*\"?([\w.:-]+)", re.IGNORECASE)
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"", "false", "0", "no", "off"})

# Refused whatever Python's ipaddress says (its private/global lists changed in 3.12.4 and
# 3.13): RFC 6598 shared address space (carrier-grade NAT, some clouds' internal services)
# and RFC 8215 local-use NAT64, whose embedded IPv4 address may sit anywhere in the suffix.
_EXTRA_FORBIDDEN = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("64:ff9b:1::/48"),
)
# RFC 6052 well-known NAT64 prefix: the last 32 bits are the IPv4 address actually reached.
# ipaddress files it under the reserved ::/8, but on IPv6-only hosts with DNS64 every public
# IdP resolves into it, so it is judged by the IPv4 address it carries.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class OutboundError(ServiceError):
    """An outbound fetch did not produce a usable answer; the message is safe for an admin."""


class OutboundRefused(OutboundError):
    """The URL (scheme, credentials, host, address or redirect) is not allowed."""


class OutboundFailed(OutboundError):
    """Name resolution, connection, TLS, timeout or another transport error."""


class OutboundTooLarge(OutboundError):
    """The response body is larger than the allowed maximum."""


@dataclass(frozen=True)
class OutboundResponse:
    """A fully read response: status, headers (case-insensitive), body, and the final URL."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str

    @property
    def text(self) -> str:
        """The body decoded with the Content-Type charset (UTF-8 by default, lenient)."""
        match = _CHARSET.search(self.headers.get("Content-Type", ""))
        charset = match.group(1) if match else "utf-8"
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:  # an unknown charset name from the server
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises OutboundError when it is not valid JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError) as exc:
            # RecursionError: a deeply nested document ("[[[[...") within the size cap.
            host = urlsplit(self.url).hostname or "the server"
            raise OutboundError(f"{host} did not return valid JSON") from exc


@dataclass(frozen=True)
class _Policy:
    allow_all: bool
    allowed: frozenset[str]


@dataclass(frozen=True)
class _Target:
    """A vetted URL: where to connect (addresses) and what to send (Host, request target)."""

    url: str
    scheme: str
    host: str  # ASCII host name, or IP literal without brackets
    port: int
    host_header: str
    path: str  # for the log: never the query string
    request_target: str
    addresses: tuple[str, ...]

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def check_url(url: str) -> None:
    """Check that ``url`` may be fetched, without fetching it (used when a provider is saved).

    Applies the same rules as every fetch: https only, no credentials in the URL, and every
    address the host resolves to must be public, unless ``OUTBOUND_ALLOW_PRIVATE`` allows it.
    Resolves the host name (DNS). Raises OutboundRefused, or OutboundFailed when the host
    name does not resolve.
    """
    _vet(url, _policy())


def fetch(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    data: bytes | Mapping[str, str] | None = None,
    basic_auth: tuple[str, str] | None = None,
    follow_redirects: bool = True,
    max_bytes: int | None = None,
    timeout: float | None = None,
) -> OutboundResponse:
    """Fetch an admin-entered URL and return the whole response, whatever its status.

    ``data`` is sent as the body: bytes as given, a mapping form-encoded. ``basic_auth`` is
    sent as RFC 7617 Basic credentials (OAuth callers form-encode client id and secret first,
    RFC 6749 section 2.3.1). Redirects are followed for GET only, at most three, each hop
    vetted like the first; credentials are dropped when a redirect changes origin.
    ``timeout`` (seconds, default OUTBOUND_TIMEOUT) bounds the whole fetch, redirects
    included; ``max_bytes`` (default OUTBOUND_MAX_BYTES) bounds the body. Needs an app
    context (settings come from ``current_app.config``); logs one INFO line per request.

    Raises OutboundRefused, OutboundFailed or OutboundTooLarge (all OutboundError).
    """
    config = current_app.config
    policy = _policy()
    limit = int(config["OUTBOUND_MAX_BYTES"] if max_bytes is None else max_bytes)
    seconds = float(config["OUTBOUND_TIMEOUT"] if timeout is None else timeout)
    deadline = time.monotonic() + seconds
    method = method.upper()

    request_headers = HTTPHeaderDict(
        {
            "User-Agent": "Keyward",
            # Ask for an unencoded body so the size cap measures what we actually keep.
            "Accept-Encoding": "identity",
        }
    )
    body: bytes | None = None
    if isinstance(data, Mapping):
        body = urlencode(data, doseq=True).encode("ascii")
        request_headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif data is not None:
        body = bytes(data)
    if basic_auth is not None:
        user, password = basic_auth
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        request_headers["Authorization"] = f"Basic {token}"
    for name, value in (headers or {}).items():
        request_headers[name] = value  # the caller's headers win over the defaults

    current = url
    first_origin: tuple[str, str, int] | None = None
    for hop in range(MAX_REDIRECTS + 1):
        target = _vet(current, policy)
        if first_origin is None:
            first_origin = target.origin
        elif target.origin != first_origin:
            for name in CREDENTIAL_HEADERS:
                request_headers.pop(name, None)
        started = time.monotonic()
        try:
            with _send(target, method, request_headers, body, deadline, seconds) as response:
                location = response.headers.get("Location")
                if (
                    follow_redirects
                    and method == "GET"
                    and response.status in REDIRECT_STATUSES
                    and location
                ):
                    _log(method, target, response.status, 0, started)
                    if hop == MAX_REDIRECTS:
                        raise OutboundRefused(f"too many redirects (more than {MAX_REDIRECTS})")
                    # RFC 9110 section 10.2.2: a relative Location is resolved against the
                    # URL that was requested; the fragment never goes on the wire.
                    current = urldefrag(urljoin(target.url, location.strip())).url
                    continue
                # A HEAD response has no body, whatever its Content-Length says.
                content = (
                    b""
                    if method == "HEAD"
                    else _read_body(response, target, limit, deadline, seconds)
                )
                result = OutboundResponse(
                    status=response.status,
                    headers=HTTPHeaderDict(response.headers),
                    body=content,
                    url=target.url,
                )
        except (OutboundFailed, OutboundTooLarge) as exc:
            log.info(
                "outbound %s %s%s failed after %d ms: %s",
                method,
                target.host_header,
                target.path,
                _ms(started),
                exc,
            )
            raise
        _log(method, target, result.status, len(result.body), started)
        return result
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


# --- the URL and address rules ------------------------------------------------------------
def _policy() -> _Policy:
    """OUTBOUND_ALLOW_PRIVATE: ``true`` allows everything, else a comma list of host:port."""
    raw = str(current_app.config.get("OUTBOUND_ALLOW_PRIVATE") or "").strip().lower()
    if raw in _TRUE:
        return _Policy(allow_all=True, allowed=frozenset())
    if raw in _FALSE:
        return _Policy(allow_all=False, allowed=frozenset())
    entries = frozenset(entry.strip() for entry in raw.split(",") if entry.strip())
    return _Policy(allow_all=False, allowed=entries)


def _vet(url: str, policy: _Policy) -> _Target:
    """Parse ``url`` and apply every rule; returns where to connect. Raises OutboundRefused."""
    if not isinstance(url, str) or not url or _CONTROL_OR_SPACE.search(url):
        raise OutboundRefused("not a valid URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # bad port number or malformed IPv6 literal
        raise OutboundRefused("not a valid URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise OutboundRefused("only https URLs are allowed")
    # Credentials in the URL would end up in logs and audit records, and user@host is a
    # classic trick to disguise the real host (https://idp.example.com@evil.test/).
    if "@" in parts.netloc:
        raise OutboundRefused("URLs with a user name or password are not allowed")
    host = parts.hostname  # lower-cased, brackets of an IPv6 literal removed
    if not host:
        raise OutboundRefused("the URL has no host")
    if port == 0:
        raise OutboundRefused("not a valid URL")
    port = port or DEFAULT_PORTS[scheme]

    if "%" in host:  # an IPv6 zone id (RFC 6874) only makes sense for link-local addresses
        raise OutboundRefused("not a valid URL")
    literal = _ip_literal(host)
    if literal is None:
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise OutboundRefused("the URL's host name is not valid") from exc
    else:
        ascii_host = host
    written = f"[{host}]" if literal is not None and literal.version == 6 else host
    # The allow-list key is host:port as written in the URL, default port filled in.
    allowed = policy.allow_all or f"{written}:{port}" in policy.allowed

    if scheme != "https" and not allowed:
        raise OutboundRefused("only https URLs are allowed")

    addresses = _resolve(ascii_host, port)
    if not allowed:
        # Every address counts, not just the one we would use: a name that resolves to one
        # public and one private address is a rebinding or split-horizon trap.
        for address in addresses:
            if not _is_public(ipaddress.ip_address(address)):
                log.warning("outbound refused: %s resolves to %s", host, address)
                if literal is not None:
                    raise OutboundRefused(f"{host} is not a public address")
                raise OutboundRefused(f"{host} resolves to an address that is not public")

    path = parts.path or "/"
    target = path + (f"?{parts.query}" if parts.query else "")
    bracketed = f"[{ascii_host}]" if literal is not None and literal.version == 6 else ascii_host
    return _Target(
        url=url,
        scheme=scheme,
        host=ascii_host,
        port=port,
        host_header=bracketed if port == DEFAULT_PORTS[scheme] else f"{bracketed}:{port}",
        path=path,
        request_target=quote(target, safe=_TARGET_SAFE),
        addresses=addresses,
    )


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: int) -> tuple[str, ...]:
    """Every IPv4/IPv6 address ``host`` resolves to, in resolver order, without repeats."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise OutboundFailed(f"could not resolve {host}") from exc
    addresses: list[str] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and sockaddr[0] not in addresses:
            addresses.append(str(sockaddr[0]))
    if not addresses:
        raise OutboundFailed(f"could not resolve {host}")
    return tuple(addresses)


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a globally routable unicast address (SSRF guard: see DESIGN invariants)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:  # a zone id means link-local scope
            return False
        # Forms that stand for an IPv4 address are judged by that address alone:
        # ::ffff:a.b.c.d (RFC 4291 2.5.5.2) and 64:ff9b::a.b.c.d (NAT64, RFC 6052).
        if ip.ipv4_mapped is not None:
            return _is_public(ip.ipv4_mapped)
        if ip in _NAT64:
            return _is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        # 2002:AABB:CCDD::/48 (6to4, RFC 3056) is relayed to the IPv4 address it carries.
        if ip.sixtofour is not None and not _is_public(ip.sixtofour):
            return False
        if ip.teredo is not None:  # RFC 4380 tunnels end at an address we cannot judge
            return False
        # Site-local (RFC 3879, deprecated) is not in Python's private list.
        if ip.is_site_local:
            return False
    if (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast  # ipaddress calls global-scope multicast "global"
        or ip.is_reserved
        or not ip.is_global
    ):
        return False
    return not any(ip in network for network in _EXTRA_FORBIDDEN)


# --- the transport ------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _tls_context(bundle: str | None, _mtime: int) -> ssl.SSLContext:
    """certifi's roots plus OUTBOUND_CA_BUNDLE; cached per bundle path and modification time."""
    # certifi rather than the OS store: it is pinned in requirements.lock, so every machine
    # (slim containers without ca-certificates, macOS, CI) trusts the same roots as requests
    # and authlib do. A private CA is added with OUTBOUND_CA_BUNDLE, never by replacing these.
    context = ssl.create_default_context(cafile=certifi.where())
    if bundle:
        context.load_verify_locations(cafile=bundle)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _ssl_context() -> ssl.SSLContext:
    bundle = current_app.config.get("OUTBOUND_CA_BUNDLE") or None
    try:
        mtime = os.stat(bundle).st_mtime_ns if bundle else 0
        return _tls_context(bundle, mtime)
    except (OSError, ssl.SSLError) as exc:
        log.error("outbound: cannot load OUTBOUND_CA_BUNDLE %s: %s", bundle, exc)
        raise OutboundFailed(
            "the configured CA bundle (OUTBOUND_CA_BUNDLE) cannot be read"
        ) from exc


@contextmanager
def _send(
    target: _Target,
    method: str,
    headers: HTTPHeaderDict,
    body: bytes | None,
    deadline: float,
    seconds: float,
) -> Iterator[urllib3.BaseHTTPResponse]:
    """Send one request to the vetted addresses (in order); yields the unread response."""
    hop_headers = HTTPHeaderDict(headers)
    # We connect to an IP address, so the Host header has to name the site (RFC 9110 7.2).
    hop_headers["Host"] = target.host_header
    context = _ssl_context() if target.scheme == "https" else None
    failure: Exception | None = None
    for address in target.addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        pool = _pool(target, address, context)
        try:
            try:
                response = pool.urlopen(
                    method,
                    target.request_target,
                    body=body,
                    headers=hop_headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    timeout=urllib3.Timeout(total=remaining),
                    preload_content=False,
                    decode_content=True,
                    release_conn=False,
                )
            except NewConnectionError as exc:
                # Refused or unreachable (an AAAA record without IPv6 routing): try the next
                # vetted address, like a browser would, within the same deadline.
                failure = exc
                continue
            except Urllib3Error as exc:
                raise _transport_error(exc, target, seconds) from exc
            try:
                yield response
            finally:
                response.close()
            return
        finally:
            pool.close()
    if failure is None:
        raise OutboundFailed(f"{target.host} did not answer within {seconds:g} seconds")
    raise _transport_error(failure, target, seconds) from failure


def _pool(
    target: _Target, address: str, context: ssl.SSLContext | None
) -> urllib3.HTTPConnectionPool:
    """A one-connection pool to ``address`` itself, never to the name again (DNS rebinding).

    urllib3 pools never read proxy settings from the environment (unlike requests), so the
    request goes straight to the vetted address.
    """
    if context is None:
        return urllib3.HTTPConnectionPool(address, target.port, maxsize=1, retries=False)
    # TLS: SNI and certificate verification use the host name from the URL, while the TCP
    # connection goes to the vetted IP. The context has check_hostname on, so OpenSSL checks
    # the name during the handshake (no assert_hostname, which would turn that off).
    return urllib3.HTTPSConnectionPool(
        address,
        target.port,
        maxsize=1,
        retries=False,
        ssl_context=context,
        server_hostname=target.host,
        cert_reqs="CERT_REQUIRED",
    )


def _read_body(
    response: urllib3.BaseHTTPResponse,
    target: _Target,
    limit: int,
    deadline: float,
    seconds: float,
) -> bytes:
    """Read the body in chunks, stopping at ``limit`` bytes and at the deadline."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise OutboundTooLarge(f"the response from {target.host} is larger than {limit} bytes")
    timed_out = OutboundFailed(f"{target.host} did not answer within {seconds:g} seconds")
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        with contextlib.suppress(Exception):  # the response may be closing right now
            response.shutdown()

    # A read timeout applies to each socket read, so a server that stalls after the headers
    # or drips a byte at a time (slowloris) could hold us far past the deadline. This
    # watchdog shuts the socket down at the deadline, which ends a blocked read at once.
    watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), expire)
    watchdog.daemon = True
    watchdog.start()
    chunks: list[bytes] = []
    size = 0
    try:
        while not expired.is_set():
            chunk = response.read1(CHUNK_SIZE)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise OutboundTooLarge(
                    f"the response from {target.host} is larger than {limit} bytes"
                )
            chunks.append(chunk)
    except (Urllib3Error, OSError) as exc:
        if expired.is_set():
            raise timed_out from exc
        raise _transport_error(exc, target, seconds) from exc
    finally:
        watchdog.cancel()
        watchdog.join()
    if expired.is_set():  # the shutdown looks like an early end of the body
        raise timed_out
    return b"".join(chunks)


def _transport_error(exc: Exception, target: _Target, seconds: float) -> OutboundFailed:
    """A short, admin-safe description of a urllib3 failure (no headers, bodies or secrets)."""
    host = target.host
    if isinstance(exc, Urllib3SSLError):
        reason = exc.args[0] if exc.args else None
        detail = getattr(reason, "verify_message", None) or getattr(reason, "reason", None)
        suffix = f" ({detail})" if detail else ""
        return OutboundFailed(f"TLS connection to {host} failed{suffix}")
    if isinstance(exc, NewConnectionError):
        return OutboundFailed(f"could not connect to {host}")
    if isinstance(exc, Urllib3TimeoutError):
        return OutboundFailed(f"{host} did not answer within {seconds:g} seconds")
    return OutboundFailed(f"the connection to {host} failed")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _log(method: str, target: _Target, status: int, size: int, started: float) -> None:
    # Path only: query strings may carry codes or tokens; headers and bodies never logged.
    log.info(
        "outbound %s %s%s -> %s, %d bytes, %d ms",
        method,
        target.host_header,
        target.path,
        status,
        size,
        _ms(started),
    )
