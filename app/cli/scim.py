"""`flask scim tokens`: issue, list and revoke an account's SCIM bearer tokens."""

from __future__ import annotations

import click

from app.cli.output import KeywardGroup
from app.cli.output import emit
from app.cli.output import service_errors
from app.extensions import db
from app.services import accounts
from app.services import scim_tokens
from app.services.errors import NotFound
from app.services.errors import ValidationError

scim_cli = KeywardGroup("scim", help="SCIM provisioning.")
tokens_cli = KeywardGroup("tokens", help="Manage SCIM bearer tokens.")
scim_cli.add_command(tokens_cli)


def _account(account_id: int):
    try:
        return accounts.get_account(account_id)
    except NotFound:
        raise ValidationError(f"No account with id {account_id}.") from None


@tokens_cli.command("create")
@click.option("--account", "account_id", type=int, required=True, help="Account id.")
@click.option("--provider", "provider_id", default=None, help="Link an SSO provider (GUID).")
@click.option("--name", default="SCIM token", show_default=True, help="A label for the token.")
@click.option("--json", "as_json", is_flag=True, help="Print the token as JSON.")
@service_errors
def create_token(account_id: int, provider_id: str | None, name: str, as_json: bool) -> None:
    """Issue a SCIM token for an account; the token is printed once and never again."""
    token, secret = scim_tokens.create_token(_account(account_id), name, provider_id=provider_id)
    db.session.commit()
    emit(
        scim_tokens.serialise(token, secret=secret),
        as_json,
        f"SCIM token {token.id} created for account {account_id}. Copy it now, it is not "
        f"shown again:\n{secret}",
    )


@tokens_cli.command("list")
@click.option("--account", "account_id", type=int, required=True, help="Account id.")
@click.option("--json", "as_json", is_flag=True, help="Print the tokens as a JSON array.")
@service_errors
def list_tokens(account_id: int, as_json: bool) -> None:
    """List an account's SCIM tokens (never the tokens themselves)."""
    rows = scim_tokens.list_tokens(_account(account_id).id)
    lines = [
        f"{t.id}\t{t.name}\t{'revoked' if t.revoked_at else 'live'}\t"
        f"last used {t.last_used_at.isoformat() if t.last_used_at else 'never'}"
        for t in rows
    ]
    emit([scim_tokens.serialise(t) for t in rows], as_json, "\n".join(lines) or "No tokens.")


@tokens_cli.command("revoke")
@click.argument("token_id")
@click.option("--json", "as_json", is_flag=True, help="Print the token as JSON.")
@service_errors
def revoke_token(token_id: str, as_json: bool) -> None:
    """Revoke a SCIM token: its next request is refused."""
    token = scim_tokens.get_token(token_id)
    changed = scim_tokens.revoke_token(token)
    db.session.commit()
    message = (
        f"SCIM token {token.id} revoked."
        if changed
        else f"SCIM token {token.id} was already revoked."
    )
    emit(scim_tokens.serialise(token), as_json, message)
