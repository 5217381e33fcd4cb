"""SCIM 2.0 filters and PATCH paths (RFC 7644 §3.4.2.2, §3.5.2): parse them, translate to SQL."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from typing import Any
from typing import TypeAlias

from sqlalchemy import DateTime
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import Uuid
from sqlalchemy import and_
from sqlalchemy import false
from sqlalchemy import func
from sqlalchemy import literal
from sqlalchemy import literal_column
from sqlalchemy import not_
from sqlalchemy import or_
from sqlalchemy import true
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

__all__ = [
    "And",
    "AttrPath",
    "AttributeMap",
    "Column",
    "Compare",
    "Constant",
    "Filter",
    "FilterError",
    "MultiValued",
    "Not",
    "Or",
    "PatchPath",
    "PathError",
    "Present",
    "ValuePath",
    "parse_attr_path",
    "parse_datetime",
    "parse_filter",
    "parse_path",
    "to_sql",
]


class FilterError(ValueError):
    """The filter is malformed or cannot apply to the resource (400 ``invalidFilter``).

    The message is meant for the client (RFC 7644 §3.12 ``detail``): it names the problem and
    where it is, and never contains server data.
    """


class PathError(ValueError):
    """The PATCH ``path`` is malformed (400 ``invalidPath``, RFC 7644 §3.5.2)."""


COMPARE_OPERATORS = frozenset({"eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"})
_SUBSTRING_OPERATORS = frozenset({"co", "sw", "ew"})
_ORDER_OPERATORS = frozenset({"gt", "ge", "lt", "le"})
ATTRIBUTE_TYPES = frozenset(
    {"string", "boolean", "integer", "decimal", "dateTime", "reference", "binary"}
)
_STRING_TYPES = frozenset({"string", "reference", "binary"})


# --- syntax tree -------------------------------------------------------------------------
@dataclass(frozen=True)
class AttrPath:
    """``[urn ":"] attr ["." sub_attr]``: names as written; lookups compare them lower-cased."""

    urn: str | None
    attr: str
    sub_attr: str | None = None

    def __str__(self) -> str:
        name = f"{self.urn}:{self.attr}" if self.urn else self.attr
        return f"{name}.{self.sub_attr}" if self.sub_attr else name


@dataclass(frozen=True)
class Compare:
    path: AttrPath
    op: str  # lower-case, one of COMPARE_OPERATORS
    value: str | int | float | bool | None


@dataclass(frozen=True)
class Present:
    path: AttrPath


@dataclass(frozen=True)
class And:
    left: Filter
    right: Filter


@dataclass(frozen=True)
class Or:
    left: Filter
    right: Filter


@dataclass(frozen=True)
class Not:
    inner: Filter


@dataclass(frozen=True)
class ValuePath:
    """``path[filter]``: ``filter`` names sub-attributes of ``path`` and applies to one value."""

    path: AttrPath
    filter: Filter


Filter: TypeAlias = Compare | Present | And | Or | Not | ValuePath


@dataclass(frozen=True)
class PatchPath:
    """A PATCH target (RFC 7644 §3.5.2): ``attr``, or ``attr[value_filter]`` then ``.sub_attr``."""

    attr: AttrPath
    value_filter: Filter | None = None
    sub_attr: str | None = None


# --- tokenizer ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "(" ")" "[" "]" "string" "number" "word" "subattr" "end"
    text: str  # as written, for error messages
    value: Any
    pos: int  # offset in the input


_WHITESPACE = " \t\r\n"
_WORD_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ$")
# Attribute paths, operators and the JSON literals are all "words". A word may hold a whole
# URN-qualified path: the URN (which has dots, as in "2.0") ends at the last colon.
_WORD = re.compile(r"[A-Za-z$][A-Za-z0-9_\-:.$]*")
_ATTRNAME = r"(?:\$ref|[A-Za-z][A-Za-z0-9_\-]*)"  # RFC 7644 ATTRNAME, plus RFC 7643's "$ref"
_NAME = re.compile(rf"({_ATTRNAME})(?:\.({_ATTRNAME}))?")
_URN = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*(?::[A-Za-z0-9._\-$]+)+")
_SUBATTR = re.compile(rf"\.({_ATTRNAME})")
# JSON numbers (RFC 8259 §6); [0-9] rather than \d, which also matches non-ASCII digits.
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_NUMBER_TAIL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.$-:")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = frozenset("0123456789abcdefABCDEF")
_LITERALS: dict[str, bool | None] = {"true": True, "false": False, "null": None}
_INT64 = 2**63


def _show(text: str, limit: int = 40) -> str:
    """A fragment of client input for an error message, quoted and cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _tokenize(text: str) -> Iterator[_Token]:
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WHITESPACE:
            i += 1
        elif c in "()[]":
            yield _Token(c, c, None, i)
            i += 1
        elif c == '"':
            value, end = _scan_string(text, i)
            yield _Token("string", text[i:end], value, i)
            i = end
        elif c == "-" or "0" <= c <= "9":
            token = _scan_number(text, i)
            yield token
            i += len(token.text)
        elif c in _WORD_START:
            word = _WORD.match(text, i).group()  # type: ignore[union-attr]  # c matches
            yield _Token("word", word, word, i)
            i += len(word)
        elif c == ".":
            match = _SUBATTR.match(text, i)
            if match is None:
                raise FilterError(f"Unexpected '.' at position {i + 1}")
            yield _Token("subattr", match.group(), match.group(1), i)
            i = match.end()
        else:
            raise FilterError(f"Unexpected character {_show(c)} at position {i + 1}")
    yield _Token("end", "", None, n)


