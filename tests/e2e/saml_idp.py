"""A real SAML 2.0 identity provider for tests: pysaml2, independent of python3-saml.

Two ways to use it:

``SamlIdp`` runs the IdP in its own process (tests/e2e/saml_idp_server.py, a WSGI server on
127.0.0.1) for end-to-end tests through HTTP or a browser::

    with SamlIdp(users={"alice": ALICE}) as idp:
        idp.metadata_url                      # IdP metadata, current certificates
        idp.add_sp(metadata_xml=...)          # or metadata_url= Keyward's /saml/<scheme>/metadata
        form = post_form(requests.get(authn_request_url).text)   # auto-login -> ACS form
        idp.rotate_certificate(keep_old=True) # a new signing key, the old cert still published
        idp.logout_request_url("alice", session_index)   # IdP-initiated SLO, for the browser

``IdpCore`` is the same IdP in-process: it builds (and can deliberately break) responses
for the service tests, e.g. ``core.response_xml(user, sp_entity_id=..., acs=...,
in_response_to=..., before_signing=..., after_signing=...)`` and the negative builders at the
end of this module (unsigned, unknown key, signature wrapping, wrong Audience or Destination,
expired, InResponseTo mismatch, a comment inside NameID, SHA-1).

pysaml2 signs by running Debian's ``xmlsec1`` command (scripts/ensure-saml-deps installs it).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import IO
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import urlencode
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from tests.processes import stop_process

# pysaml2 7.5 touches cryptography's CFB mode at import, which cryptography deprecates; the
# suite turns warnings into errors, and this one is pysaml2's business, not ours.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        from cryptography.utils import CryptographyDeprecationWarning

        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    except ImportError:  # pragma: no cover - older cryptography
        pass
    from saml2 import BINDING_HTTP_POST
    from saml2 import BINDING_HTTP_REDIRECT
    from saml2.attribute_converter import AttributeConverter
    from saml2.config import IdPConfig
    from saml2.metadata import entity_descriptor
    from saml2.saml import NAME_FORMAT_BASIC
    from saml2.saml import NAME_FORMAT_URI
    from saml2.saml import NAMEID_FORMAT_EMAILADDRESS
    from saml2.saml import NAMEID_FORMAT_PERSISTENT
    from saml2.saml import NAMEID_FORMAT_TRANSIENT
    from saml2.saml import NAMEID_FORMAT_UNSPECIFIED
    from saml2.saml import NameID
    from saml2.server import Server
    from saml2.sigver import pre_signature_part
    from saml2.sigver import verify_redirect_signature
    from saml2.xmldsig import DIGEST_SHA1
    from saml2.xmldsig import DIGEST_SHA256
    from saml2.xmldsig import SIG_RSA_SHA1
    from saml2.xmldsig import SIG_RSA_SHA256

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SERVER_SCRIPT = Path(__file__).resolve().parent / "saml_idp_server.py"
HOST = "127.0.0.1"
NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
}
ASSERTION_TAG = "urn:oasis:names:tc:SAML:2.0:assertion:Assertion"
RESPONSE_TAG = "urn:oasis:names:tc:SAML:2.0:protocol:Response"
PASSWORD_CLASS = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
NAMEID_FORMATS = {
    "persistent": NAMEID_FORMAT_PERSISTENT,
    "transient": NAMEID_FORMAT_TRANSIENT,
    "email": NAMEID_FORMAT_EMAILADDRESS,
    "unspecified": NAMEID_FORMAT_UNSPECIFIED,
}
SHA256 = (SIG_RSA_SHA256, DIGEST_SHA256)
SHA1 = (SIG_RSA_SHA1, DIGEST_SHA1)


class SamlIdpError(RuntimeError):
    """The IdP could not start, or answered a control request with an error."""


def xmlsec1_path() -> str:
    path = shutil.which("xmlsec1")
    if path is None:
        raise SamlIdpError(
            "the xmlsec1 command is missing: pysaml2 signs with it. Run scripts/ensure-saml-deps "
            "(Debian's xmlsec1 package)."
        )
    return path


# --- keys --------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyPair:
    """A throwaway RSA key and its self-signed certificate (PEM)."""

    key_pem: str
    cert_pem: str

    @property
    def cert_base64(self) -> str:
        return "".join(line for line in self.cert_pem.splitlines() if "-----" not in line)

    def as_json(self) -> dict[str, str]:
        return {"key": self.key_pem, "cert": self.cert_pem}


def make_key_pair(common_name: str = "pysaml2 test IdP", *, days: int = 30) -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return KeyPair(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii"),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    )


# --- users -------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdpUser:
    """A user of the test IdP: the NameID it asserts and the attributes it releases."""

    name_id: str
    name_id_format: str = "persistent"
    attributes: Mapping[str, list[str]] = field(default_factory=dict)
    password: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IdpUser:
        attributes = {
            name: list(value) if isinstance(value, list | tuple) else [str(value)]
            for name, value in (data.get("attributes") or {}).items()
        }
        return cls(
            name_id=str(data["name_id"]),
            name_id_format=str(data.get("name_id_format") or "persistent"),
            attributes=attributes,
            password=data.get("password"),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name_id": self.name_id,
            "name_id_format": self.name_id_format,
            "attributes": {k: list(v) for k, v in self.attributes.items()},
            "password": self.password,
        }


def _user(value: IdpUser | Mapping[str, Any]) -> IdpUser:
    return value if isinstance(value, IdpUser) else IdpUser.from_json(value)


# --- the IdP, in-process ------------------------------------------------------------------
def _saml_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class IdpCore:
    """A pysaml2 IdP without HTTP: SP registry, signing keys, response and logout builders.

    ``key_pairs[0]`` signs; every pair's certificate is published in the metadata (rollover).
    ``sign`` is what responses sign by default: "assertion", "response", "both" or "none".
    Not thread-safe: the server process serialises calls with a lock.
    """

    def __init__(
        self,
        base_url: str,
        *,
        key_pairs: Iterable[KeyPair] | None = None,
        users: Mapping[str, IdpUser | Mapping[str, Any]] | None = None,
        sp_metadata: Iterable[str] = (),
        sign: str = "assertion",
        lifetime: dt.timedelta = dt.timedelta(minutes=5),
        workdir: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.entity_id = f"{self.base_url}/metadata"
        self.sso_url = f"{self.base_url}/sso"
        self.slo_url = f"{self.base_url}/slo"
        self.key_pairs: list[KeyPair] = list(key_pairs or [make_key_pair()])
        self.users: dict[str, IdpUser] = {k: _user(v) for k, v in (users or {}).items()}
        self.sp_metadata: list[str] = list(sp_metadata)
        self.sign = sign
        self.lifetime = lifetime
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="keyward-saml-idp-")
        self._server: Server | None = None
        self._key_files: dict[str, str] = {}

    def close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- keys and configuration -----------------------------------------------------------
    @property
    def signing_key(self) -> KeyPair:
        return self.key_pairs[0]

    def key_file(self, pair: KeyPair, kind: str = "key") -> str:
        """A file holding the key (or cert) PEM: pysaml2 and xmlsec1 read files."""
        content = pair.key_pem if kind == "key" else pair.cert_pem
        name = f"{kind}-{abs(hash(content))}.pem"
        path = self._key_files.get(name)
        if path is None:
            path = os.path.join(self.workdir, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(content)
            self._key_files[name] = path
        return path

    def rotate_certificate(self, keep_old: bool = True) -> KeyPair:
        """A new signing key pair; the old certificates stay published when ``keep_old``."""
        pair = make_key_pair(f"pysaml2 test IdP {len(self.key_pairs) + 1}")
        self.key_pairs = [pair, *self.key_pairs] if keep_old else [pair]
        self._server = None
        return pair

    def add_sp_metadata(self, xml: str) -> str:
        """Register an SP by its metadata; returns its entity id."""
        root = etree.fromstring(xml.encode())
        entity_id = root.get("entityID")
        self.sp_metadata = [
            known
            for known in self.sp_metadata
            if etree.fromstring(known.encode()).get("entityID") != entity_id
        ]
        self.sp_metadata.append(xml)
        self._server = None
        return entity_id

    def _config(self) -> dict[str, Any]:
        return {
            "entityid": self.entity_id,
            "service": {
                "idp": {
                    "name": "Keyward test IdP (pysaml2)",
                    "endpoints": {
                        "single_sign_on_service": [(self.sso_url, BINDING_HTTP_REDIRECT)],
                        "single_logout_service": [(self.slo_url, BINDING_HTTP_REDIRECT)],
                    },
                    "policy": {
                        "default": {
                            "lifetime": {"minutes": int(self.lifetime.total_seconds() // 60)},
                            "name_form": NAME_FORMAT_BASIC,
                        }
                    },
                    "name_id_format": [
                        NAMEID_FORMAT_PERSISTENT,
                        NAMEID_FORMAT_EMAILADDRESS,
                        NAMEID_FORMAT_TRANSIENT,
                    ],
                    "sign_response": False,
                    "sign_assertion": False,
                    "want_authn_requests_signed": False,
                }
            },
            "key_file": self.key_file(self.signing_key, "key"),
            "cert_file": self.key_file(self.signing_key, "cert"),
            "xmlsec_binary": xmlsec1_path(),
            "metadata": {"inline": list(self.sp_metadata)} if self.sp_metadata else {},
            "delete_tmpfiles": True,
            "signing_algorithm": SIG_RSA_SHA256,
            "digest_algorithm": DIGEST_SHA256,
        }

    def server(self) -> Server:
        """The pysaml2 Server for the current key and SPs (rebuilt after a change)."""
        if self._server is None:
            config = IdPConfig().load(self._config())
            # Attribute names go out exactly as configured (Entra claim URIs, Okta's
            # firstName...): converters without maps pass names through untouched.
            converters = [
                AttributeConverter(NAME_FORMAT_BASIC),
                AttributeConverter(NAME_FORMAT_URI),
            ]
            for converter in converters:
                converter._to, converter._fro = {}, {}  # pysaml2 has no public "no map"
            config.attribute_converters = converters
            self._server = Server(config=config)
        return self._server

    # --- metadata ------------------------------------------------------------------------
    def metadata_xml(self) -> str:
        """IdP metadata by pysaml2, with every published certificate as a signing key."""
        xml = str(entity_descriptor(self.server().config))
        root = etree.fromstring(xml.encode())
        idp = root.find("md:IDPSSODescriptor", NS)
        for existing in idp.findall("md:KeyDescriptor", NS):
            idp.remove(existing)
        for position, pair in enumerate(self.key_pairs):
            descriptor = etree.Element(f"{{{NS['md']}}}KeyDescriptor", use="signing")
            key_info = etree.SubElement(descriptor, f"{{{NS['ds']}}}KeyInfo")
            data = etree.SubElement(key_info, f"{{{NS['ds']}}}X509Data")
            etree.SubElement(data, f"{{{NS['ds']}}}X509Certificate").text = pair.cert_base64
            idp.insert(position, descriptor)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode()

    def sp_endpoint(self, sp_entity_id: str, kind: str = "assertion_consumer_service") -> str:
        """The SP's endpoint from its metadata: ACS (HTTP-POST) or SLO (HTTP-Redirect)."""
        metadata = self.server().metadata
        if kind == "assertion_consumer_service":
            binding = BINDING_HTTP_POST
            services = metadata.assertion_consumer_service(sp_entity_id, binding=binding)
        else:
            binding = BINDING_HTTP_REDIRECT
            services = metadata.single_logout_service(sp_entity_id, binding=binding, typ="spsso")
        if not services:
            raise SamlIdpError(f"SP {sp_entity_id} has no {kind} with {binding}")
        return services[0]["location"]

    # --- authentication responses ------------------------------------------------------
    def response_xml(
        self,
        user: str | IdpUser,
        *,
        sp_entity_id: str,
        acs: str | None = None,
        in_response_to: str | None = None,
        sign: str | None = None,
        key_pair: KeyPair | None = None,
        algorithms: tuple[str, str] = SHA256,
        before_signing: Callable[[etree._Element], None] | None = None,
        after_signing: Callable[[etree._Element], None] | None = None,
    ) -> str:
        """A SAML Response for ``user``, built by pysaml2, then signed with xmlsec1.

        ``sign``: "assertion", "response", "both" or "none" (default: the IdP's setting);
        ``key_pair`` signs instead of the IdP's key (an unknown key); ``algorithms`` is
        (SignatureMethod, DigestMethod). ``before_signing`` may change the document the
        signature will cover; ``after_signing`` changes it afterwards (what an attacker can
        do)."""
        person = self.users[user] if isinstance(user, str) else user
        destination = acs or self.sp_endpoint(sp_entity_id)
        identity = {name: list(values) for name, values in person.attributes.items()}
        name_id = NameID(
            format=NAMEID_FORMATS.get(person.name_id_format, person.name_id_format),
            text=person.name_id,
        )
        response = self.server().create_authn_response(
            identity,
            in_response_to=in_response_to,
            destination=destination,
            sp_entity_id=sp_entity_id,
            name_id=name_id,
            authn={"class_ref": PASSWORD_CLASS, "authn_auth": self.entity_id},
            sign_response=False,
            sign_assertion=False,
        )
        root = etree.fromstring(str(response).encode())
        if before_signing is not None:
            before_signing(root)
        mode = self.sign if sign is None else sign
        pair = key_pair or self.signing_key
        if mode in ("assertion", "both"):
            root = self._sign(
                root, root.find("saml:Assertion", NS), ASSERTION_TAG, pair, algorithms
            )
        if mode in ("response", "both"):
            root = self._sign(root, root, RESPONSE_TAG, pair, algorithms)
        if after_signing is not None:
            after_signing(root)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode()

    def _sign(
        self,
        root: etree._Element,
        element: etree._Element,
        node_name: str,
        pair: KeyPair,
        algorithms: tuple[str, str],
    ) -> etree._Element:
        """Enveloped signature over ``element`` (core 5.4): the template goes right after its
        Issuer, as core 5.4.1 and the schema want, then xmlsec1 fills it in."""
        sign_alg, digest_alg = algorithms
        template = pre_signature_part(
            element.get("ID"), public_key=pair.cert_base64, sign_alg=sign_alg, digest_alg=digest_alg
        )
        signature = etree.fromstring(template.to_string())
        issuer = element.find("saml:Issuer", NS)
        issuer.addnext(signature)
        signed = self.server().sec.sign_statement(
            etree.tostring(root).decode(),
            node_name=node_name,
            key_file=self.key_file(pair, "key"),
            node_id=element.get("ID"),
        )
        return etree.fromstring(signed.encode() if isinstance(signed, str) else signed)

    def session_index_of(self, response_xml: str) -> str | None:
        root = etree.fromstring(response_xml.encode())
        statement = root.find("saml:Assertion/saml:AuthnStatement", NS)
        return statement.get("SessionIndex") if statement is not None else None

    def post_form_html(self, response_xml: str, acs: str, relay_state: str | None = None) -> str:
        """The HTTP-POST binding page (bindings 3.5.4) that submits the response to the ACS."""
        info = self.server().apply_binding(
            BINDING_HTTP_POST,
            response_xml,
            destination=acs,
            relay_state=relay_state or "",
            response=True,
        )
        return info["data"]

    # --- requests from the SP ----------------------------------------------------------
    def parse_authn_request(self, params: Mapping[str, str]) -> dict[str, Any]:
        """The HTTP-Redirect AuthnRequest in ``params``: id, issuer, ACS, signed."""
        signed = "Signature" in params
        request = self.server().parse_authn_request(
            params["SAMLRequest"],
            BINDING_HTTP_REDIRECT,
            relay_state=params.get("RelayState"),
            sigalg=params.get("SigAlg"),
            signature=params.get("Signature"),
        )
        message = request.message
        issuer = message.issuer.text if message.issuer is not None else None
        if signed:
            self._verify_redirect_signature(params, "SAMLRequest", issuer)
        acs = message.assertion_consumer_service_url or self.sp_endpoint(issuer)
        policy = message.name_id_policy
        return {
            "id": message.id,
            "issuer": issuer,
            "acs": acs,
            "signed": signed,
            "force_authn": message.force_authn,
            "name_id_policy": policy.format if policy is not None else None,
            "destination": message.destination,
        }

    def _verify_redirect_signature(self, params: Mapping[str, str], kind: str, sp: str) -> None:
        """Bindings 3.4.4.1 query signature, with the SP's metadata certificates. pysaml2 only
        checks it when the IdP demands signed requests; this IdP checks whatever is signed."""
        message = {kind: params[kind], "SigAlg": params["SigAlg"], "Signature": params["Signature"]}
        if "RelayState" in params:
            message["RelayState"] = params["RelayState"]
        server = self.server()
        certs = server.metadata.certs(sp, "any", "signing")
        if not any(
            verify_redirect_signature(message, server.sec.sec_backend, cert)
            for _name, cert in certs
        ):
            raise SamlIdpError(f"the {kind} signature from {sp} does not verify")

    def logout_response_url(self, params: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        """Answer an SP's HTTP-Redirect LogoutRequest: (what it asked, the signed
        LogoutResponse URL for the browser)."""
        request = self.server().parse_logout_request(
            params["SAMLRequest"],
            BINDING_HTTP_REDIRECT,
            relay_state=params.get("RelayState"),
            sigalg=params.get("SigAlg"),
            signature=params.get("Signature"),
        )
        message = request.message
        issuer = message.issuer.text
        if "Signature" in params:
            self._verify_redirect_signature(params, "SAMLRequest", issuer)
        response = self.server().create_logout_response(
            message, [BINDING_HTTP_REDIRECT], sign=False
        )
        destination = self.sp_endpoint(issuer, "single_logout_service")
        info = self.server().apply_binding(
            BINDING_HTTP_REDIRECT,
            str(response),
            destination=destination,
            relay_state=params.get("RelayState") or "",
            response=True,
            sign=True,
            sigalg=SIG_RSA_SHA256,
        )
        asked = {
            "id": message.id,
            "issuer": issuer,
            "name_id": message.name_id.text if message.name_id is not None else None,
            "session_indexes": [s.text for s in message.session_index or []],
            "signed": "Signature" in params,
        }
        return asked, _location(info)

    def logout_request_url(
        self,
        user: str | IdpUser,
        session_index: str | None,
        *,
        sp_entity_id: str,
        relay_state: str | None = None,
        sign: bool = True,
        algorithm: str = SIG_RSA_SHA256,
        destination: str | None = None,
    ) -> tuple[str, str]:
        """An IdP-initiated LogoutRequest (HTTP-Redirect) to the SP's SLO URL: (URL, ID)."""
        person = self.users[user] if isinstance(user, str) else user
        target = destination or self.sp_endpoint(sp_entity_id, "single_logout_service")
        name_id = NameID(
            format=NAMEID_FORMATS.get(person.name_id_format, person.name_id_format),
            text=person.name_id,
        )
        request_id, request = self.server().create_logout_request(
            target,
            sp_entity_id,
            name_id=name_id,
            session_indexes=[session_index] if session_index else None,
            sign=False,
        )
        info = self.server().apply_binding(
            BINDING_HTTP_REDIRECT,
            str(request),
            destination=target,
            relay_state=relay_state or "",
            response=False,
            sign=sign,
            sigalg=algorithm,
        )
        return _location(info), request_id


def _location(info: Mapping[str, Any]) -> str:
    for name, value in info.get("headers", []):
        if name.lower() == "location":
            return value
    return info["url"]


# --- negative builders ---------------------------------------------------------------------
# Each returns a mutation for IdpCore.response_xml (before_signing / after_signing) or takes
# the finished XML: what a broken or hostile IdP, or an attacker holding a valid response,
# would send.
def set_audience(audience: str) -> Callable[[etree._Element], None]:
    def mutate(root: etree._Element) -> None:
        for node in root.iterfind(".//saml:Audience", NS):
            node.text = audience

    return mutate


def set_destination(url: str) -> Callable[[etree._Element], None]:
    def mutate(root: etree._Element) -> None:
        root.set("Destination", url)

    return mutate


def set_recipient(url: str) -> Callable[[etree._Element], None]:
    def mutate(root: etree._Element) -> None:
        for node in root.iterfind(".//saml:SubjectConfirmationData", NS):
            node.set("Recipient", url)

    return mutate


def set_in_response_to(value: str | None) -> Callable[[etree._Element], None]:
    """Sets (or with None removes) InResponseTo on the Response and the assertion's
    SubjectConfirmationData alike."""

    def mutate(root: etree._Element) -> None:
        nodes = [root, *root.iterfind(".//saml:SubjectConfirmationData", NS)]
        for node in nodes:
            if value is None:
                node.attrib.pop("InResponseTo", None)
            else:
                node.set("InResponseTo", value)

    return mutate


def shift_validity(
    *, issued: dt.timedelta = dt.timedelta(0), lifetime: dt.timedelta = dt.timedelta(minutes=5)
) -> Callable[[etree._Element], None]:
    """Re-time the assertion: issued ``issued`` from now (negative: in the past), valid for
    ``lifetime`` (Conditions and SubjectConfirmationData alike)."""

    def mutate(root: etree._Element) -> None:
        start = dt.datetime.now(dt.UTC) + issued
        end = start + lifetime
        for node in [root, *root.iterfind(".//saml:Assertion", NS)]:
            node.set("IssueInstant", _saml_time(start))
        for node in root.iterfind(".//saml:Conditions", NS):
            node.set("NotBefore", _saml_time(start))
            node.set("NotOnOrAfter", _saml_time(end))
        for node in root.iterfind(".//saml:SubjectConfirmationData", NS):
            node.set("NotOnOrAfter", _saml_time(end))
        for node in root.iterfind(".//saml:AuthnStatement", NS):
            node.set("AuthnInstant", _saml_time(start))

    return mutate


def wrap_with_evil_assertion(
    evil_name_id: str = "admin@example.com", *, same_id: bool = False, before: bool = True
) -> Callable[[etree._Element], None]:
    """XML signature wrapping (XSW): a copy of the signed assertion, its signature removed and
    its NameID changed, inserted next to the signed one. With ``same_id`` the copy keeps the
    signed assertion's ID, so an ID-based lookup may find either."""

    def mutate(root: etree._Element) -> None:
        signed = root.find("saml:Assertion", NS)
        evil = copy.deepcopy(signed)
        for signature in evil.findall("ds:Signature", NS):
            evil.remove(signature)
        if not same_id:
            evil.set("ID", "_evil" + secrets.token_hex(8))
        evil.find("saml:Subject/saml:NameID", NS).text = evil_name_id
        if before:
            signed.addprevious(evil)
        else:
            signed.addnext(evil)

    return mutate


def hide_signed_assertion_in_extensions(
    evil_name_id: str = "admin@example.com",
) -> Callable[[etree._Element], None]:
    """XSW variant: the signed assertion moves into the Response's Extensions and an unsigned
    evil assertion takes its place."""

    def mutate(root: etree._Element) -> None:
        signed = root.find("saml:Assertion", NS)
        evil = copy.deepcopy(signed)
        for signature in evil.findall("ds:Signature", NS):
            evil.remove(signature)
        evil.find("saml:Subject/saml:NameID", NS).text = evil_name_id
        signed.addprevious(evil)
        extensions = etree.Element(f"{{{NS['samlp']}}}Extensions")
        root.find("saml:Issuer", NS).addnext(extensions)
        extensions.append(signed)

    return mutate


def comment_in_name_id(split_at: int) -> Callable[[etree._Element], None]:
    """Insert an XML comment into the NameID text after it was signed: exclusive C14N leaves
    comments out, so the signature still verifies, and a reader that takes only the first
    text node sees a shorter name (the 2018 "duo" family of bugs, CVE-2017-11427/-11428)."""

    def mutate(root: etree._Element) -> None:
        node = root.find("saml:Assertion/saml:Subject/saml:NameID", NS)
        text = node.text
        node.text = text[:split_at]
        comment = etree.Comment("")
        comment.tail = text[split_at:]
        node.append(comment)

    return mutate


def encode(xml: str) -> str:
    """The SAMLResponse form value (bindings 3.5.4: base64, no DEFLATE)."""
    return base64.b64encode(xml.encode("utf-8")).decode("ascii")


# --- HTML helpers for tests that drive the IdP over HTTP -----------------------------------
@dataclass
class HtmlForm:
    action: str
    method: str
    fields: dict[str, str]


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[HtmlForm] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(HtmlForm(values.get("action", ""), values.get("method", "get"), {}))
        elif tag == "input" and self.forms and values.get("name"):
            self.forms[-1].fields[values["name"]] = values.get("value", "")


def parse_form(html: str) -> HtmlForm:
    """The first form of a page (the IdP's auto-submit POST form or its login form)."""
    parser = _FormParser()
    parser.feed(html)
    if not parser.forms:
        raise SamlIdpError(f"the page has no form:\n{html[:2000]}")
    return parser.forms[0]


# --- the IdP, in its own process ----------------------------------------------------------
class SamlIdp:
    """Start ``python tests/e2e/saml_idp_server.py CONFIG.json`` on 127.0.0.1 and stop exactly
    that process.

    ``users`` maps a login name to IdpUser (or its JSON form: name_id, name_id_format,
    attributes, password). ``auto_login`` names the user the SSO endpoint signs in without a
    form; None shows a login form ("Login", "Password"). ``sign`` is what responses sign.
    ``sp_metadata`` registers SPs at start (XML documents); ``add_sp`` registers more later.
    """

    def __init__(
        self,
        users: Mapping[str, IdpUser | Mapping[str, Any]] | None = None,
        *,
        auto_login: str | None = None,
        sign: str = "assertion",
        sp_metadata: Iterable[str] = (),
        python: str = sys.executable,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.key_pairs = [make_key_pair()]
        self.config: dict[str, Any] = {
            "users": {login: _user(data).as_json() for login, data in (users or {}).items()},
            "auto_login": auto_login,
            "sign": sign,
            "sp_metadata": list(sp_metadata),
            "key_pairs": [pair.as_json() for pair in self.key_pairs],
        }
        self.python = python
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.base_url = ""
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._config_file: IO[str] | None = None
        self.http = requests.Session()

    # --- context manager -------------------------------------------------------------
    def __enter__(self) -> SamlIdp:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- endpoints -------------------------------------------------------------------
    @property
    def entity_id(self) -> str:
        return f"{self.base_url}/metadata"

    @property
    def metadata_url(self) -> str:
        return f"{self.base_url}/metadata"

    @property
    def sso_url(self) -> str:
        return f"{self.base_url}/sso"

    @property
    def slo_url(self) -> str:
        return f"{self.base_url}/slo"

    @property
    def certificates(self) -> list[str]:
        """The PEM certificates the IdP publishes, the signing one first."""
        return [pair.cert_pem for pair in self.key_pairs]

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self.process is not None:
            raise SamlIdpError("this identity provider is already running")
        xmlsec1_path()
        self._config_file = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w", prefix="keyward-saml-idp-", suffix=".json", encoding="utf-8"
        )
        json.dump(self.config, self._config_file)
        self._config_file.flush()
        # A file, not a pipe: nobody reads the output while it runs. Closed by stop().
        self._log = tempfile.NamedTemporaryFile(prefix="keyward-saml-idp-", suffix=".log")  # noqa: SIM115
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [self.python, str(SERVER_SCRIPT), self._config_file.name],
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
                    self.base_url = line.split(" ", 1)[1].strip()
                    self.port = urlsplit(self.base_url).port or 0
                    return
            if self.process.poll() is not None:
                raise SamlIdpError(
                    f"the SAML IdP exited with status {self.process.returncode} before it was "
                    f"ready:\n{self.output()}"
                )
            time.sleep(0.05)
        raise SamlIdpError(
            f"the SAML IdP did not start in {self.startup_timeout} s:\n{self.output()}"
        )

    def stop(self) -> None:
        stop_process(self.process, self.stop_timeout)
        self.process = None
        self.http.close()
        for handle in (self._log, self._config_file):
            if handle is not None:
                handle.close()
        self._log = None
        self._config_file = None

    def output(self) -> str:
        """What the IdP process printed so far (its request log and errors)."""
        if self._log is None:
            return ""
        with open(self._log.name, "rb") as handle:
            return handle.read().decode("utf-8", errors="replace")

    # --- control ---------------------------------------------------------------------
    def _control(self, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        response = self.http.post(
            f"{self.base_url}/control/{path}", json=dict(payload or {}), timeout=30
        )
        if response.status_code != 200:
            raise SamlIdpError(f"{path}: {response.status_code} {response.text[:2000]}")
        return response.json()

    def metadata_xml(self) -> str:
        response = self.http.get(self.metadata_url, timeout=10)
        response.raise_for_status()
        return response.text

    def add_sp(self, *, metadata_xml: str | None = None, metadata_url: str | None = None) -> str:
        """Register an SP from its metadata (XML, or a URL the IdP fetches); returns the SP's
        entity id."""
        result = self._control("sp", {"metadata_xml": metadata_xml, "metadata_url": metadata_url})
        return result["entity_id"]

    def rotate_certificate(self, keep_old: bool = True) -> str:
        """Sign with a new key from now on; returns its certificate (PEM). With ``keep_old``
        the previous certificates stay in the metadata (a rollover in progress)."""
        result = self._control("rotate", {"keep_old": keep_old})
        pairs = [KeyPair(key_pem="", cert_pem=pem) for pem in result["certificates"]]
        self.key_pairs = pairs
        return result["current"]

    def set_auto_login(self, login: str | None) -> None:
        self._control("auto-login", {"user": login})

    def logout_request_url(
        self,
        user: str,
        session_index: str | None,
        *,
        sp_entity_id: str | None = None,
        relay_state: str | None = None,
    ) -> str:
        """An IdP-initiated LogoutRequest (signed, HTTP-Redirect) to the SP's SLO URL: the URL
        the browser or test must GET. ``sp_entity_id`` defaults to the only registered SP."""
        result = self._control(
            "logout-request",
            {
                "user": user,
                "session_index": session_index,
                "sp": sp_entity_id,
                "relay_state": relay_state,
            },
        )
        return result["url"]

    def idp_initiated_url(
        self, sp_entity_id: str, user: str, relay_state: str | None = None
    ) -> str:
        """GET it to be sent (auto-submit form) to the SP's ACS without an AuthnRequest."""
        query = {"sp": sp_entity_id, "user": user}
        if relay_state:
            query["relay_state"] = relay_state
        return f"{self.base_url}/idp-initiated?{urlencode(query)}"

    def events(self) -> list[dict[str, Any]]:
        """What the IdP saw and did, oldest first: authn_request, response, logout_request,
        logout_response, each with its details."""
        return self._control("events")["events"]

    def sessions(self) -> list[dict[str, Any]]:
        """Sign-ins the IdP considers open: user, sp, session_index."""
        return self._control("events")["sessions"]


# --- driving the IdP with requests ---------------------------------------------------------
def sign_in_with_http(
    authn_request_url: str,
    *,
    login: str | None = None,
    password: str = "",
    session: requests.Session | None = None,
) -> HtmlForm:
    """Follow an AuthnRequest URL at the IdP (logging in with ``login`` when the IdP shows its
    form) up to the auto-submit POST form for the SP's ACS, and return that form (action,
    SAMLResponse, RelayState) without posting it."""
    http = session or requests.Session()
    page = http.get(authn_request_url, timeout=30)
    page.raise_for_status()
    form = parse_form(page.text)
    if "SAMLResponse" in form.fields:
        return form
    if login is None:
        raise SamlIdpError("the IdP shows its login form: pass login=")
    fields = dict(form.fields)
    fields.update({"login": login, "password": password})
    action = (
        form.action
        if form.action.startswith("http")
        else f"{_origin(authn_request_url)}{form.action}"
    )
    answer = http.post(action, data=fields, timeout=30)
    answer.raise_for_status()
    result = parse_form(answer.text)
    if "SAMLResponse" not in result.fields:
        raise SamlIdpError(f"the IdP did not answer with a SAMLResponse:\n{answer.text[:2000]}")
    return result


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def query_params(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def raw_query(url: str) -> str:
    return urlsplit(url).query
