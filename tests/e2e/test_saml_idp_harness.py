"""The end-to-end SAML IdP itself (pysaml2 in its own process), without Keyward.

These tests prove that the harness the Keyward SAML tests rely on does what they need: its
metadata, signed responses to an AuthnRequest (auto-login and the login form), IdP-initiated
responses, certificate rotation, and both directions of single logout. Signatures are checked
here with python-xmlsec directly, not with Keyward's code.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import zlib
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
import requests
import xmlsec
from lxml import etree

from tests.e2e.saml_idp import NS
from tests.e2e.saml_idp import SamlIdp
from tests.e2e.saml_idp import parse_form
from tests.e2e.saml_idp import query_params
from tests.e2e.saml_idp import raw_query
from tests.e2e.saml_idp import sign_in_with_http

SP = "http://localhost/saml/harness/metadata"
ACS = "http://localhost/signin-harness"
SLO = "http://localhost/signout-harness"
SP_METADATA = f"""<?xml version="1.0"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{SP}">
  <md:SPSSODescriptor AuthnRequestsSigned="false" WantAssertionsSigned="true"
      protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:SingleLogoutService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
        Location="{SLO}"/>
    <md:NameIDFormat>urn:oasis:names:tc:SAML:2.0:nameid-format:persistent</md:NameIDFormat>
    <md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
        Location="{ACS}" index="0" isDefault="true"/>
  </md:SPSSODescriptor>
</md:EntityDescriptor>
"""
ALICE = {
    "name_id": "alice-0001",
    "password": "wonderland",
    "attributes": {"email": ["alice@example.com"], "groups": ["admins", "staff"]},
}


@pytest.fixture(scope="module")
def idp() -> Iterator[SamlIdp]:
    with SamlIdp(users={"alice": ALICE}, auto_login="alice", sp_metadata=[SP_METADATA]) as idp:
        yield idp


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _redirect_encode(xml: str) -> str:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    return base64.b64encode(deflater.compress(xml.encode()) + deflater.flush()).decode()


def _authn_request_url(idp: SamlIdp, request_id: str, relay_state: str = "rs-1") -> str:
    xml = (
        '<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
        'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" '
        f'ID="{request_id}" Version="2.0" IssueInstant="{_now()}" Destination="{idp.sso_url}" '
        f'AssertionConsumerServiceURL="{ACS}" '
        'ProtocolBinding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST">'
        f"<saml:Issuer>{SP}</saml:Issuer></samlp:AuthnRequest>"
    )
    query = urlencode({"SAMLRequest": _redirect_encode(xml), "RelayState": relay_state})
    return f"{idp.sso_url}?{query}"


def _verify_assertion(response_xml: bytes, cert_pem: str) -> etree._Element:
    """Verify the assertion's enveloped signature with xmlsec and return the assertion."""
    root = etree.fromstring(response_xml)
    xmlsec.tree.add_ids(root, ["ID"])
    assertion = root.find("saml:Assertion", NS)
    signature = assertion.find("ds:Signature", NS)
    context = xmlsec.SignatureContext()
    context.key = xmlsec.Key.from_memory(cert_pem.encode(), xmlsec.constants.KeyDataFormatCertPem)
    context.verify(signature)  # raises xmlsec.Error when it does not verify
    return assertion


def test_metadata_publishes_the_endpoints_and_the_signing_certificate(idp):
    root = etree.fromstring(idp.metadata_xml().encode())

    assert root.get("entityID") == idp.entity_id
    descriptor = root.find("md:IDPSSODescriptor", NS)
    sso = descriptor.find("md:SingleSignOnService", NS)
    assert sso.get("Location") == idp.sso_url
    assert sso.get("Binding").endswith("HTTP-Redirect")
    assert descriptor.find("md:SingleLogoutService", NS).get("Location") == idp.slo_url
    certs = [
        node.text
        for node in descriptor.iterfind(
            "md:KeyDescriptor[@use='signing']/ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS
        )
    ]
    assert certs == ["".join(idp.certificates[0].splitlines()[1:-1])]


def test_sso_answers_an_authn_request_with_a_signed_assertion_for_the_acs(idp):
    request_id = "_req" + secrets.token_hex(8)

    form = sign_in_with_http(_authn_request_url(idp, request_id))

    assert form.action == ACS
    assert form.method.lower() == "post"
    assert form.fields["RelayState"] == "rs-1"
    xml = base64.b64decode(form.fields["SAMLResponse"])
    root = etree.fromstring(xml)
    assert root.get("InResponseTo") == request_id
    assert root.get("Destination") == ACS
    assertion = _verify_assertion(xml, idp.certificates[0])
    assert assertion.find("saml:Subject/saml:NameID", NS).text == "alice-0001"
    data = assertion.find("saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData", NS)
    assert (data.get("Recipient"), data.get("InResponseTo")) == (ACS, request_id)
    assert assertion.find(".//saml:Audience", NS).text == SP
    attributes = {
        node.get("Name"): [value.text for value in node.findall("saml:AttributeValue", NS)]
        for node in assertion.iterfind(".//saml:Attribute", NS)
    }
    assert attributes == {"email": ["alice@example.com"], "groups": ["admins", "staff"]}
    signature = assertion.find("ds:Signature/ds:SignedInfo/ds:SignatureMethod", NS)
    assert signature.get("Algorithm").endswith("rsa-sha256")
    assert any(e["type"] == "authn_request" and e["id"] == request_id for e in idp.events())