def _scan_number(text: str, start: int) -> _Token:
    match = _NUMBER.match(text, start)
    end = match.end() if match else start + 1
    if match is None or (end < len(text) and text[end] in _NUMBER_TAIL):
        while end < len(text) and text[end] in _NUMBER_TAIL:
            end += 1
        raise FilterError(f"Invalid number {_show(text[start:end])} at position {start + 1}")
    written = match.group()
    value: int | float
    if match.group(1) is None and match.group(2) is None:
        # Checked before int(): Python refuses to convert more than a few thousand digits.
        if len(written) > 20 or not -_INT64 <= (value := int(written)) < _INT64:
            raise FilterError(f"Number {_show(written)} at position {start + 1} is out of range")
    else:
        value = float(written)
        if value in (float("inf"), float("-inf")):
            raise FilterError(f"Number {_show(written)} at position {start + 1} is out of range")
    return _Token("number", written, value, start)


def _scan_string(text: str, start: int) -> tuple[str, int]:
    """A JSON string (RFC 8259 §7) starting at ``start``: its value and the offset after it."""
    out: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= n:
                break
            e = text[i + 1]
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                i += 2
                continue
            if e != "u":
                raise FilterError(f"Invalid escape {_show(c + e)} in a string at position {i + 1}")
            code = _hex4(text, i)
            i += 6
            if 0xD800 <= code <= 0xDBFF:
                # A UTF-16 surrogate pair, as JSON writes characters outside the BMP.
                low = _hex4(text, i) if text.startswith("\\u", i) else -1
                if not 0xDC00 <= low <= 0xDFFF:
                    raise FilterError(f"Unpaired surrogate escape in a string at position {i - 5}")
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                i += 6
            elif 0xDC00 <= code <= 0xDFFF:
                raise FilterError(f"Unpaired surrogate escape in a string at position {i - 5}")
            if code == 0:
                # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the query.
                raise FilterError(f"Strings may not contain NUL (position {i - 5})")
            out.append(chr(code))
            continue
        if c < " ":
            raise FilterError(f"Control character in a string at position {i + 1}; escape it")
        out.append(c)
        i += 1
    raise FilterError(f"Unterminated string starting at position {start + 1}")


def _hex4(text: str, backslash: int) -> int:
    digits = text[backslash + 2 : backslash + 6]
    if len(digits) != 4 or not set(digits) <= _HEX:
        raise FilterError(f"Invalid \\u escape in a string at position {backslash + 1}")
    return int(digits, 16)


