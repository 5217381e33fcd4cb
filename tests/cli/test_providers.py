"""`flask providers ...`: create/list/show/enable/disable/delete, built-ins, bad input."""

from __future__ import annotations

import json
import uuid

import pytest

from app.extensions import db
from app.models import ProviderMetadata
from app.tasks.locking import task_lock
from app.tasks.metadata import lock_name
from tests.cli.helpers import assert_error
from tests.cli.helpers import run_json
from tests.conftest import base_config

AUTHORITY = "http://127.0.0.1:9"  # never contacted: check_url only vets the address


@pytest.fixture
def config(database_url):
    return base_config(database_url, OUTBOUND_ALLOW_PRIVATE="127.0.0.1:9")


def create(runner, account_id, *extra):
    return run_json(
        runner,
        "providers",
        "create",
        "--skip-discovery-check",
        "--account",
        str(account_id),
        "--display-name",
        "Acme SSO",
        "--scheme",
        "AcmeSSO",
        "--authority",
        AUTHORITY,
        "--client-id",
        "keyward",
        "--client-secret",
        "s3cr3t-value",
        *extra,
    )


def test_create_prints_the_provider_with_callback_urls_and_no_secret(runner, make_account):
    account = make_account()
    provider = create(runner, account.id, "--jit", "--scopes", "openid profile email groups")
    assert provider["scheme"] == "AcmeSSO" and provider["protocol"] == "oidc"
    assert provider["enabled"] is True and provider["visible"] is True and provider["jit"] is True
    assert provider["scopes"] == "openid profile email groups"
    assert provider["sso_url"] == f"http://localhost/sso/{provider['id']}"
    assert provider["callback_urls"] == {
        "signin": "http://localhost/signin-AcmeSSO",
        "signout_callback": "http://localhost/signout-callback-AcmeSSO",
        "signout": "http://localhost/signout-AcmeSSO",
        "backchannel_logout": "http://localhost/backchannel-logout-AcmeSSO",
    }
    assert provider["health"] == {
        "last_success": None,
        "last_error": None,
        "key_ids": [],
        "cert_expiry": None,
    }
    assert provider["has_client_secret"] is True
    shown = runner.invoke(args=["providers", "show", provider["id"], "--json"])
    listed = runner.invoke(args=["providers", "list", "--json"])
    for output in (shown.stdout, listed.stdout):
        assert "s3cr3t-value" not in output


def test_secret_is_stored_encrypted(app, runner, make_account):
    from app.extensions import db
    from app.models import SsoProvider
    from app.services import providers

    created = create(runner, make_account().id)
    with app.app_context():
        row = db.session.get(SsoProvider, uuid.UUID(created["id"]))
        assert "s3cr3t-value" not in row.client_secret_encrypted
        assert providers.client_secret(row) == "s3cr3t-value"


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--scheme", "1bad"], "must start with a letter"),
        (["--scheme", "has space"], "must start with a letter"),
        (["--scheme", "google"], "reserved"),
        (["--authority", "http://idp.example.com"], "authority url"),
        (["--authority", "https://10.0.0.5"], "authority url"),
        (["--authorization-expression", "email.endsWith("], "line 1"),
        (["--icon-url", "javascript:alert(1)"], "icon url"),
        (["--client-id", ""], "client id"),
    ],
)
def test_bad_input_is_a_one_line_error_and_creates_nothing(runner, make_account, args, fragment):
    account = make_account()
    base = {
        "--display-name": "Acme SSO",
        "--scheme": "AcmeSSO",
        "--authority": AUTHORITY,
        "--client-id": "keyward",
    }
    overrides = dict(zip(args[::2], args[1::2], strict=True))
    merged = [item for key, value in {**base, **overrides}.items() for item in (key, value)]
    result = runner.invoke(
        args=[
            "providers",
            "create",
            "--skip-discovery-check",
            "--account",
            str(account.id),
            *merged,
            "--json",
        ]
    )
    assert_error(result, fragment)
    assert run_json(runner, "providers", "list") == []


