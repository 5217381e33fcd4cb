"""`flask accounts`: create and list accounts."""

from __future__ import annotations

import click
from sqlalchemy import select

from app.cli.output import KeywardGroup
from app.cli.output import emit
from app.cli.output import service_errors
from app.extensions import db
from app.models import Account
from app.services import accounts

accounts_cli = KeywardGroup("accounts", help="Manage accounts (organisations).")


@accounts_cli.command("create")
@click.option("--name", required=True, help="The organisation's name.")
@click.option("--slug", default=None, help="URL slug for /login/<slug> (derived when omitted).")
@click.option("--json", "as_json", is_flag=True, help="Print the account as JSON.")
@service_errors
def create_account(name: str, slug: str | None, as_json: bool) -> None:
    """Create an account and print it."""
    account = accounts.create_account(name, slug)
    db.session.commit()
    emit(accounts.serialise(account), as_json, f"Account {account.id} created: {account.slug}")


@accounts_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_accounts(as_json: bool) -> None:
    """List every account."""
    rows = list(db.session.scalars(select(Account).order_by(Account.id)))
    emit(
        [accounts.serialise(a) for a in rows],
        as_json,
        "\n".join(f"{a.id}\t{a.slug}\t{a.name}" for a in rows) or "No accounts.",
    )