def _attr_path(token: _Token, *, relative: bool) -> AttrPath:
    """The attribute path a word token spells (RFC 7644 §3.4.2.2 ``attrPath``)."""
    word = token.text
    urn, _, name = word.rpartition(":")
    match = _NAME.fullmatch(name)
    if match is None or (urn and _URN.fullmatch(urn) is None) or (":" in word and not urn):
        raise FilterError(f"Invalid attribute name {_show(word)} at position {token.pos + 1}")
    path = AttrPath(urn or None, match.group(1), match.group(2))
    if relative and (path.urn or path.sub_attr):
        # Inside brackets names are sub-attributes of the bracketed attribute ("type", "value").
        raise FilterError(
            f"Inside '[...]' name a sub-attribute of the attribute before '[', "
            f"not {_show(word)} (position {token.pos + 1})"
        )
    return path


# --- parser ------------------------------------------------------------------------------
class _Parser:
    """Recursive descent over the RFC 7644 §3.4.2.2 grammar.

    Precedence, loosest first: ``or``, ``and``, then ``not (...)``, ``(...)`` and attribute
    expressions. Keywords and operators are case-insensitive; whitespace separates tokens and
    is otherwise ignored.
    """

    def __init__(self, text: str, max_depth: int, what: str = "filter") -> None:
        self.what = what  # "filter" or "path", for messages
        self.tokens = list(_tokenize(text))
        self.index = 0
        self.depth = 0
        self.max_depth = max_depth

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def enter(self) -> None:
        # Bounds the recursion (and the SQL nesting) for parentheses, "not" and brackets.
        self.depth += 1
        if self.depth > self.max_depth:
            raise FilterError(f"Filter nests more than {self.max_depth} levels deep")

    def unexpected(self, token: _Token, expected: str) -> FilterError:
        found = f"the end of the {self.what}" if token.kind == "end" else _show(token.text)
        return FilterError(f"Expected {expected} at position {token.pos + 1}, found {found}")

    def close(self, kind: str, opening: _Token) -> _Token:
        token = self.peek()
        if token.kind != kind:
            found = f"the end of the {self.what}" if token.kind == "end" else _show(token.text)
            raise FilterError(
                f"Missing '{kind}' for the '{opening.kind}' at position {opening.pos + 1}; "
                f"found {found} at position {token.pos + 1}"
            )
        self.depth -= 1
        return self.advance()

    def is_keyword(self, token: _Token, keyword: str) -> bool:
        return token.kind == "word" and token.text.lower() == keyword

    def whole_filter(self) -> Filter:
        node = self.or_expression(relative=False)
        token = self.peek()
        if token.kind != "end":
            if token.kind == "subattr":
                raise FilterError(
                    f"'.{token.value}' after ']' (position {token.pos + 1}) is only valid in a "
                    "PATCH path; in a filter write the condition inside the brackets"
                )
            raise self.unexpected(token, "'and', 'or' or the end of the filter")
        return node

    def or_expression(self, *, relative: bool) -> Filter:
        node = self.and_expression(relative=relative)
        while self.is_keyword(self.peek(), "or"):
            self.advance()
            node = Or(node, self.and_expression(relative=relative))
        return node

    def and_expression(self, *, relative: bool) -> Filter:
        node = self.unary(relative=relative)
        while self.is_keyword(self.peek(), "and"):
            self.advance()
            node = And(node, self.unary(relative=relative))
        return node

    def unary(self, *, relative: bool) -> Filter:
        token = self.peek()
        if token.kind == "(":
            self.advance()
            self.enter()
            node = self.or_expression(relative=relative)
            self.close(")", token)
            return node
        if self.is_keyword(token, "not"):
            self.advance()
            opening = self.peek()
            if opening.kind != "(":
                # RFC 7644 §3.4.2.2: *1"not" "(" FILTER ")"; "not" never stands alone.
                raise FilterError(
                    f"'not' at position {token.pos + 1} must be followed by a filter in "
                    "parentheses, e.g. not (title pr)"
                )
            self.advance()
            self.enter()
            node = self.or_expression(relative=relative)
            self.close(")", opening)
            return Not(node)
        # "and"/"or" name no SCIM attribute: "a pr and or b pr" is a missing operand.
        if token.kind == "word" and token.text.lower() not in ("and", "or"):
            return self.attribute_expression(relative=relative)
        raise self.unexpected(token, "an attribute name, 'not' or '('")

    def attribute_expression(self, *, relative: bool) -> Filter:
        name = self.advance()
        path = _attr_path(name, relative=relative)
        token = self.peek()
        if token.kind == "[":
            if relative:
                raise FilterError(f"Filters in brackets cannot nest (position {token.pos + 1})")
            return ValuePath(path, self.bracketed_filter(path))
        if token.kind != "word":
            raise self.unexpected(token, f"an operator after {_show(name.text)}")
        op = token.text.lower()
        self.advance()
        if op == "pr":
            after = self.peek()
            if after.kind in ("string", "number") or (
                after.kind == "word" and after.text.lower() in _LITERALS
            ):
                raise FilterError(f"'pr' takes no value (position {after.pos + 1})")
            return Present(path)
        if op not in COMPARE_OPERATORS:
            raise FilterError(
                f"Unknown operator {_show(token.text)} at position {token.pos + 1}; "
                "use eq, ne, co, sw, ew, gt, ge, lt, le or pr"
            )
        return Compare(path, op, self.comparison_value(token, op))

    def bracketed_filter(self, path: AttrPath) -> Filter:
        opening = self.advance()
        if path.sub_attr is not None:
            raise FilterError(
                f"'[' at position {opening.pos + 1} must follow a multi-valued attribute, "
                f"not the sub-attribute {_show(str(path))}"
            )
        self.enter()
        node = self.or_expression(relative=True)
        self.close("]", opening)
        return node

    def comparison_value(self, op_token: _Token, op: str) -> str | int | float | bool | None:
        token = self.peek()
        if token.kind in ("string", "number"):
            value = token.value
        elif token.kind == "word" and token.text.lower() in _LITERALS:
            value = _LITERALS[token.text.lower()]
        elif token.kind == "end":
            raise FilterError(f"Missing value after '{op_token.text}' at position {token.pos + 1}")
        else:
            raise self.unexpected(
                token,
                f"a value after '{op_token.text}' (a quoted string, number, true, false or null)",
            )
        self.advance()
        # Checks that need no knowledge of the attribute (its type is checked by to_sql).
        if op in _SUBSTRING_OPERATORS and not isinstance(value, str):
            raise FilterError(f"'{op}' needs a string value (position {token.pos + 1})")
        if op in _ORDER_OPERATORS and (value is None or isinstance(value, bool)):
            raise FilterError(
                f"'{op}' needs a string, number or dateTime value (position {token.pos + 1})"
            )
        return value


