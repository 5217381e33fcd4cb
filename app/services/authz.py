"""CEL authorisation expressions: compile (cached) and evaluate them over ID token claims."""

from __future__ import annotations

import json
import logging
import operator
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import Activation
from celpy.evaluation import CELEvalError
from celpy.evaluation import Evaluator
from celpy.evaluation import base_functions
from lark.exceptions import UnexpectedCharacters
from lark.exceptions import UnexpectedToken

from app.services.errors import ValidationError

log = logging.getLogger(__name__)

FIELD = "authorization_expression"
MAX_EXPRESSION_LENGTH = 4096
MAX_CLAIMS_BYTES = 64 * 1024
# Work limits for one evaluation. A realistic expression over a few hundred groups needs a
# few thousand steps (one step = one node of the syntax tree visited, macro bodies included).
MAX_EVALUATION_STEPS = 100_000
MAX_EVALUATION_SECONDS = 1.0
# Longest string, bytes or list that ``+`` may build (stops doubling chains in macros).
MAX_VALUE_LENGTH = 64 * 1024
# Deepest syntax tree accepted: one level of parentheses or macro costs about 10 levels, and
# the interpreter recurses once per level (cel-python raises the recursion limit to 2500).
MAX_TREE_DEPTH = 300
COMPILED_CACHE_SIZE = 256

# cel-python logs activations (every claim value) at DEBUG and function arguments at ERROR;
# unless someone configured its logger on purpose, keep those lines out of the app's logs.
_celpy_log = logging.getLogger("celpy")
if _celpy_log.level == logging.NOTSET:
    _celpy_log.setLevel(logging.CRITICAL)

_IDENTIFIER = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
# Macros cel-python expands itself, with the number of arguments each takes: ``list.all(x, e)``
# (the first one or two arguments are variable names) and ``has(e.f)``.
_METHOD_MACROS = {
    "map": 2,
    "filter": 2,
    "all": 2,
    "exists": 2,
    "exists_one": 2,
    "reduce": 4,
    "min": 0,
}
_FUNCTION_MACROS = {"has": 1, "dyn": 1}
_FUNCTIONS = frozenset(name for name in base_functions if _IDENTIFIER.fullmatch(name))
_TYPE_NAMES = frozenset(
    {"bool", "bytes", "double", "duration", "int", "list", "map", "null_type", "string"}
    | {"timestamp", "type", "uint"}
)
# Claims with these names are not bound as top-level variables: they would hide the
# ``claims`` map, the protobuf package ``google`` or a type name used as a value
# (``type(x) == string``). They stay reachable as ``claims.<name>``.
_RESERVED_NAMES = frozenset({"claims", "google"}) | _TYPE_NAMES

_CEL_TYPE_NAMES: dict[type, str] = {
    celtypes.BoolType: "bool",
    celtypes.IntType: "int",
    celtypes.UintType: "uint",
    celtypes.DoubleType: "double",
    celtypes.StringType: "string",
    celtypes.BytesType: "bytes",
    celtypes.ListType: "list",
    celtypes.MapType: "map",
    celtypes.TimestampType: "timestamp",
    celtypes.DurationType: "duration",
    type(None): "null",
}

# Safe, short descriptions of cel-python's error messages, which may embed claim values.
_ERROR_PREFIXES = (
    ("no such member in mapping", "no such key"),
    ("no such key", "no such key"),
    ("No ", "no such key"),
    ("found no matching overload", "no matching overload (wrong types)"),
    ("no such overload", "no matching overload (wrong types)"),
    ("modulus or divide by zero", "division by zero"),
    ("return error for overflow", "overflow or invalid value"),
    ("invalid_argument", "index out of range"),
    ("match error", "invalid regular expression"),
    ("Attempt to reduce an empty sequence", "min() of an empty list"),
)
_UNDECLARED = re.compile(r"undeclared reference to '?([_a-zA-Z][_a-zA-Z0-9]*)")
_MEMBER = re.compile(r"no such member in mapping: '([_a-zA-Z][_a-zA-Z0-9]*)'")


