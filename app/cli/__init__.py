"""`flask --app wsgi ...` command groups, one module each."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    from app.cli.accounts import accounts_cli
    from app.cli.audit import audit_cli
    from app.cli.demo import seed_demo
    from app.cli.jobs import jobs_cli
    from app.cli.keys import keys_cli
    from app.cli.providers import providers_cli
    from app.cli.scim import scim_cli
    from app.cli.users import users_cli

    for command in (
        accounts_cli,
        users_cli,
        providers_cli,
        scim_cli,
        jobs_cli,
        audit_cli,
        keys_cli,
        seed_demo,
    ):
        app.cli.add_command(command)