def _check_text(text: object, max_length: int, what: str) -> str:
    if not isinstance(text, str):
        raise FilterError(f"The {what} must be a string")
    if len(text) > max_length:
        raise FilterError(f"The {what} is longer than {max_length} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FilterError(f"The {what} is not valid Unicode text") from None
    if not text.strip(_WHITESPACE):
        raise FilterError(f"Empty {what}")
    return text


def parse_filter(text: str, *, max_length: int = 4096, max_depth: int = 32) -> Filter:
    """Parse a SCIM filter (RFC 7644 §3.4.2.2) into its syntax tree.

    ``and``/``or`` chains are left-associative. Raises FilterError (and nothing else) for any
    malformed input, including text over ``max_length`` characters and parentheses, ``not``
    and brackets nested more than ``max_depth`` levels.
    """
    text = _check_text(text, max_length, "filter")
    try:
        return _Parser(text, max_depth).whole_filter()
    except RecursionError:
        raise FilterError("The filter nests too deeply") from None


def parse_attr_path(text: str) -> AttrPath:
    """Parse one attribute path (``name.givenName``, a URN-qualified name); FilterError if bad.

    For the ``sortBy``, ``attributes`` and ``excludedAttributes`` parameters (RFC 7644 §3.4.2).
    """
    text = _check_text(text, 1024, "attribute name")
    tokens = list(_tokenize(text))
    if len(tokens) != 2 or tokens[0].kind != "word":
        raise FilterError(f"Invalid attribute name {_show(text.strip(_WHITESPACE))}")
    return _attr_path(tokens[0], relative=False)


def parse_path(text: str, *, max_length: int = 4096, max_depth: int = 32) -> PatchPath:
    """Parse a PATCH ``path`` (RFC 7644 §3.5.2: ``attrPath / valuePath [subAttr]``).

    Raises PathError (and nothing else), also when the filter in brackets is malformed.
    """
    try:
        text = _check_text(text, max_length, "path")
        parser = _Parser(text, max_depth, "path")
        token = parser.advance()
        if token.kind != "word":
            raise parser.unexpected(token, "an attribute name")
        attr = _attr_path(token, relative=False)
        value_filter = sub_attr = None
        if parser.peek().kind == "[":
            value_filter = parser.bracketed_filter(attr)
            token = parser.peek()
            # "emails[type eq "work"].value": the sub-attribute follows "]" directly.
            if token.kind == "subattr" and text[token.pos - 1] == "]":
                sub_attr = parser.advance().value
        token = parser.peek()
        if token.kind != "end":
            raise parser.unexpected(token, "the end of the path")
        return PatchPath(attr, value_filter, sub_attr)
    except FilterError as exc:
        raise PathError(str(exc)) from None
    except RecursionError:
        raise PathError("The path nests too deeply") from None


# --- translation to SQL ------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Column:
    """A single-valued attribute stored in a column (or computed by a SQL expression).

    ``expression`` yields the SCIM value: a string expression for string/reference
    attributes (a ``Uuid`` column is also accepted: eq/ne/pr then compare UUIDs). eq=False:
    comparing SQL expressions with ``==`` builds SQL, it does not answer.
    """

    expression: ColumnElement[Any]
    type: str
    case_exact: bool = False

    def __post_init__(self) -> None:
        if self.type not in ATTRIBUTE_TYPES:
            raise ValueError(f"unknown SCIM attribute type {self.type!r}")


@dataclass(frozen=True, eq=False)
class Constant:
    """An attribute with the same value on every row; a list/tuple/set is a multi-valued one."""

    value: Any
    type: str
    case_exact: bool = False

    def __post_init__(self) -> None:
        if self.type not in ATTRIBUTE_TYPES:
            raise ValueError(f"unknown SCIM attribute type {self.type!r}")


@dataclass(frozen=True, eq=False)
class MultiValued:
    """A multi-valued complex attribute backed by related rows.

    ``exists(clause)`` returns EXISTS over the related rows that satisfy ``clause`` (which
    uses the sub-attribute columns), correlated to the outer row. ``sub_attributes`` maps
    lower-case names to columns/constants; "value" is used when a filter names the attribute
    itself (RFC 7644 §3.4.2.2: ``emails co "x"``).
    """

    exists: Callable[[ColumnElement[bool]], ColumnElement[bool]]
    sub_attributes: Mapping[str, Column | Constant]


AttributeMap: TypeAlias = Mapping[str, Column | Constant | MultiValued]
_Leaf: TypeAlias = Column | Constant


def to_sql(filter: Filter, attributes: AttributeMap, *, default_urn: str) -> ColumnElement[bool]:
    """Translate a parsed filter into one SQL boolean clause over ``attributes``.

    ``attributes`` maps lower-case names ("username", "name.familyname", "meta.lastmodified",
    URN-qualified extension names, "emails") to their storage. Names qualified with
    ``default_urn`` also resolve without it, and unqualified names also resolve with it.

    Every comparison is two-valued (never SQL NULL), so ``ne`` and ``not (...)`` match rows
    where the attribute is unassigned, as SCIM clients expect. On a multi-valued attribute
    a comparison matches when any value does; a bracketed filter must hold for one value.

    Raises FilterError for unknown attributes, operators the attribute's type does not
    support, values of the wrong type and brackets on a single-valued attribute.
    """
    try:
        return _Translator(attributes, default_urn).clause(filter, None)
    except RecursionError:
        raise FilterError("The filter nests too deeply") from None


@dataclass(frozen=True)
class _Scope:
    """Inside ``attr[...]``: names resolve to the sub-attributes of ``attribute``."""

    attribute: MultiValued
    name: str


class _Translator:
    def __init__(self, attributes: AttributeMap, default_urn: str) -> None:
        self.attributes = attributes
        self.default_urn = default_urn.lower()

    def clause(self, node: Filter, scope: _Scope | None) -> ColumnElement[bool]:
        if isinstance(node, And | Or):
            # Flattened without recursion: "a and b and c ..." is a left-deep tree as long as
            # the filter, which must not cost one Python frame per term.
            parts = [self.clause(part, scope) for part in _flatten(node, type(node))]
            return and_(*parts) if isinstance(node, And) else or_(*parts)
        if isinstance(node, Not):
            return not_(self.clause(node.inner, scope))
        if isinstance(node, Present):
            return self.present(node.path, scope)
        if isinstance(node, Compare):
            return self.compare(node, scope)
        if isinstance(node, ValuePath):
            if scope is not None:
                raise FilterError("Filters in brackets cannot nest")
            attribute, leaf = self.resolve(node.path, None)
            if attribute is None or leaf is not None:
                raise FilterError(
                    f"'[...]' needs a multi-valued attribute; {_show(str(node.path))} is not one"
                )
            # One EXISTS for the whole inner filter: all of it must hold for the same value.
            return attribute.exists(self.clause(node.filter, _Scope(attribute, str(node.path))))
        raise FilterError("Unsupported filter expression")

    def resolve(
        self, path: AttrPath, scope: _Scope | None
    ) -> tuple[MultiValued | None, _Leaf | None]:
        """(multi-valued attribute or None, leaf or None) for a path; FilterError if unknown."""
        if scope is not None:
            leaf = None
            if path.urn is None and path.sub_attr is None:
                leaf = scope.attribute.sub_attributes.get(path.attr.lower())
            if leaf is None:
                raise FilterError(f"Unknown attribute {_show(f'{scope.name}.{path}')}")
            return None, leaf
        urn = path.urn.lower() if path.urn else None
        if urn is None:
            prefixes = ["", f"{self.default_urn}:"]
        elif urn == self.default_urn:
            prefixes = [f"{urn}:", ""]
        else:
            prefixes = [f"{urn}:"]
        sub = path.sub_attr.lower() if path.sub_attr else None
        for prefix in prefixes:
            base = prefix + path.attr.lower()
            found = self.attributes.get(f"{base}.{sub}" if sub else base)
            if isinstance(found, MultiValued):
                return found, None
            if found is not None:
                return None, found
            parent = self.attributes.get(base) if sub else None
            if isinstance(parent, MultiValued):
                leaf = parent.sub_attributes.get(sub)  # type: ignore[arg-type]  # sub is set
                if leaf is None:
                    break
                return parent, leaf
        if sub is None and any(
            key.startswith(f"{prefix}{path.attr.lower()}.")
            for key in self.attributes
            for prefix in prefixes
        ):
            raise FilterError(
                f"Attribute {_show(str(path))} is complex: filter on one of its sub-attributes"
            )
        raise FilterError(f"Unknown attribute {_show(str(path))}")

    def present(self, path: AttrPath, scope: _Scope | None) -> ColumnElement[bool]:
        attribute, leaf = self.resolve(path, scope)
        if leaf is None:
            # "emails pr": the resource has at least one value.
            return attribute.exists(true())  # type: ignore[union-attr]  # one of them is set
        clause = _present(leaf)
        return clause if attribute is None else attribute.exists(clause)

    def compare(self, node: Compare, scope: _Scope | None) -> ColumnElement[bool]:
        if node.op not in COMPARE_OPERATORS:
            raise FilterError(f"Unknown operator {_show(node.op)}")
        if node.value is None:
            # "x eq null" asks for an unassigned attribute, "x ne null" for an assigned one.
            if node.op not in ("eq", "ne"):
                raise FilterError(f"'{node.op}' cannot compare with null")
            present = self.present(node.path, scope)
            return not_(present) if node.op == "eq" else present
        attribute, leaf = self.resolve(node.path, scope)
        name = str(node.path) if scope is None else f"{scope.name}.{node.path}"
        if leaf is None:
            leaf = attribute.sub_attributes.get("value")  # type: ignore[union-attr]
            if leaf is None:
                raise FilterError(
                    f"Attribute {_show(name)} is complex: filter on one of its sub-attributes"
                )
            name = f"{name}.value"
        clause = _compare(leaf, node.op, node.value, name)
        return clause if attribute is None else attribute.exists(clause)


def _flatten(node: And | Or, kind: type[And] | type[Or]) -> list[Filter]:
    parts: list[Filter] = []
    stack: list[Filter] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, kind):
            stack.append(item.right)
            stack.append(item.left)
        else:
            parts.append(item)
    return parts