class _LimitExceeded(Exception):
    """Raised inside an evaluation that uses too much work; not a CEL error, so nothing
    inside cel-python (``||``, ``exists()``...) swallows it."""


@dataclass(frozen=True)
class AuthorizationResult:
    """The outcome of an authorisation expression: ``reason`` says why it refused."""

    allowed: bool
    reason: str | None = None


class _Budget:
    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + MAX_EVALUATION_SECONDS

    def spend(self, steps: int) -> None:
        before = self.steps
        self.steps += steps
        if self.steps > MAX_EVALUATION_STEPS:
            raise _LimitExceeded("step limit exceeded")
        if before >> 10 != self.steps >> 10 and time.monotonic() > self.deadline:
            raise _LimitExceeded("time limit exceeded")


class _BudgetedEvaluator(Evaluator):
    """cel-python's interpreter, counting the nodes it visits (macro bodies included)."""

    def __init__(self, ast: lark.Tree, activation: Activation, budget: _Budget) -> None:
        super().__init__(ast=ast, activation=activation)
        self.budget = budget

    def sub_evaluator(self, ast: lark.Tree) -> Evaluator:
        return _BudgetedEvaluator(ast, activation=self.activation, budget=self.budget)

    def visit(self, tree: lark.Tree) -> Any:
        self.budget.spend(1)
        return super().visit(tree)

    def visit_children(self, tree: lark.Tree) -> list[Any]:
        self.budget.spend(len(tree.children))
        return super().visit_children(tree)


class _BudgetedRunner(celpy.InterpretedRunner):
    def evaluate(self, context: celpy.Context) -> celtypes.Value:
        evaluator = _BudgetedEvaluator(self.ast, self.new_activation(), _Budget())
        return evaluator.evaluate(context)


def _bounded_add(left: Any, right: Any) -> Any:
    sized = (str, bytes, list)
    if (
        isinstance(left, sized)
        and isinstance(right, sized)
        and len(left) + len(right) > MAX_VALUE_LENGTH
    ):
        raise _LimitExceeded("value too large")
    return operator.add(left, right)


def _scalar_string(value: Any) -> celtypes.StringType:
    # cel-python's string() of a list or map is its Python repr (not CEL, and unbounded).
    if isinstance(value, list | dict):
        raise TypeError("string() of a container")
    return celtypes.StringType(value)


_OVERRIDES: dict[str, Any] = {"_+_": _bounded_add, "string": _scalar_string}


@lru_cache(maxsize=1)
def _environment() -> celpy.Environment:
    # Environment() sets the process-wide recursion limit to 2500; never lower a higher one.
    previous = sys.getrecursionlimit()
    environment = celpy.Environment(runner_class=_BudgetedRunner)
    if previous > sys.getrecursionlimit():
        sys.setrecursionlimit(previous)
    return environment


_parse_lock = threading.Lock()


@dataclass(frozen=True, eq=False)
class CompiledExpression:
    """A parsed and checked expression, ready to evaluate many times (thread-safe)."""

    source: str
    runner: celpy.Runner

    def evaluate(self, claims: Mapping[str, Any]) -> AuthorizationResult:
        """Evaluate over ``claims``; only a result that is exactly CEL ``true`` allows."""
        try:
            activation = _activation(claims)
        except _ClaimsRefused as exc:
            log.warning("CEL authorisation refused: %s", exc.reason)
            return AuthorizationResult(False, exc.reason)
        try:
            value = self.runner.evaluate(activation)
        except Exception as exc:  # anything celpy raises refuses, never a 500
            short = _describe_error(exc)
            log.warning("CEL authorisation expression failed: %s (%s)", type(exc).__name__, short)
            return AuthorizationResult(False, f"evaluation error: {short}")
        if isinstance(value, celtypes.BoolType | bool):
            if value:
                return AuthorizationResult(True)
            return AuthorizationResult(False, "returned false")
        return AuthorizationResult(False, f"returned a non-boolean value: {_type_name(value)}")


