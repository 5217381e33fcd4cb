"""Password hashing (argon2id) and the password strength rules."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from argon2 import PasswordHasher
from argon2 import Type
from argon2.exceptions import InvalidHashError
from argon2.exceptions import VerificationError
from flask import current_app

from app.services.errors import ValidationError

MAX_PASSWORD_LENGTH = 256


def _hasher() -> PasswordHasher:
    """The app's argon2id hasher, built once per app from its ARGON2_* settings."""
    hasher = current_app.extensions.get("keyward.password_hasher")
    if hasher is None:
        config = current_app.config
        hasher = PasswordHasher(
            time_cost=config["ARGON2_TIME_COST"],
            memory_cost=config["ARGON2_MEMORY_COST"],
            parallelism=config["ARGON2_PARALLELISM"],
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        current_app.extensions["keyward.password_hasher"] = hasher
    return hasher


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches. With no hash, still spends one hash's time, so an
    unknown email answers no faster than a wrong password (no account enumeration by timing)."""
    hasher = _hasher()
    if password_hash is None:
        hasher.hash(password)
        return False
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the stored hash was made with other parameters than today's settings."""
    try:
        return _hasher().check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    text = resources.files("app").joinpath("data/common-passwords.txt").read_text()
    return frozenset(
        line.strip().lower()
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


def check_password_strength(password: str, *, email: str | None = None) -> None:
    """Raise ValidationError (field ``password``) when the password is too weak.

    NIST SP 800-63B rules: a minimum length, no composition rules, and a block list of
    common and context-specific passwords.
    """
    minimum = current_app.config["PASSWORD_MIN_LENGTH"]
    if len(password) < minimum:
        raise ValidationError(f"Password must be at least {minimum} characters long.", "password")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationError(
            f"Password must be at most {MAX_PASSWORD_LENGTH} characters long.", "password"
        )
    lowered = password.lower()
    if len(set(lowered)) < 4 or lowered in _common_passwords():
        raise ValidationError("Password is too common or too easy to guess.", "password")
    if email:
        local_part = email.split("@", 1)[0].lower()
        if lowered == email.lower() or (len(local_part) >= 4 and local_part in lowered):
            raise ValidationError("Password must not contain your email address.", "password")