def _is_uuid(expression: ColumnElement[Any]) -> bool:
    return isinstance(expression.type, Uuid)


def _present(leaf: _Leaf) -> ColumnElement[bool]:
    """RFC 7644 §3.4.2.2 ``pr``: the attribute has a non-empty value."""
    if isinstance(leaf, Constant):
        values = _constant_values(leaf)
        return true() if any(v is not None and v != "" for v in values) else false()
    x = leaf.expression
    if leaf.type in _STRING_TYPES and not _is_uuid(x):
        return and_(x.is_not(None), x != "")
    return x.is_not(None)


def _coerce(name: str, type_: str, op: str, value: Any) -> Any:
    """The filter value as the attribute's type (RFC 7643 §2.3); FilterError if it is not."""
    if op in _SUBSTRING_OPERATORS and type_ not in ("string", "reference"):
        raise FilterError(f"'{op}' is not supported for the {type_} attribute {_show(name)}")
    if op in _ORDER_OPERATORS and type_ in ("boolean", "binary"):
        # RFC 7644 §3.4.2.2: gt/ge/lt/le on boolean or binary attributes is invalidFilter.
        raise FilterError(f"'{op}' is not supported for the {type_} attribute {_show(name)}")
    if type_ in _STRING_TYPES:
        if not isinstance(value, str):
            raise FilterError(f"Attribute {_show(name)} needs a string value")
        return value
    if type_ == "boolean":
        if not isinstance(value, bool):
            raise FilterError(f"Attribute {_show(name)} needs true or false")
        return value
    if type_ in ("integer", "decimal"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FilterError(f"Attribute {_show(name)} needs a number")
        return value
    if not isinstance(value, str):
        raise FilterError(f"Attribute {_show(name)} needs a dateTime string")
    try:
        return parse_datetime(value)
    except ValueError:
        raise FilterError(
            f"{_show(value)} is not a valid dateTime for {_show(name)} "
            "(RFC 3339, e.g. 2011-05-13T04:42:34Z)"
        ) from None


# xsd:dateTime as RFC 7643 §2.3.5 uses it, i.e. RFC 3339 §5.6 with an optional offset.
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


def parse_datetime(text: str) -> datetime:
    """An RFC 3339 date-time as an aware UTC datetime; no offset means UTC. ValueError if bad.

    Fractions beyond microseconds are truncated; leap seconds (":60") are refused.
    """
    match = _DATETIME.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    micro = int(((match.group(7) or "") + "000000")[:6])
    offset = match.group(8)
    tzinfo: timezone = UTC
    if offset and offset not in ("Z", "z"):
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"invalid UTC offset: {offset!r}")
        delta = timedelta(hours=hours, minutes=minutes)
        tzinfo = timezone(delta if offset[0] == "+" else -delta)
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tzinfo).astimezone(
            UTC
        )
    except OverflowError:
        raise ValueError(f"date-time out of range: {text!r}") from None


