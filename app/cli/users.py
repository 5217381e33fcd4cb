"""`flask users`: create, show, deactivate and reactivate local users."""

from __future__ import annotations

import click

from app.cli.output import KeywardGroup
from app.cli.output import emit
from app.cli.output import service_errors
from app.extensions import db
from app.services import accounts
from app.services import users
from app.services.errors import NotFound
from app.services.errors import ValidationError

users_cli = KeywardGroup("users", help="Manage users.")


def _find(user: str):
    """A user by id or email."""
    found = users.find_by_email(user) if "@" in user else None
    return found or users.get_user(user)


@users_cli.command("create")
@click.option("--email", required=True)
@click.option("--password", default=None, help="Omit for a user who signs in only through SSO.")
@click.option("--account", "account_id", type=int, default=None, help="Add to this account id.")
@click.option(
    "--role",
    type=click.Choice(["owner", "admin", "member"]),
    default=None,
    help="Role in --account (default member).",
)
@click.option("--given-name", default=None)
@click.option("--family-name", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the user as JSON.")
@service_errors
def create_user(email, password, account_id, role, given_name, family_name, as_json) -> None:
    """Create a local user, optionally as a member of an account."""
    if role is not None and account_id is None:
        raise ValidationError("--role needs --account.")
    account = None
    if account_id is not None:
        try:
            account = accounts.get_account(account_id)
        except NotFound:
            raise ValidationError(f"No account with id {account_id}.") from None
    user = users.create_user(email, password, given_name=given_name, family_name=family_name)
    payload = users.serialise(user)
    if account is not None:
        membership = accounts.add_member(account, user, accounts.parse_role(role or "member"))
        payload.update(account_id=account.id, role=membership.role)
    db.session.commit()
    emit(payload, as_json, f"User {user.id} created: {user.email}")


@users_cli.command("show")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True)
@service_errors
def show_user(user: str, as_json: bool) -> None:
    """Show a user (by id or email)."""
    found = _find(user)
    emit(users.serialise(found), as_json, f"{found.id}\t{found.email}\tactive={found.active}")


@users_cli.command("deactivate")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True)
@service_errors
def deactivate_user(user: str, as_json: bool) -> None:
    """Deactivate a user (by id or email) and end all their sessions."""
    found = _find(user)
    ended = users.deactivate_user(found, reason="deactivated_by_operator")
    db.session.commit()
    emit(
        {**users.serialise(found), "sessions_ended": ended},
        as_json,
        f"User {found.email} deactivated; {ended} session(s) ended.",
    )


@users_cli.command("reactivate")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True)
@service_errors
def reactivate_user(user: str, as_json: bool) -> None:
    """Allow a deactivated user to sign in again."""
    found = _find(user)
    users.reactivate_user(found)
    db.session.commit()
    emit(users.serialise(found), as_json, f"User {found.email} reactivated.")