def test_login_form_signs_in_with_the_right_password_only(idp):
    idp.set_auto_login(None)
    try:
        page = requests.get(_authn_request_url(idp, "_form1"), timeout=10)
        assert ">Login</label>" in page.text and ">Password</label>" in page.text
        login = parse_form(page.text)
        wrong = requests.post(
            f"{idp.base_url}{login.action}",
            data={**login.fields, "login": "alice", "password": "nope"},
            timeout=10,
        )
        assert "wrong password" in wrong.text
        assert "SAMLResponse" not in parse_form(wrong.text).fields

        form = sign_in_with_http(
            _authn_request_url(idp, "_form2"), login="alice", password="wonderland"
        )

        assert form.action == ACS
        assert (
            etree.fromstring(base64.b64decode(form.fields["SAMLResponse"])).get("InResponseTo")
            == "_form2"
        )
    finally:
        idp.set_auto_login("alice")


def test_idp_initiated_response_has_no_in_response_to(idp):
    page = requests.get(idp.idp_initiated_url(SP, "alice", relay_state="go"), timeout=10)

    form = parse_form(page.text)
    assert form.action == ACS
    assert form.fields["RelayState"] == "go"
    xml = base64.b64decode(form.fields["SAMLResponse"])
    root = etree.fromstring(xml)
    assert root.get("InResponseTo") is None
    assertion = _verify_assertion(xml, idp.certificates[0])
    data = assertion.find(".//saml:SubjectConfirmationData", NS)
    assert data.get("InResponseTo") is None


def test_sp_logout_request_is_answered_with_a_signed_logout_response(idp):
    form = sign_in_with_http(_authn_request_url(idp, "_slo1"))
    assertion = _verify_assertion(
        base64.b64decode(form.fields["SAMLResponse"]), idp.certificates[0]
    )
    session_index = assertion.find("saml:AuthnStatement", NS).get("SessionIndex")
    logout = (
        '<samlp:LogoutRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
        'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" '
        f'ID="_lr1" Version="2.0" IssueInstant="{_now()}" Destination="{idp.slo_url}">'
        f"<saml:Issuer>{SP}</saml:Issuer>"
        '<saml:NameID Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent">'
        "alice-0001</saml:NameID>"
        f"<samlp:SessionIndex>{session_index}</samlp:SessionIndex></samlp:LogoutRequest>"
    )
    url = f"{idp.slo_url}?" + urlencode(
        {"SAMLRequest": _redirect_encode(logout), "RelayState": "x"}
    )

    answer = requests.get(url, allow_redirects=False, timeout=10)

    assert answer.status_code == 303
    location = answer.headers["Location"]
    assert location.startswith(f"{SLO}?")
    params = query_params(location)
    assert {"SAMLResponse", "RelayState", "SigAlg", "Signature"} <= set(params)
    response = etree.fromstring(zlib.decompress(base64.b64decode(params["SAMLResponse"]), -15))
    assert response.get("InResponseTo") == "_lr1"
    _verify_query_signature(location, "SAMLResponse", idp.certificates[0])
    asked = [e for e in idp.events() if e["type"] == "logout_request"][-1]
    assert (asked["name_id"], asked["session_indexes"]) == ("alice-0001", [session_index])
    assert not any(s["session_index"] == session_index for s in idp.sessions())


def _verify_query_signature(url: str, kind: str, cert_pem: str) -> None:
    """Bindings 3.4.4.1: the signature covers kind=...&RelayState=...&SigAlg=... as sent."""
    parts = dict(part.split("=", 1) for part in raw_query(url).split("&"))
    signed = "&".join(
        f"{name}={parts[name]}" for name in (kind, "RelayState", "SigAlg") if name in parts
    )
    params = query_params(url)
    context = xmlsec.SignatureContext()
    context.key = xmlsec.Key.from_memory(cert_pem.encode(), xmlsec.constants.KeyDataFormatCertPem)
    context.verify_binary(
        signed.encode(), xmlsec.constants.TransformRsaSha256, base64.b64decode(params["Signature"])
    )


def test_idp_initiated_logout_request_url_is_signed_for_the_sp(idp):
    url = idp.logout_request_url("alice", "session-9", relay_state="bye")

    assert url.startswith(f"{SLO}?SAMLRequest=")
    request = etree.fromstring(
        zlib.decompress(base64.b64decode(query_params(url)["SAMLRequest"]), -15)
    )
    assert request.get("Destination") == SLO
    assert request.find("saml:NameID", NS).text == "alice-0001"
    assert request.find("samlp:SessionIndex", NS).text == "session-9"
    assert request.find("saml:Issuer", NS).text == idp.entity_id
    _verify_query_signature(url, "SAMLRequest", idp.certificates[0])


def test_rotation_publishes_both_certificates_and_signs_with_the_new_one():
    with SamlIdp(users={"alice": ALICE}, auto_login="alice", sp_metadata=[SP_METADATA]) as idp:
        old = idp.certificates[0]

        new = idp.rotate_certificate(keep_old=True)

        assert new != old
        assert idp.certificates == [new, old]
        published = etree.fromstring(idp.metadata_xml().encode()).findall(".//md:KeyDescriptor", NS)
        assert len(published) == 2
        xml = base64.b64decode(
            sign_in_with_http(_authn_request_url(idp, "_rot")).fields["SAMLResponse"]
        )
        _verify_assertion(xml, new)
        with pytest.raises(xmlsec.Error):
            _verify_assertion(xml, old)

        idp.rotate_certificate(keep_old=False)
        assert len(idp.certificates) == 1
        process = idp.process

    # Stopped by pid on exit, and only that process.
    assert process.poll() is not None
