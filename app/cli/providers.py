"""`flask providers`: create, list, show, enable, disable, delete, refresh, export and import
SSO providers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import click

from app.cli.output import KeywardGroup
from app.cli.output import emit
from app.cli.output import service_errors
from app.extensions import db
from app.services import accounts
from app.services import providers
from app.services.errors import NotFound
from app.services.errors import ValidationError
from app.services.providers import ProviderFields
from app.tasks.metadata import enqueue_refresh

providers_cli = KeywardGroup("providers", help="Manage SSO providers.")

BASE_SCOPES = ("openid", "profile", "email")


@contextmanager
def _all_field_errors() -> Iterator[None]:
    """A ValidationError naming several fields becomes one line listing all of them."""
    try:
        yield
    except ValidationError as error:
        if len(error.errors) <= 1:
            raise
        line = "; ".join(
            message if message.startswith(f"{field}:") else f"{field}: {message}"
            for field, message in error.errors.items()
        )
        raise ValidationError(line, error.field, errors=error.errors) from None


def _line(provider) -> str:
    state = "enabled" if provider.enabled else "disabled"
    owner = f"account {provider.account_id}" if provider.account_id else "built-in"
    return f"{provider.id}\t{provider.scheme}\t{provider.protocol}\t{state}\t{owner}"


@providers_cli.command("create")
@click.option("--account", "account_id", type=int, default=None, help="Owning account id.")
@click.option(
    "--builtin",
    type=click.Choice(["google", "microsoft"]),
    default=None,
    help="Create the built-in Google or Microsoft provider (no account).",
)
@click.option("--protocol", type=click.Choice(["oidc", "oauth2", "saml"]), default="oidc")
@click.option("--display-name", default=None, help="Button text on the sign-in page.")
@click.option("--scheme", default=None, help="Authentication scheme: /signin-<scheme>.")
@click.option("--authority", default=None, help="OpenID Connect issuer / authority URL.")
@click.option("--client-id", default=None)
@click.option("--client-secret", default=None, help="Stored encrypted; never shown again.")
@click.option(
    "--response-type", type=click.Choice(["code", "id_token", "code id_token"]), default="code"
)
@click.option("--scopes", default=None, help='Scopes, e.g. "openid profile email groups".')
@click.option("--additional-claims", default=None, help="Extra scopes/claims to request.")
@click.option("--jit/--no-jit", default=False, help="Create unknown users at first sign-in.")
@click.option("--default-role", type=click.Choice(["owner", "admin", "member"]), default="member")
@click.option("--authorization-expression", default=None, help="CEL over the ID token claims.")
@click.option(
    "--trust-email-verified", is_flag=True, help="The IdP only sends verified email addresses."
)
@click.option("--external-id-claim", default=None, help='Claim matched to SCIM externalId ("oid").')
@click.option("--allow-hs256", is_flag=True, help="Accept HS256 ID tokens (client secret).")
@click.option("--icon-url", default=None)
@click.option("--hidden", is_flag=True, help="Not shown on /login (direct URL still works).")
@click.option("--disabled", is_flag=True)
@click.option("--authorization-endpoint", default=None, help="OAuth 2.0 only.")
@click.option("--token-endpoint", default=None, help="OAuth 2.0 only.")
@click.option("--userinfo-endpoint", default=None, help="OAuth 2.0 only.")
@click.option("--subject-field", default="sub", help="OAuth 2.0 userinfo field of the subject.")
@click.option("--email-field", default="email")
@click.option("--name-field", default="name")
@click.option("--metadata-url", default=None, help="SAML: the IdP's metadata URL (fetched now).")
@click.option(
    "--metadata-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="SAML: a file with the IdP's metadata XML (- for stdin).",
)
@click.option(
    "--signed",
    type=click.Choice(["assertion", "response", "both"]),
    default="assertion",
    help="SAML: what the IdP must sign.",
)
@click.option(
    "--allow-idp-initiated", is_flag=True, help="SAML: accept sign-ins started at the IdP."
)
@click.option("--sign-requests", is_flag=True, help="SAML: sign AuthnRequests and logout messages.")
@click.option("--nameid-format", default=None, help="SAML: the NameID format to ask for (URN).")
@click.option("--email-attribute", default=None, help="SAML: attribute holding the email.")
@click.option("--given-name-attribute", default=None, help="SAML: attribute of the given name.")
@click.option("--family-name-attribute", default=None, help="SAML: attribute of the family name.")
@click.option("--name-attribute", default=None, help="SAML: attribute of the display name.")
@click.option(
    "--skip-discovery-check",
    is_flag=True,
    help="Save without loading the authority's discovery document or the SAML metadata URL "
    "(IdP not reachable yet; the metadata refresh loads it later).",
)
@click.option("--json", "as_json", is_flag=True)
@service_errors
def create_provider(
    account_id,
    builtin,
    protocol,
    display_name,
    scheme,
    authority,
    client_id,
    client_secret,
    response_type,
    scopes,
    additional_claims,
    jit,
    default_role,
    authorization_expression,
    trust_email_verified,
    external_id_claim,
    allow_hs256,
    icon_url,
    hidden,
    disabled,
    authorization_endpoint,
    token_endpoint,
    userinfo_endpoint,
    subject_field,
    email_field,
    name_field,
    metadata_url,
    metadata_file,
    signed,
    allow_idp_initiated,
    sign_requests,
    nameid_format,
    email_attribute,
    given_name_attribute,
    family_name_attribute,
    name_attribute,
    skip_discovery_check,
    as_json,
) -> None:
    """Create a provider and print it (with its id and callback URLs).

    OpenID Connect: the authority's discovery document must load and name the authority as
    its issuer, unless --skip-discovery-check. SAML: --metadata-url (fetched now) or
    --metadata-file; the SP metadata to give the IdP is then at saml.sp_metadata_url."""
    extra = [s for s in f"{scopes or ''} {additional_claims or ''}".split() if s not in BASE_SCOPES]
    if builtin is not None:
        if account_id is not None:
            raise ValidationError("--builtin providers belong to no account; omit --account.")
        fields = providers.builtin_fields(
            builtin, client_id=client_id or "", client_secret=client_secret, authority=authority
        )
        account = None
    else:
        if account_id is None:
            raise ValidationError("--account is required (or --builtin).")
        try:
            account = accounts.get_account(account_id)
        except NotFound:
            raise ValidationError(f"No account with id {account_id}.") from None
        fields = ProviderFields(
            display_name=display_name or "",
            scheme=scheme or "",
            authority=authority,
            client_id=client_id,
            client_secret=client_secret,
        )
    fields = ProviderFields(
        **{
            **fields.__dict__,
            "protocol": protocol,
            "response_type": response_type,
            "additional_scopes": " ".join(dict.fromkeys(extra)),
            "jit_provisioning": jit,
            "default_role": default_role,
            "authorization_expression": authorization_expression,
            "trust_email_verified": trust_email_verified or fields.trust_email_verified,
            "external_id_claim": external_id_claim or fields.external_id_claim,
            "allow_hs256": allow_hs256,
            "icon_url": icon_url,
            "visible": not hidden,
            "enabled": not disabled,
            "authorization_endpoint": authorization_endpoint,
            "token_endpoint": token_endpoint,
            "userinfo_endpoint": userinfo_endpoint,
            "subject_field": subject_field,
            "email_field": email_field,
            "name_field": name_field,
            "saml_metadata_url": metadata_url,
            "saml_metadata_xml": _read_metadata_file(metadata_file),
            "saml_signed": signed,
            "saml_allow_idp_initiated": allow_idp_initiated,
            "saml_sign_requests": sign_requests,
            "saml_nameid_format": nameid_format,
            "saml_email_attribute": email_attribute,
            "saml_given_name_attribute": given_name_attribute,
            "saml_family_name_attribute": family_name_attribute,
            "saml_name_attribute": name_attribute,
        }
    )
    with _all_field_errors():
        provider = providers.create_provider(
            fields,
            account=account,
            builtin=builtin,
            check_discovery=not skip_discovery_check,
            fetch_metadata=not skip_discovery_check,
        )
    db.session.commit()
    emit(providers.serialise(provider), as_json, f"Provider created: {_line(provider)}")
    enqueue_refresh(provider.id)


def _read_metadata_file(path: str | None) -> str | None:
    """The SAML metadata document of --metadata-file (None without one)."""
    if path is None:
        return None
    try:
        if path == "-":
            return click.get_text_stream("stdin").read()
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise ValidationError(f"Cannot read {path}: {error.strerror}.") from None
    except UnicodeDecodeError:
        raise ValidationError(f"{path} is not a UTF-8 text file.") from None


@providers_cli.command("list")
@click.option("--account", "account_id", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
def list_providers(account_id, as_json) -> None:
    """List providers (all, or one account's)."""
    rows = providers.list_providers(account_id)
    emit(
        [providers.serialise(p) for p in rows],
        as_json,
        "\n".join(_line(p) for p in rows) or "No providers.",
    )


@providers_cli.command("show")
@click.argument("provider_id")
@click.option("--json", "as_json", is_flag=True)
@service_errors
def show_provider(provider_id, as_json) -> None:
    """Show one provider by GUID."""
    provider = providers.get_provider(provider_id)
    emit(providers.serialise(provider), as_json, _line(provider))


def _toggle(provider_id: str, enabled: bool, as_json: bool) -> None:
    provider = providers.get_provider(provider_id)
    providers.set_enabled(provider, enabled)
    db.session.commit()
    emit(providers.serialise(provider), as_json, _line(provider))


@providers_cli.command("enable")
@click.argument("provider_id")
@click.option("--json", "as_json", is_flag=True)
@service_errors
def enable_provider(provider_id, as_json) -> None:
    """Enable a provider."""
    _toggle(provider_id, True, as_json)


@providers_cli.command("disable")
@click.argument("provider_id")
@click.option("--json", "as_json", is_flag=True)
@service_errors
def disable_provider(provider_id, as_json) -> None:
    """Disable a provider (its button, /sso link and callbacks refuse)."""
    _toggle(provider_id, False, as_json)


@providers_cli.command("delete")
@click.argument("provider_id")
@click.option("--json", "as_json", is_flag=True)
@service_errors
def delete_provider(provider_id, as_json) -> None:
    """Delete a provider and every login record through it."""
    provider = providers.get_provider(provider_id)
    payload = {"id": str(provider.id), "scheme": provider.scheme}
    removed = providers.delete_provider(provider)
    db.session.commit()
    emit(
        {**payload, "deleted": True, "logins_removed": removed},
        as_json,
        f"Provider {payload['scheme']} deleted; {removed} login(s) removed.",
    )


@providers_cli.command("refresh")
@click.argument("provider_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@service_errors
def refresh_providers(provider_id, as_json) -> None:
    """Fetch discovery and JWKS, or SAML metadata, now (one provider, or every enabled one).

    Under the same per-provider lock as the workers' refresh: a provider a worker is
    refreshing right now is skipped (``"refreshed": null``), not fetched twice at once."""
    from app.services import metadata
    from app.tasks.locking import task_lock
    from app.tasks.metadata import lock_name
    from app.tasks.metadata import lock_ttl

    targets = (
        [providers.get_provider(provider_id)]
        if provider_id
        else [p for p in providers.list_providers() if p.enabled]
    )
    results = []
    for provider in targets:
        refreshed = None
        with task_lock(lock_name(provider.id), lock_ttl()) as acquired:
            if acquired:
                refreshed = metadata.refresh_provider_metadata(provider).ok
                db.session.commit()
        results.append({**providers.serialise(provider), "refreshed": refreshed})
    failed = [r for r in results if r["refreshed"] is False]

    def line(result: dict) -> str:
        if result["refreshed"] is None:
            return f"{result['scheme']}: skipped: a worker is refreshing it right now"
        if result["refreshed"]:
            return f"{result['scheme']}: ok"
        return f"{result['scheme']}: failed: {result['health']['last_error']}"

    lines = [line(r) for r in results]
    emit(results[0] if provider_id else results, as_json, "\n".join(lines) or "No providers.")
    if failed:
        raise click.ClickException(f"{len(failed)} provider(s) could not be refreshed.")


@providers_cli.command("export")
@click.argument("file", type=click.File("w", encoding="utf-8", lazy=True))
@click.option("--account", "account_id", type=int, default=None, help="Only this account's.")
@service_errors
def export_providers(file, account_id) -> None:
    """Write providers as a JSON list to FILE (- for stdout), without any client secret."""
    if account_id is not None:
        accounts.get_account(account_id)
    exported = providers.export_providers(account_id)
    file.write(json.dumps(exported, indent=2, sort_keys=True) + "\n")
    file.close()
    if file.name != "-":
        click.echo(f"Exported {len(exported)} provider(s) to {file.name}.")


@providers_cli.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--account", "account_id", type=int, required=True, help="Receiving account id.")
@click.option(
    "--skip-discovery-check",
    is_flag=True,
    help="Import without loading each authority's discovery document.",
)
@click.option("--json", "as_json", is_flag=True)
@service_errors
def import_providers(file, account_id, skip_discovery_check, as_json) -> None:
    """Create the providers of an export in an account: all of them, or none on any error.

    Client secrets are not in exports: set them afterwards."""
    try:
        account = accounts.get_account(account_id)
    except NotFound:
        raise ValidationError(f"No account with id {account_id}.") from None
    # Opened here rather than by click.File, which leaves the file open when the options
    # after it fail to parse.
    try:
        if file == "-":
            text = click.get_text_stream("stdin").read()
        else:
            with open(file, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as error:
        raise ValidationError(f"Cannot read {file}: {error.strerror}.") from None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValidationError(f"{file} is not valid JSON: {error}") from None
    with _all_field_errors():
        created = providers.import_providers(
            document,
            account=account,
            check_discovery=not skip_discovery_check,
            fetch_metadata=not skip_discovery_check,
        )
    db.session.commit()
    emit(
        [providers.serialise(p) for p in created],
        as_json,
        "\n".join(f"Provider imported: {_line(p)}" for p in created),
    )
    enqueue_refresh(*(p.id for p in created))