def test_scheme_is_unique_ignoring_case(runner, make_account):
    account = make_account()
    create(runner, account.id)
    result = runner.invoke(
        args=[
            "providers",
            "create",
            "--skip-discovery-check",
            "--account",
            str(account.id),
            "--display-name",
            "X",
            "--scheme",
            "acmesso",
            "--authority",
            AUTHORITY,
            "--client-id",
            "k",
            "--json",
        ]
    )
    assert_error(result, "already in use")


def test_unknown_account_and_missing_account_are_errors(runner):
    result = runner.invoke(
        args=[
            "providers",
            "create",
            "--skip-discovery-check",
            "--account",
            "999",
            "--display-name",
            "X",
            "--scheme",
            "X",
            "--authority",
            AUTHORITY,
            "--client-id",
            "k",
        ]
    )
    assert_error(result, "no account with id 999")
    result = runner.invoke(
        args=[
            "providers",
            "create",
            "--skip-discovery-check",
            "--display-name",
            "X",
            "--scheme",
            "X",
            "--authority",
            AUTHORITY,
            "--client-id",
            "k",
        ]
    )
    assert_error(result, "--account is required")


def test_builtin_provider_has_no_account_and_takes_authority(runner):
    google = run_json(
        runner,
        "providers",
        "create",
        "--skip-discovery-check",
        "--builtin",
        "google",
        "--client-id",
        "g-client",
        "--authority",
        AUTHORITY,
    )
    assert google["builtin"] == "google" and google["account_id"] is None
    assert google["scheme"] == "google" and google["authority"] == AUTHORITY
    again = runner.invoke(
        args=[
            "providers",
            "create",
            "--skip-discovery-check",
            "--builtin",
            "google",
            "--client-id",
            "g",
            "--authority",
            AUTHORITY,
        ]
    )
    assert_error(again, "already exists")


def test_enable_disable_delete(runner, make_account):
    provider = create(runner, make_account().id)
    assert run_json(runner, "providers", "disable", provider["id"])["enabled"] is False
    assert run_json(runner, "providers", "enable", provider["id"])["enabled"] is True
    deleted = run_json(runner, "providers", "delete", provider["id"])
    assert deleted == {
        "id": provider["id"],
        "scheme": "AcmeSSO",
        "deleted": True,
        "logins_removed": 0,
    }
    assert_error(runner.invoke(args=["providers", "show", provider["id"]]), "no provider")
    assert_error(runner.invoke(args=["providers", "show", "not-a-guid"]), "no provider")


def test_refresh_of_an_unreachable_idp_fails_and_records_the_error(runner, make_account):
    provider = create(runner, make_account().id)
    result = runner.invoke(args=["providers", "refresh", provider["id"], "--json"])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("Error: 1 provider(s) could not be refreshed")
    health = run_json(runner, "providers", "show", provider["id"])["health"]
    assert health["last_error"] and health["last_success"] is None