def is_blank(expression: str | None) -> bool:
    """True when there is no expression to evaluate (None, empty or only whitespace)."""
    return expression is None or not expression.strip()


@lru_cache(maxsize=COMPILED_CACHE_SIZE)
def compile_expression(expression: str) -> CompiledExpression:
    """Parse and check a CEL expression; cached, since every sign-in evaluates one.

    Raises ValidationError (field ``authorization_expression``) with a message an admin can
    read: what is wrong, the line and column, and the source line with a caret under it.
    cel-python has no type checker: besides syntax, this checks function and macro names,
    macro argument counts, literals, length and nesting depth; type errors show up only when
    the expression runs (and refuse the sign-in).
    """
    if is_blank(expression):
        raise ValidationError("The authorisation expression is empty.", FIELD)
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ValidationError(
            f"The authorisation expression is longer than {MAX_EXPRESSION_LENGTH} characters.",
            FIELD,
        )
    environment = _environment()
    try:
        with _parse_lock:  # CELParser keeps the text being parsed on a shared instance
            ast = environment.compile(expression)
    except CELParseError as exc:
        raise ValidationError(_syntax_message(expression, exc), FIELD) from None
    except Exception as exc:  # pragma: no cover - lark raises CELParseError for bad input
        log.warning("CEL parser failed: %s", type(exc).__name__)
        raise ValidationError("The authorisation expression could not be parsed.", FIELD) from None
    _check(expression, ast)
    runner = _BudgetedRunner(environment, ast, _OVERRIDES)
    return CompiledExpression(source=expression, runner=runner)


def evaluate(expression: str, claims: Mapping[str, Any]) -> AuthorizationResult:
    """Evaluate ``expression`` over the ID token ``claims`` (plus additional claims).

    Claims are variables (``email``) and entries of the ``claims`` map (``claims.email``,
    ``claims["https://example.com/roles"]``). Only exactly ``true`` allows; false, any other
    value, an error, an invalid or blank expression or oversized claims refuse, with a short
    reason that never contains claim values.
    """
    try:
        compiled = compile_expression(expression)
    except ValidationError:
        log.warning("CEL authorisation refused: the expression is invalid")
        return AuthorizationResult(False, "invalid expression")
    return compiled.evaluate(claims)


