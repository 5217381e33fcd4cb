"""Helpers for the CLI tests: run a command for JSON, check a one-line error."""

from __future__ import annotations

import json


def run_json(runner, *args: str):
    """Run a command with --json; it must succeed and print exactly one JSON value."""
    result = runner.invoke(args=[*args, "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert len(result.stdout.strip().splitlines()) == 1, result.stdout
    return json.loads(result.stdout)


def assert_error(result, fragment: str) -> None:
    """A failed command: non-zero exit, nothing on stdout, one line on stderr."""
    assert result.exit_code != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert fragment.lower() in lines[0].lower()
