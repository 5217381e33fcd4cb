"""Password hashing (argon2id) and the password strength rules."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from argon2 import PasswordHasher
from argon2 import Type
from argon2.exceptions import InvalidHashError
from argon2.exceptions import VerificationError
from argon2.low_level import ARGON2_VERSION
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
    hasher = _hasher()
    # Every sign-in asks: a hash in today's exact shape is answered without parsing it.
    prefix, salt_chars, hash_chars = _current_shape(hasher)
    if password_hash.startswith(prefix):
        salt, _, digest = password_hash[len(prefix) :].partition("$")
        if (len(salt), len(digest)) == (salt_chars, hash_chars):
            return False
    try:
        return hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def _current_shape(hasher: PasswordHasher) -> tuple[str, int, int]:
    """How a hash made today starts, and the lengths of its salt and digest (unpadded
    base64): the encoded form of every parameter check_needs_rehash compares."""
    shape = current_app.extensions.get("keyward.password_hash_shape")
    if shape is None:
        prefix = (
            f"$argon2id$v={ARGON2_VERSION}"
            f"$m={hasher.memory_cost},t={hasher.time_cost},p={hasher.parallelism}$"
        )
        shape = (prefix, _base64_chars(hasher.salt_len), _base64_chars(hasher.hash_len))
        current_app.extensions["keyward.password_hash_shape"] = shape
    return shape


def _base64_chars(size: int) -> int:
    return (4 * size + 2) // 3


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