class _ClaimsRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _activation(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The variables an expression sees: each claim with a CEL name, and ``claims``."""
    try:
        text = json.dumps(dict(claims), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        raise _ClaimsRefused("claims are not JSON") from None
    if len(text.encode()) > MAX_CLAIMS_BYTES:
        raise _ClaimsRefused("claims too large")
    try:
        document = json_to_cel(json.loads(text))
    except (TypeError, ValueError, RecursionError):  # e.g. an integer beyond 64 bits
        raise _ClaimsRefused("claims cannot be converted to CEL values") from None
    variables: dict[str, Any] = {
        name: value
        for name, value in document.items()
        if _IDENTIFIER.fullmatch(name) and name not in _RESERVED_NAMES
    }
    variables["claims"] = document
    return variables


def _check(source: str, ast: lark.Tree) -> None:
    """Static checks cel-python leaves to run time, so an admin learns about them now."""
    stack: list[tuple[lark.Tree, int]] = [(ast, 1)]
    while stack:
        tree, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise ValidationError(
                _positioned(source, tree.meta, "the expression is nested too deeply."), FIELD
            )
        if tree.data in ("ident_arg", "member_dot_arg", "dot_ident_arg"):
            _check_call(source, tree)
        elif tree.data == "literal":
            _check_literal(source, tree)
        stack.extend((child, depth + 1) for child in tree.children if isinstance(child, lark.Tree))


def _check_call(source: str, tree: lark.Tree) -> None:
    index = 1 if tree.data == "member_dot_arg" else 0
    token = tree.children[index]
    name = str(token)
    arguments = tree.children[index + 1] if len(tree.children) > index + 1 else None
    given = arguments.children if isinstance(arguments, lark.Tree) else []
    if tree.data == "member_dot_arg" and name in _METHOD_MACROS:
        expected = _METHOD_MACROS[name]
        variables = 2 if name == "reduce" else min(expected, 1)
    elif tree.data == "ident_arg" and name in _FUNCTION_MACROS:
        expected, variables = _FUNCTION_MACROS[name], 0
    elif name in _FUNCTIONS:
        return
    else:
        raise ValidationError(_positioned(source, token, f"unknown function '{name}'."), FIELD)
    if len(given) != expected:
        plural = "" if expected == 1 else "s"
        problem = f"{name}() takes {expected} argument{plural}."
        raise ValidationError(_positioned(source, token, problem), FIELD)
    for argument in given[:variables]:
        if not _is_identifier(argument):
            problem = f"{name}() needs a variable name as argument."
            raise ValidationError(_positioned(source, token, problem), FIELD)


def _is_identifier(tree: Any) -> bool:
    """True for an argument that is a bare name (the macro's loop variable)."""
    while isinstance(tree, lark.Tree) and len(tree.children) == 1:
        if tree.data == "ident":
            return True
        tree = tree.children[0]
    return False


def _check_literal(source: str, tree: lark.Tree) -> None:
    try:
        Evaluator(ast=tree, activation=Activation()).evaluate()
    except Exception:
        token = tree.children[0] if tree.children else tree.meta
        raise ValidationError(_positioned(source, token, "invalid literal."), FIELD) from None


def _syntax_message(source: str, exc: CELParseError) -> str:
    cause = exc.__context__
    if isinstance(cause, UnexpectedToken):
        if cause.token.type == "$END":
            problem = "unexpected end of expression."
        else:
            problem = f"unexpected '{_clip(str(cause.token))}'."
    elif isinstance(cause, UnexpectedCharacters):
        problem = f"unexpected character '{cause.char}'."
    else:
        problem = "syntax error."
    return _format(source, exc.line, exc.column, problem)


def _positioned(source: str, where: Any, problem: str) -> str:
    line = getattr(where, "line", None)
    column = getattr(where, "column", None)
    return _format(source, line, column, problem)


def _format(source: str, line: int | None, column: int | None, problem: str) -> str:
    """``Line 1, column 15: problem`` then the source line (clipped) with a caret under it."""
    if not line or not column:
        return f"Invalid authorisation expression: {problem}"
    lines = source.splitlines() or [""]
    text = lines[min(line, len(lines)) - 1].replace("\t", " ")
    start = max(0, column - 41)
    excerpt = text[start : column + 40]
    caret = " " * (column - 1 - start) + "^"
    return f"Line {line}, column {column}: {problem}\n{excerpt}\n{caret}"


def _clip(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _type_name(value: Any) -> str:
    for cls in type(value).__mro__:
        if cls in _CEL_TYPE_NAMES:
            return _CEL_TYPE_NAMES[cls]
    return "type" if isinstance(value, type) else type(value).__name__


def _describe_error(exc: BaseException) -> str:
    """A short description of an evaluation failure that never includes claim values."""
    if isinstance(exc, _LimitExceeded):
        return str(exc)
    if not isinstance(exc, CELEvalError):
        return type(exc).__name__  # e.g. RecursionError
    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    where = f" at line {exc.line}, column {exc.column}" if exc.line and exc.column else ""
    # Names below come from the expression's own tokens, never from claim values.
    if match := _UNDECLARED.match(message):
        return f"undeclared reference to '{match[1]}'{where}"
    if match := _MEMBER.match(message):
        return f"no such key '{match[1]}'{where}"
    if message.endswith("does not support field selection"):
        return f"field selection on a value that is not a map{where}"
    for prefix, short in _ERROR_PREFIXES:
        if message.startswith(prefix):
            return f"{short}{where}"
    return f"invalid value{where}"
