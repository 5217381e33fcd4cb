"""Secrets at rest: MultiFernet over ENCRYPTION_KEYS (newest first), with key rotation."""

from __future__ import annotations

from cryptography.fernet import Fernet
from cryptography.fernet import InvalidToken
from cryptography.fernet import MultiFernet
from flask import current_app

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