def _compare(leaf: _Leaf, op: str, value: Any, name: str) -> ColumnElement[bool]:
    """One comparison, TRUE or FALSE on every row (never NULL, so NOT stays meaningful)."""
    value = _coerce(name, leaf.type, op, value)
    if isinstance(leaf, Constant):
        return true() if _constant_matches(leaf, op, value) else false()
    x = leaf.expression
    if _is_uuid(x):
        return _compare_uuid(x, op, value, name)
    if leaf.type in _STRING_TYPES:
        return _compare_string(x, op, value, case_exact=leaf.case_exact or leaf.type == "binary")
    if leaf.type == "dateTime":
        value = _datetime_param(x, value)
    return _guard(x, op, _OPERATORS[op](x, value))


_OPERATORS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


def _guard(x: ColumnElement[Any], op: str, clause: ColumnElement[bool]) -> ColumnElement[bool]:
    # SQL's "x <> 'a'" is NULL when x is NULL. "ne" must include unassigned values; every
    # other operator excludes them. (NULL AND FALSE is FALSE; NULL OR TRUE is TRUE.)
    if op == "ne":
        return or_(clause, x.is_(None))
    return and_(clause, x.is_not(None))


def _compare_string(
    x: ColumnElement[Any], op: str, value: str, *, case_exact: bool
) -> ColumnElement[bool]:
    if op in _SUBSTRING_OPERATORS:
        return _guard(x, op, _substring(x, op, value, case_exact=case_exact))
    operand = literal(value, String)
    if not case_exact:
        # RFC 7643 §2.1 caseExact=false: compare both sides lower-cased by the database.
        return _guard(x, op, _OPERATORS[op](func.lower(x), func.lower(operand)))
    return _guard(x, op, _OPERATORS[op](x, operand))


