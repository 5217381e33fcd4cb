"""Secrets at rest: MultiFernet over ENCRYPTION_KEYS (newest first), with key rotation."""

from __future__ import annotations

from cryptography.fernet import Fernet
from cryptography.fernet import InvalidToken
from cryptography.fernet import MultiFernet
from flask import current_app
from sqlalchemy import bindparam
from sqlalchemy import select
from sqlalchemy import update

from app.extensions import db
from app.services.errors import ServiceError


class SecretUnreadable(ServiceError):
    """A stored secret was encrypted under a key that ENCRYPTION_KEYS no longer holds."""


def _fernet() -> MultiFernet:
    cached = current_app.extensions.get("keyward.fernet")
    if cached is None:
        raw = current_app.config["ENCRYPTION_KEYS"] or ""
        keys = [key.strip() for key in raw.split(",") if key.strip()]
        if not keys:
            raise ServiceError("ENCRYPTION_KEYS is empty.")
        cached = MultiFernet([Fernet(key.encode()) for key in keys])
        current_app.extensions["keyward.fernet"] = cached
    return cached


def encrypt(plaintext: str) -> str:
    """Encrypt under the newest key."""
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    """Decrypt with whichever configured key made it. Raises SecretUnreadable."""
    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "A stored secret cannot be decrypted with ENCRYPTION_KEYS (was a key removed?)."
        ) from None


def reencrypt(ciphertext: str) -> str:
    """The same secret under the newest key (for `flask keys rotate`)."""
    try:
        return _fernet().rotate(ciphertext.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "A stored secret cannot be decrypted with ENCRYPTION_KEYS."
        ) from None


# Every column that holds MultiFernet ciphertext: table, column, key of the counts returned,
# and how an error names a row.
_ENCRYPTED_COLUMNS = (
    ("sso_providers", "client_secret_encrypted", "providers", "The client secret of provider"),
    # SAML request-signing keys count as provider secrets too.
    ("sso_providers", "saml_sp_key_encrypted", "providers", "The SAML signing key of provider"),
    ("sessions", "id_token_encrypted", "sessions", "The ID token of session"),
)
_ROTATE_BATCH = 500


def reencrypt_stored_secrets() -> dict[str, int]:
    """Re-encrypt every stored secret under the newest key (``flask keys rotate``).

    Covers sso_providers.client_secret_encrypted and saml_sp_key_encrypted (both counted as
    provider secrets) and sessions.id_token_encrypted; returns how many values were
    rewritten, ``{"providers": n, "sessions": m}``. Works in batches with plain UPDATEs
    (sessions can be many) in the caller's transaction, which commits once. Raises
    SecretUnreadable naming the first row no configured key can read: the caller must roll
    back, so a rotation is all or nothing."""
    counts: dict[str, int] = {}
    connection = db.session.connection()
    for table_name, column_name, label, description in _ENCRYPTED_COLUMNS:
        table = db.metadata.tables[table_name]
        column = table.c[column_name]
        batch_query = (
            select(table.c.id, column)
            .where(column.is_not(None))
            .order_by(table.c.id)
            .limit(_ROTATE_BATCH)
        )
        write = (
            update(table)
            .where(table.c.id == bindparam("row_id"))
            .values({column: bindparam("value")})
        )
        counts.setdefault(label, 0)
        rows = connection.execute(batch_query).all()
        while rows:
            batch = []
            for row_id, ciphertext in rows:
                try:
                    batch.append({"row_id": row_id, "value": reencrypt(ciphertext)})
                except SecretUnreadable:
                    raise SecretUnreadable(
                        f"{description} {row_id} cannot be decrypted with ENCRYPTION_KEYS "
                        "(was a key removed too early?)."
                    ) from None
            connection.execute(write, batch)
            counts[label] += len(batch)
            # Keyset paging: rows rewritten above are never read again.
            rows = connection.execute(batch_query.where(table.c.id > rows[-1][0])).all()
    return counts
