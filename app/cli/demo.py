"""`flask seed-demo`: a demo account with an admin and a member, credentials printed once."""

from __future__ import annotations

import secrets

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from app.cli.output import OneLineUsageCommand
from app.cli.output import emit
from app.cli.output import service_errors
from app.extensions import db
from app.models import Account
from app.models import Role
from app.services import accounts
from app.services import users

DEMO_SLUG = "demo"
DEMO_ADMIN = "admin@demo.example.com"
DEMO_MEMBER = "member@demo.example.com"


def _demo_password() -> str:
    # Random per install: a demo left reachable on a network has no well-known password.
    return "demo-" + secrets.token_urlsafe(12)


@click.command("seed-demo", cls=OneLineUsageCommand)
@with_appcontext
@click.option("--json", "as_json", is_flag=True, help="Print what was created as JSON.")
@service_errors
def seed_demo(as_json: bool) -> None:
    """Create the demo account and users once; later runs change nothing."""
    if db.session.scalar(select(Account).where(Account.slug == DEMO_SLUG)) is not None:
        emit(
            {"created": False},
            as_json,
            "Demo data already present (its passwords were printed when it was created).",
        )
        return
    account = accounts.create_account("Demo Organisation", DEMO_SLUG)
    created = []
    for email, role, given in ((DEMO_ADMIN, Role.ADMIN, "Ada"), (DEMO_MEMBER, Role.MEMBER, "Max")):
        password = _demo_password()
        user = users.create_user(email, password, given_name=given, family_name="Demo")
        accounts.add_member(account, user, role)
        created.append({"email": email, "password": password, "role": role.value})
    db.session.commit()
    text = "\n".join(
        [f"Demo account {account.slug!r} (id {account.id}) created. Sign in with:"]
        + [f"  {c['role']:<6}  {c['email']}  password: {c['password']}" for c in created]
        + ["These passwords are shown only now."]
    )
    emit({"created": True, "account": accounts.serialise(account), "users": created}, as_json, text)