def _escape_like(value: str) -> str:
    return value.replace("/", "//").replace("%", "/%").replace("_", "/_")


def _substring(x: ColumnElement[Any], op: str, value: str, *, case_exact: bool) -> Any:
    if not value:
        return true()
    if not case_exact:
        pattern = "%" if op in ("co", "ew") else ""
        pattern += _escape_like(value) + ("%" if op in ("co", "sw") else "")
        # The value's own % and _ are escaped: "co \"100%\"" means a literal percent sign.
        return func.lower(x).like(func.lower(literal(pattern, String)), escape="/")
    # SQLite's LIKE ignores ASCII case, so case-exact matching uses functions both databases
    # share instead. The length is a literal integer: PostgreSQL cannot infer a bound one.
    operand = literal(value, String)
    length = literal_column(str(len(value)), Integer)
    if op == "co":
        return func.replace(x, operand, literal("", String)) != x
    if op == "sw":
        return func.substr(x, 1, length) == operand
    start = func.length(x) - literal_column(str(len(value) - 1), Integer)
    return and_(func.length(x) >= length, func.substr(x, start) == operand)


def _compare_uuid(x: ColumnElement[Any], op: str, value: str, name: str) -> ColumnElement[bool]:
    if op not in ("eq", "ne"):
        raise FilterError(f"'{op}' is not supported for the identifier {_show(name)}")
    try:
        wanted = uuid.UUID(value)
    except ValueError:
        # No identifier equals a malformed one.
        return false() if op == "eq" else true()
    return _guard(x, op, _OPERATORS[op](x, wanted))


