"""Exceptions services raise for bad input; callers turn them into pages, JSON or CLI errors."""

import uuid


class ServiceError(Exception):
    """Base class: the message is safe to show to the person who made the request."""


class ValidationError(ServiceError):
    """The input is malformed or breaks a rule (weak password, duplicate email...)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(ServiceError):
    """The object does not exist, or is not visible to the caller."""


def uuid_or_not_found(value: uuid.UUID | str, message: str) -> uuid.UUID:
    """``value`` as a UUID; a malformed id (from a URL or the CLI) is simply NotFound."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(message) from None