def test_refresh_skips_a_provider_a_worker_is_refreshing(app, runner, make_account):
    provider = create(runner, make_account().id)
    before = _attempts(app, provider["id"])
    with app.app_context(), task_lock(lock_name(provider["id"]), 60) as held:
        assert held
        result = runner.invoke(args=["providers", "refresh", provider["id"], "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["refreshed"] is None
        text = runner.invoke(args=["providers", "refresh", provider["id"]])
        assert "skipped: a worker is refreshing it right now" in text.stdout
    # Nothing was fetched: no failed attempt was added.
    assert _attempts(app, provider["id"]) == before
    # Once the lock is free the refresh runs (and fails: the IdP is unreachable).
    assert runner.invoke(args=["providers", "refresh", provider["id"]]).exit_code == 1
    assert _attempts(app, provider["id"]) == before + 1


def _attempts(app, provider_id: str) -> int:
    """Failed fetches in a row of the provider (its IdP is unreachable in these tests)."""
    with app.app_context():
        record = db.session.get(ProviderMetadata, uuid.UUID(provider_id))
        return record.failure_count if record is not None else 0


def test_create_checks_discovery_unless_skipped(runner, make_account):
    account = make_account()
    result = runner.invoke(
        args=[
            "providers",
            "create",
            "--account",
            str(account.id),
            "--display-name",
            "Acme SSO",
            "--scheme",
            "AcmeSSO",
            "--authority",
            AUTHORITY,
            "--client-id",
            "keyward",
            "--json",
        ]
    )
    assert_error(result, f"discovery document at {AUTHORITY}/.well-known/openid-configuration")
    assert run_json(runner, "providers", "list") == []


def test_several_bad_fields_are_listed_on_one_line(runner, make_account):
    account = make_account()
    result = runner.invoke(
        args=[
            "providers",
            "create",
            "--skip-discovery-check",
            "--account",
            str(account.id),
            "--display-name",
            "X",
            "--scheme",
            "1bad",
            "--authority",
            "https://10.0.0.5",
            "--client-id",
            "",
        ]
    )
    assert_error(result, "scheme: Authentication scheme must start with a letter")
    line = result.stderr.strip()
    assert "; authority: Authority URL: 10.0.0.5 is not a public address" in line
    assert "; client_id: Client ID is required." in line


def test_delete_refused_while_a_scim_token_is_linked(app, runner, make_account):
    from app.extensions import db
    from app.models import ScimToken

    account = make_account()
    provider = create(runner, account.id)
    with app.app_context():
        db.session.add(
            ScimToken(
                account_id=account.id,
                provider_id=uuid.UUID(provider["id"]),
                name="Okta",
                token_hash="a" * 64,
            )
        )
        db.session.commit()
    result = runner.invoke(args=["providers", "delete", provider["id"], "--json"])
    assert_error(result, "Linked to SCIM token(s) Okta: revoke them or unlink them first.")
    assert run_json(runner, "providers", "show", provider["id"])["id"] == provider["id"]


# --- export / import ------------------------------------------------------------------------------
def _full_provider(runner, account_id):
    return create(
        runner,
        account_id,
        "--jit",
        "--default-role",
        "admin",
        "--scopes",
        "openid profile email groups",
        "--authorization-expression",
        '"staff" in groups',
        "--icon-url",
        "https://cdn.example.com/acme.png",
        "--trust-email-verified",
        "--external-id-claim",
        "oid",
        "--hidden",
    )


def _set_role_mapping(app, provider_id):
    from app.extensions import db
    from app.models import SsoProvider
    from app.services import providers
    from app.services.providers import ProviderFields

    with app.app_context():
        row = db.session.get(SsoProvider, uuid.UUID(provider_id))
        current = {
            name: getattr(row, name)
            for name in ProviderFields.__dataclass_fields__
            if name not in ("client_secret", "role_mappings") and hasattr(row, name)
        }
        providers.update_provider(
            row,
            ProviderFields(
                **{
                    **current,
                    "role_claim": "groups",
                    "role_mapping_default": "member",
                    "role_mappings": (("Admins", "admin"), ("Founders", "owner")),
                }
            ),
        )
        db.session.commit()


def test_export_never_contains_the_secret(app, runner, make_account, tmp_path):
    from app.extensions import db
    from app.models import SsoProvider

    account = make_account()
    provider = _full_provider(runner, account.id)
    with app.app_context():
        ciphertext = db.session.get(SsoProvider, uuid.UUID(provider["id"])).client_secret_encrypted
    path = tmp_path / "providers.json"
    result = runner.invoke(args=["providers", "export", str(path), "--account", str(account.id)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"Exported 1 provider(s) to {path}."
    to_stdout = runner.invoke(args=["providers", "export", "-"])
    assert to_stdout.exit_code == 0, to_stdout.output
    for text in (path.read_text(), to_stdout.stdout):
        assert "s3cr3t-value" not in text
        assert ciphertext not in text
        assert "client_secret_encrypted" not in text
        (item,) = json.loads(text)
        assert item["has_client_secret"] is True and "client_secret" not in item


def test_export_of_an_unknown_account_is_an_error(runner, tmp_path):
    path = tmp_path / "out.json"
    assert_error(
        runner.invoke(args=["providers", "export", str(path), "--account", "999"]),
        "no account with id 999",
    )
    assert not path.exists()


def _settings(item: dict) -> dict:
    installation = {"id", "account_id", "version", "sso_url", "callback_urls", "health"}
    return {k: v for k, v in item.items() if k not in installation}


def test_import_round_trip(app, runner, make_account, tmp_path):
    source, target = make_account("Acme"), make_account("Initech")
    provider = _full_provider(runner, source.id)
    _set_role_mapping(app, provider["id"])
    path = tmp_path / "providers.json"
    assert runner.invoke(args=["providers", "export", str(path)]).exit_code == 0
    exported = json.loads(path.read_text())
    run_json(runner, "providers", "delete", provider["id"])  # schemes are unique everywhere

    imported = run_json(
        runner,
        "providers",
        "import",
        str(path),
        "--account",
        str(target.id),
        "--skip-discovery-check",
    )
    assert [p["account_id"] for p in imported] == [target.id]
    assert imported[0]["id"] != provider["id"]
    result = runner.invoke(args=["providers", "export", "-", "--account", str(target.id)])
    (again,) = json.loads(result.stdout)
    # The secret never travelled: the copy has none until an admin sets it.
    assert again["has_client_secret"] is False
    assert _settings(again) == {**_settings(exported[0]), "has_client_secret": False}
    assert again["role_mappings"] == [
        {"value": "Admins", "role": "admin"},
        {"value": "Founders", "role": "owner"},
    ]
    assert again["visible"] is False and again["jit"] is True and again["default_role"] == "admin"


def _write(tmp_path, document) -> str:
    path = tmp_path / "import.json"
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return str(path)


def _item(scheme: str, **changes) -> dict:
    return {
        "protocol": "oidc",
        "display_name": f"{scheme} SSO",
        "scheme": scheme,
        "authority": AUTHORITY,
        "client_id": "keyward",
        **changes,
    }


@pytest.mark.parametrize(
    "document,fragment",
    [
        ([_item("Good"), _item("1bad")], "item 2, scheme: Authentication scheme must start"),
        ([_item("Good"), _item("Other", enabled="yes")], "item 2, enabled: must be true or false"),
        ([_item("Good"), _item("Other", colour="red")], "item 2, colour: unknown setting"),
        ([_item("Good"), _item("good")], "item 2, scheme: Authentication scheme 'good' is used"),
        ([_item("Good"), "nope"], "item 2: must be a JSON object"),
        ([_item("Good", builtin="google")], "item 1, builtin: built-in providers"),
        (
            [_item("Good", role_claim="groups", role_mappings=[{"value": "A", "role": "boss"}])],
            "item 1, role_mappings[0]: Role mapping 1 ('A') must be owner, admin or member",
        ),
        ({"providers": []}, "must be a JSON list of providers"),
        ([], "holds no providers"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_import_with_an_invalid_item_changes_nothing(
    runner, make_account, tmp_path, document, fragment
):
    account = make_account()
    result = runner.invoke(
        args=[
            "providers",
            "import",
            _write(tmp_path, document),
            "--account",
            str(account.id),
            "--skip-discovery-check",
        ]
    )
    assert_error(result, fragment)
    assert run_json(runner, "providers", "list") == []
    assert run_json(runner, "audit", "list", "--action", "provider.") == []


def test_import_never_overwrites_a_scheme_in_use(runner, make_account, tmp_path):
    account = make_account()
    existing = create(runner, account.id)
    result = runner.invoke(
        args=[
            "providers",
            "import",
            _write(tmp_path, [_item("New"), _item("acmesso", display_name="Impostor")]),
            "--account",
            str(account.id),
            "--skip-discovery-check",
        ]
    )
    assert_error(result, "item 2, scheme: Authentication scheme 'acmesso' is already in use")
    assert [p["id"] for p in run_json(runner, "providers", "list")] == [existing["id"]]
    assert run_json(runner, "providers", "show", existing["id"])["display_name"] == "Acme SSO"


def test_import_checks_discovery_unless_skipped(runner, make_account, tmp_path):
    account = make_account()
    path = _write(tmp_path, [_item("Good")])
    result = runner.invoke(args=["providers", "import", path, "--account", str(account.id)])
    assert_error(result, "item 1, authority: The discovery document at")
    assert run_json(runner, "providers", "list") == []


def test_import_needs_an_existing_account(runner, tmp_path):
    path = _write(tmp_path, [_item("Good")])
    assert_error(runner.invoke(args=["providers", "import", path]), "--account")
    assert_error(
        runner.invoke(args=["providers", "import", path, "--account", "999"]),
        "no account with id 999",
    )


def test_import_of_a_missing_file_is_an_error(runner, make_account, tmp_path):
    account = make_account()
    missing = tmp_path / "nope.json"
    assert_error(
        runner.invoke(args=["providers", "import", str(missing), "--account", str(account.id)]),
        f"Cannot read {missing}: No such file or directory.",
    )


# --- SAML 2.0 ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saml_idp():
    """An in-process pysaml2 IdP: its metadata document is what the commands load."""
    from tests.e2e.saml_idp import IdpCore

    core = IdpCore("http://127.0.0.1:9")
    yield core
    core.close()


def create_saml(runner, account_id, *extra, scheme="AcmeSaml"):
    return run_json(
        runner,
        "providers",
        "create",
        "--account",
        str(account_id),
        "--protocol",
        "saml",
        "--display-name",
        "Acme SAML",
        "--scheme",
        scheme,
        *extra,
    )


def _metadata_file(tmp_path, saml_idp) -> str:
    path = tmp_path / "idp-metadata.xml"
    path.write_text(saml_idp.metadata_xml())
    return str(path)


def test_create_saml_from_a_metadata_file(runner, make_account, tmp_path, saml_idp):
    from app.services import saml

    provider = create_saml(
        runner, make_account().id, "--metadata-file", _metadata_file(tmp_path, saml_idp)
    )
    assert provider["protocol"] == "saml" and provider["scheme"] == "AcmeSaml"
    assert provider["saml"] == {
        "idp_entity_id": saml_idp.entity_id,
        "sso_url": saml_idp.sso_url,
        "slo_url": saml_idp.slo_url,
        "metadata_url": None,
        "signed": "assertion",
        "allow_idp_initiated": False,
        "sign_requests": False,
        "nameid_format": None,
        "sp_entity_id": "http://localhost/saml/AcmeSaml/metadata",
        "sp_metadata_url": "http://localhost/saml/AcmeSaml/metadata",
        "acs_url": "http://localhost/signin-AcmeSaml",
        "sp_slo_url": "http://localhost/signout-AcmeSaml",
    }
    fingerprint, not_after = saml.certificate_facts(saml_idp.signing_key.cert_pem)
    assert provider["certificates"] == [
        {"fingerprint": fingerprint, "not_after": not_after.isoformat()}
    ]
    assert provider["health"]["cert_expiry"] == not_after.isoformat()
    assert provider["has_client_secret"] is False and provider["client_id"] is None


def test_create_saml_with_every_option(app, runner, make_account, tmp_path, saml_idp):
    provider = create_saml(
        runner,
        make_account().id,
        "--metadata-file",
        _metadata_file(tmp_path, saml_idp),
        "--signed",
        "both",
        "--allow-idp-initiated",
        "--sign-requests",
        "--nameid-format",
        "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
        "--email-attribute",
        "mail",
        "--given-name-attribute",
        "givenName",
        "--family-name-attribute",
        "sn",
        "--name-attribute",
        "displayName",
        "--jit",
    )
    assert provider["saml"]["signed"] == "both"
    assert provider["saml"]["allow_idp_initiated"] is True
    assert provider["saml"]["sign_requests"] is True
    assert provider["jit"] is True
    shown = runner.invoke(args=["providers", "show", provider["id"], "--json"]).stdout
    assert "PRIVATE KEY" not in shown
    from app.extensions import db
    from app.models import SsoProvider

    with app.app_context():
        row = db.session.get(SsoProvider, uuid.UUID(provider["id"]))
        assert (row.saml_email_attribute, row.saml_given_name_attribute) == ("mail", "givenName")
        assert (row.saml_family_name_attribute, row.saml_name_attribute) == ("sn", "displayName")
        assert row.saml_sp_cert and "PRIVATE KEY" not in row.saml_sp_key_encrypted
    # The request-signing key is a provider secret for `flask keys rotate`.
    assert run_json(runner, "keys", "rotate") == {"providers": 1, "sessions": 0}


def test_create_saml_from_a_metadata_url_fetches_it(make_app, make_account, saml_idp):
    import threading
    from http.server import BaseHTTPRequestHandler
    from http.server import ThreadingHTTPServer

    document = saml_idp.metadata_xml().encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

        def do_GET(self):
            found = self.path == "/md"
            body = document if found else b"nope"
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = False
    server.block_on_close = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        runner = make_app(OUTBOUND_ALLOW_PRIVATE=host).test_cli_runner()
        account = make_account()
        provider = create_saml(runner, account.id, "--metadata-url", f"http://{host}/md")
        assert provider["saml"]["metadata_url"] == f"http://{host}/md"
        assert provider["saml"]["idp_entity_id"] == saml_idp.entity_id
        refreshed = run_json(runner, "providers", "refresh", provider["id"])
        assert refreshed["refreshed"] is True
        assert refreshed["health"]["last_success"] is not None
        missing = runner.invoke(
            args=[
                "providers",
                "create",
                "--account",
                str(account.id),
                "--protocol",
                "saml",
                "--display-name",
                "Other",
                "--scheme",
                "Other",
                "--metadata-url",
                f"http://{host}/missing",
            ]
        )
        assert_error(missing, "could not be loaded")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    "args,fragment",
    [
        ([], "metadata xml, or enter its metadata url"),
        (["--metadata-file", "/nonexistent/md.xml"], "Cannot read /nonexistent/md.xml"),
        (["--metadata-url", "http://idp.example.com/md"], "only https"),
        (["--metadata-file", "BAD"], "not valid XML"),
        (
            [
                "--metadata-file",
                "GOOD",
                "--nameid-format",
                "urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
            ],
            "transient",
        ),
    ],
)
def test_bad_saml_input_is_a_one_line_error(
    runner, make_account, tmp_path, saml_idp, args, fragment
):
    args = list(args)
    if "BAD" in args:
        bad = tmp_path / "bad.xml"
        bad.write_text("<not xml")
        args[args.index("BAD")] = str(bad)
    if "GOOD" in args:
        args[args.index("GOOD")] = _metadata_file(tmp_path, saml_idp)
    result = runner.invoke(
        args=[
            "providers",
            "create",
            "--account",
            str(make_account().id),
            "--protocol",
            "saml",
            "--display-name",
            "Acme SAML",
            "--scheme",
            "AcmeSaml",
            *args,
            "--json",
        ]
    )
    assert_error(result, fragment)
    assert run_json(runner, "providers", "list") == []


def test_saml_export_import_round_trip(runner, make_account, tmp_path, saml_idp):
    source, target = make_account("Acme"), make_account("Initech")
    provider = create_saml(
        runner,
        source.id,
        "--metadata-file",
        _metadata_file(tmp_path, saml_idp),
        "--sign-requests",
        "--email-attribute",
        "mail",
    )
    path = tmp_path / "providers.json"
    assert runner.invoke(args=["providers", "export", str(path)]).exit_code == 0
    exported = json.loads(path.read_text())
    assert exported[0]["saml_metadata_xml"].startswith("<?xml")
    assert "PRIVATE KEY" not in path.read_text()
    run_json(runner, "providers", "delete", provider["id"])
    (imported,) = run_json(runner, "providers", "import", str(path), "--account", str(target.id))
    assert imported["saml"] == provider["saml"]
    assert imported["certificates"] == provider["certificates"]