def _datetime_param(x: ColumnElement[Any], value: datetime) -> ColumnElement[Any]:
    """Bind a UTC datetime so it compares correctly with ``x`` on SQLite and PostgreSQL."""
    type_ = x.type
    if isinstance(type_, TypeDecorator):
        # UTCDateTime (app.models.base) takes aware values and stores UTC on every database.
        return literal(value, type_)
    if isinstance(type_, DateTime):
        # A naive column holds UTC by this codebase's convention; SQLite compares the text.
        return literal(value if type_.timezone else value.replace(tzinfo=None), type_)
    return literal(value, DateTime(timezone=True))


def _constant_values(leaf: Constant) -> tuple[Any, ...]:
    if isinstance(leaf.value, list | tuple | set | frozenset):
        return tuple(leaf.value)
    return (leaf.value,)


def _constant_matches(leaf: Constant, op: str, value: Any) -> bool:
    """The comparison evaluated in Python: the same for every row."""
    for item in _constant_values(leaf):
        if item is None:
            matched = op == "ne"
        else:
            if leaf.type == "dateTime":
                item = _as_utc(item)
            if leaf.type in ("string", "reference") and not leaf.case_exact:
                item, other = str(item).lower(), value.lower()
            else:
                other = value
            matched = _PYTHON_OPERATORS[op](item, other)
        if matched:
            return True
    return False


def _as_utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        return parse_datetime(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_PYTHON_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "co": lambda a, b: b in a,
    "sw": lambda a, b: a.startswith(b),
    "ew": lambda a, b: a.endswith(b),
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}
