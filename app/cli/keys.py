"""`flask keys`: rotate the encryption of secrets at rest (ENCRYPTION_KEYS)."""

from __future__ import annotations

import click

from app.cli.output import KeywardGroup
from app.cli.output import emit
from app.cli.output import service_errors
from app.extensions import db
from app.services import crypto

keys_cli = KeywardGroup("keys", help="Manage the keys that encrypt secrets at rest.")


@keys_cli.command("rotate")
@click.option("--json", "as_json", is_flag=True)
@service_errors
def rotate_keys(as_json) -> None:
    """Re-encrypt every stored secret under the newest key of ENCRYPTION_KEYS.

    Put the new key first in ENCRYPTION_KEYS (keeping the old ones) on every process, run
    this, then remove the old keys. All or nothing: one commit at the end."""
    try:
        counts = crypto.reencrypt_stored_secrets()
    except crypto.SecretUnreadable as error:
        # service_errors rolls the transaction back, so the claim below holds.
        raise crypto.SecretUnreadable(f"{error} Nothing was changed.") from None
    db.session.commit()
    emit(
        counts,
        as_json,
        f"Re-encrypted {counts['providers']} provider secret(s) and {counts['sessions']} "
        "session ID token(s) under the newest key.",
    )
