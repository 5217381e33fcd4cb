"""Replays a recorded SCIM request sequence (tests/scim/fixtures/*.json) against /scim/v2.

Each step has a method, a path, an optional body, the expected status, optionally ``expect``
(a subset of the JSON answer: objects may have more keys, lists must have the same
length, in any order),
``absent`` (top-level keys the answer must not have) and ``capture`` (answer keys saved as
variables, used later as ``{name}`` in paths and bodies).
"""

from __future__ import annotations

import json
from typing import Any


def substitute(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, replacement in variables.items():
            value = value.replace("{" + name + "}", replacement)
        return value
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, variables) for key, item in value.items()}
    return value


def contains(expected: Any, actual: Any, where: str = "") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, item in expected.items():
            assert key in actual, f"{where}.{key} missing in {actual!r}"
            contains(item, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        assert len(expected) == len(actual), f"{where}: {len(actual)} values, expected {expected!r}"
        # Multi-valued attributes have no order (RFC 7643 §2.4): each expected value must
        # match a different actual one.
        left = list(actual)
        for index, item in enumerate(expected):
            for candidate in left:
                try:
                    contains(item, candidate, f"{where}[{index}]")
                except AssertionError:
                    continue
                left.remove(candidate)
                break
            else:
                raise AssertionError(f"{where}[{index}]: no value matches {item!r} in {actual!r}")
    else:
        assert expected == actual, f"{where}: {actual!r} != {expected!r}"


def replay(scim, steps: list[dict[str, Any]]) -> dict[str, str]:
    variables: dict[str, str] = {}
    for step in steps:
        step = substitute(step, variables)
        response = scim.request(step["method"], step["path"], step.get("body"))
        label = f"{step['name']}: {step['method']} {step['path']}"
        assert response.status_code == step["status"], (
            f"{label}: {response.status_code} {response.text}"
        )
        if response.status_code != 204:
            assert response.mimetype == "application/scim+json", label
            data = json.loads(response.data)
            if "expect" in step:
                contains(step["expect"], data, label)
            for key in step.get("absent", []):
                assert key not in data, f"{label}: {key} present in {data!r}"
            for name, key in step.get("capture", {}).items():
                variables[name] = data[key]
    return variables
