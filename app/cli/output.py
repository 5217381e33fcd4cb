"""Shared CLI output: JSON on stdout, one-line errors on stderr with a non-zero exit."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from flask.cli import AppGroup

from app.extensions import db
from app.services.errors import ServiceError


class OneLineUsageCommand(click.Command):
    """A command whose usage errors (missing option, bad choice) are one line on stderr,
    like every other error of the CLI, with Click's exit status 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            raise OneLineUsageError(error.format_message()) from None


class OneLineUsageError(click.ClickException):
    exit_code = 2


class KeywardGroup(AppGroup):
    """A command group whose commands run in the app context and report usage errors in
    one line."""

    command_class = OneLineUsageCommand


def emit(payload: Any, as_json: bool, text: str) -> None:
    if as_json:
        click.echo(json.dumps(payload, sort_keys=True))
    else:
        click.echo(text)


def service_errors(command: Callable) -> Callable:
    """Turn a ServiceError into ``Error: <message>`` on stderr and exit status 1; nothing is
    committed."""

    @wraps(command)
    def wrapped(*args: Any, **kwargs: Any):
        try:
            return command(*args, **kwargs)
        except ServiceError as error:
            db.session.rollback()
            raise click.ClickException(str(error).replace("\n", " ")) from None

    return wrapped
