"""`flask audit list`: the audit trail, newest first."""

from __future__ import annotations

import click

from app.cli.output import KeywardGroup
from app.cli.output import emit
from app.services import audit

audit_cli = KeywardGroup("audit", help="Read the audit log.")


@audit_cli.command("list")
@click.option("--account", "account_id", type=int, default=None, help="Only this account.")
@click.option("--action", "action_prefix", default=None, help="Action prefix, e.g. auth.signin")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--all", "all_events", is_flag=True, help="Every event (ignores --limit).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_events(account_id, action_prefix, limit, all_events, as_json) -> None:
    """List audit events, newest first."""
    events = audit.list_events(
        account_id=account_id, action_prefix=action_prefix, limit=None if all_events else limit
    )
    lines = [
        f"{e.occurred_at.isoformat()}\t{e.action}\t{e.actor_label or '-'}\t"
        f"{e.target_type or '-'}:{e.target_id or '-'}"
        for e in events
    ]
    emit([audit.serialise(e) for e in events], as_json, "\n".join(lines) or "No events.")
