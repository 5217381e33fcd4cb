"""Exceptions services raise for bad input; callers turn them into pages, JSON or CLI errors."""

from __future__ import annotations

import uuid
from collections.abc import Mapping


class ServiceError(Exception):
    """Base class: the message is safe to show to the person who made the request."""


class ValidationError(ServiceError):
    """The input is malformed or breaks a rule (weak password, duplicate email...).

    ``errors`` maps each bad field to its message, so a form can show every problem at once;
    ``field`` and ``message`` are the first of them (callers that show one error use those).
    """

    def __init__(
        self, message: str, field: str | None = None, *, errors: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if errors:
            self.errors = dict(errors)
        else:
            self.errors = {field: message} if field is not None else {}

    @classmethod
    def from_errors(cls, errors: Mapping[str, str]) -> ValidationError:
        """One error carrying every field's message; the first one is ``field``/``message``."""
        field, message = next(iter(errors.items()))
        return cls(message, field, errors=errors)


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
