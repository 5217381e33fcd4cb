"""SCIM 2.0 resources (RFC 7643/7644): User and Group <-> rows, filters -> SQL, PATCH, ETags,
Bulk. Every read and write is scoped to the calling token's account.

Multi-account rules (DESIGN "Accounts, users and SCIM"): an account's SCIM sees the users who
are members of that account. It changes the attributes, password and sign-in state only of
users it *manages* (``User.managed_by_account_id``, set when its SCIM created them); for any
other member it controls only the membership (its ``active`` flag and the account's groups),
and attribute changes sent for them are ignored, as RFC 7644 §3.5.1 ignores readOnly values.

Services add and flush; the blueprint commits once per request (Bulk: one SAVEPOINT per
operation, so a failed one leaves no trace).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import uuid
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean
from sqlalchemy import String
from sqlalchemy import Uuid
from sqlalchemy import and_
from sqlalchemy import any_
from sqlalchemy import bindparam
from sqlalchemy import cast
from sqlalchemy import delete
from sqlalchemy import exists
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import literal
from sqlalchemy import literal_column
from sqlalchemy import select
from sqlalchemy import true
from sqlalchemy import type_coerce
from sqlalchemy import union_all
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from app.extensions import db
from app.models import Group
from app.models import GroupMember
from app.models import Membership
from app.models import Role
from app.models import User
from app.models.base import utcnow
from app.services import audit
from app.services import passwords
from app.services import scim_filter as sf
from app.services import scim_schema as schema
from app.services import users as users_service
from app.services.errors import ServiceError
from app.services.errors import ValidationError
from app.services.scim_tokens import AuthenticatedToken

MAX_STRING_LENGTH = 2048  # any stored string attribute
MAX_USER_NAME_LENGTH = 254  # User.user_name
MAX_NAME_LENGTH = 200  # User.given_name / family_name
MAX_EXTERNAL_ID_LENGTH = 255  # User.external_id, Group.external_id
MAX_DISPLAY_NAME_LENGTH = 255  # Group.display_name
MAX_MULTI_VALUES = 100  # values of one multi-valued User attribute (emails, phoneNumbers...)
MAX_OPERATIONS = 1000  # operations in one PATCH request
# Where a user with no usable email address gets one (User.email is required and unique):
# RFC 2606's .invalid never receives mail and can never be a real person's address.
PLACEHOLDER_EMAIL_DOMAIN = "scim.invalid"


# --- errors and context ------------------------------------------------------------------
class ScimError(ServiceError):
    """A SCIM error response (RFC 7644 §3.12): HTTP ``status``, optional ``scim_type``, and a
    ``detail`` safe to show the client (no other account's data, no secret)."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "schemas": [schema.ERROR],
            "status": str(self.status),
            "detail": self.detail,
        }
        if self.scim_type:
            body["scimType"] = self.scim_type
        return body


def not_found(kind: str, resource_id: str) -> ScimError:
    # The same answer for a missing id and another account's id: nothing leaks.
    return ScimError(404, f"{kind} {str(resource_id)[:100]} not found")


def invalid_value(detail: str) -> ScimError:
    return ScimError(400, detail, "invalidValue")


@dataclass
class Caller:
    """The token a request authenticated with, the base URL of /scim/v2 (for ``location``
    and ``$ref``), and the request's metadata for the audit trail."""

    token: AuthenticatedToken
    base_url: str
    meta: audit.RequestMeta = audit.NO_REQUEST

    @property
    def account_id(self) -> int:
        return self.token.account_id

    def location(self, endpoint: str, resource_id: Any) -> str:
        return f"{self.base_url}/{endpoint}/{resource_id}"

    def record(self, action: str, target_type: str, target_id: Any, details: dict) -> None:
        # One INSERT at once, no ORM object: SCIM writes come in bulk from IdPs.
        audit.insert_now(
            action,
            actor_label=self.token.label,
            account_id=self.account_id,
            target_type=target_type,
            target_id=target_id,
            details={"token_id": str(self.token.id), **details},
            meta=self.meta,
        )

    def audit_row(self, action: str, target_type: str, target_id: Any, details: dict) -> dict:
        """The audit row record() would insert, for a statement that writes it with others."""
        return audit.values_now(
            action,
            actor_label=self.token.label,
            account_id=self.account_id,
            target_type=target_type,
            target_id=target_id,
            details={"token_id": str(self.token.id), **details},
            meta=self.meta,
        )


@dataclass(frozen=True)
class Limits:
    """What the blueprint enforces and ServiceProviderConfig advertises."""

    max_results: int = 200
    bulk_max_operations: int = 100
    bulk_max_payload: int = 1024 * 1024


# --- ETags (RFC 7644 §3.14) ----------------------------------------------------------------
def etag(version: int) -> str:
    return f'W/"{version}"'


def check_if_match(header: str | None, version: int) -> None:
    """412 unless ``If-Match`` is absent, ``*``, or lists the resource's current ETag (weak
    comparison: the W/ prefix is ignored, RFC 7232 §2.3.2)."""
    if header is None or not header.strip():
        return
    current = str(version)
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*":
            return
        if tag.startswith(("W/", "w/")):
            tag = tag[2:]
        if tag.strip('"') == current:
            return
    raise ScimError(412, "The resource has changed since it was read (If-Match failed)")


def matches_if_none_match(header: str | None, version: int) -> bool:
    """True when a conditional GET may answer 304 (``If-None-Match`` lists the ETag)."""
    if not header:
        return False
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        if tag.startswith(("W/", "w/")):
            tag = tag[2:]
        if tag.strip('"') == str(version):
            return True
    return False


# --- query parameters ----------------------------------------------------------------------
@dataclass
class ListQuery:
    """GET /Users, /Groups and POST /.search parameters (RFC 7644 §3.4.2, §3.4.3)."""

    filter: str | None = None
    start_index: int = 1
    count: int | None = None
    sort_by: str | None = None
    sort_order: str = "ascending"
    attributes: list[str] = field(default_factory=list)
    excluded_attributes: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: Any) -> ListQuery:
        """From the query string (a MultiDict)."""
        return cls.from_mapping({key: args.get(key) for key in args})

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ListQuery:
        """From a query string or a SearchRequest body; parameter names are case-insensitive."""
        lower = {str(k).lower(): v for k, v in data.items()}
        query = cls()
        raw_filter = lower.get("filter")
        if raw_filter is not None and not isinstance(raw_filter, str):
            raise ScimError(400, "filter must be a string", "invalidFilter")
        query.filter = raw_filter if raw_filter and raw_filter.strip() else None
        query.start_index = max(1, _int_param(lower.get("startindex"), "startIndex", 1))
        if lower.get("count") is not None:
            query.count = max(0, _int_param(lower.get("count"), "count", 0))
        sort_by = lower.get("sortby")
        if sort_by is not None and not isinstance(sort_by, str):
            raise invalid_value("sortBy must be an attribute name")
        query.sort_by = sort_by or None
        order = lower.get("sortorder") or "ascending"
        if not isinstance(order, str) or order.lower() not in ("ascending", "descending"):
            raise invalid_value("sortOrder must be ascending or descending")
        query.sort_order = order.lower()
        query.attributes = _names_param(lower.get("attributes"), "attributes")
        query.excluded_attributes = _names_param(
            lower.get("excludedattributes"), "excludedAttributes"
        )
        return query


def _int_param(raw: Any, name: str, default: int) -> int:
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise invalid_value(f"{name} must be an integer")
    if isinstance(raw, int):
        return raw
    try:
        return int(str(raw).strip())
    except ValueError:
        raise invalid_value(f"{name} must be an integer") from None


def _names_param(raw: Any, name: str) -> list[str]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        items = raw.split(",")
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        items = raw
    else:
        raise invalid_value(f"{name} must be a list of attribute names")
    names = [item.strip() for item in items if item.strip()]
    for item in names:
        try:
            sf.parse_attr_path(item)
        except sf.FilterError as exc:
            raise invalid_value(f"{name}: {exc}") from None
    return names


# --- projection: attributes / excludedAttributes (RFC 7644 §3.4.2.5, §3.9) -----------------
@dataclass(frozen=True)
class Projection:
    """Which attributes a response carries. Names are normalised to ``urn:attr[.sub]`` keys
    in lower case (core attributes without URN)."""

    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    @classmethod
    def of(cls, rtype: schema.ResourceType, query: ListQuery | None) -> Projection:
        if query is None:
            return cls()
        return cls(
            frozenset(_normalise_name(rtype, n) for n in query.attributes),
            frozenset(_normalise_name(rtype, n) for n in query.excluded_attributes),
        )

    def wants(self, key: str) -> bool:
        """Whether the top-level attribute ``key`` (normalised) is needed at all."""
        if self.include:
            return any(name == key or name.startswith(key + ".") for name in self.include)
        return key not in self.exclude

    def apply(self, rtype: schema.ResourceType, resource: dict[str, Any]) -> dict[str, Any]:
        if not self.include and not self.exclude:
            return resource
        out: dict[str, Any] = {}
        for key, value in resource.items():
            if key in ("schemas", "id"):
                out[key] = value  # returned "always"
                continue
            extension = rtype.schema_for(key) if key.startswith("urn:") else None
            if extension is not None and isinstance(value, dict):
                inner = self._extension(key.lower(), value)
                if inner:
                    out[key] = inner
                continue
            normalised = key.lower()
            if self._keep(normalised, value):
                out[key] = self._sub(normalised, value)
        # "schemas" lists the extensions the answer still carries.
        out["schemas"] = [
            urn for urn in resource["schemas"] if urn == rtype.schema.id or urn in out
        ]
        return out

    def _extension(self, urn: str, value: dict[str, Any]) -> dict[str, Any]:
        """The attributes of an extension object (``urn:...:User`` names all of them)."""
        if self.include and urn in self.include:
            return value
        if urn in self.exclude:
            return {}
        prefix = urn + ":"
        return {
            k: self._sub(prefix + k.lower(), v)
            for k, v in value.items()
            if self._keep(prefix + k.lower(), v)
        }

    def _keep(self, key: str, value: Any) -> bool:
        if self.include:
            return any(n == key or n.startswith(key + ".") for n in self.include)
        return key not in self.exclude

    def _sub(self, key: str, value: Any) -> Any:
        """Sub-attribute selection inside a complex value (``name.givenName``)."""
        subs_in = {n.split(".", 1)[1] for n in self.include if n.startswith(key + ".")}
        subs_out = {n.split(".", 1)[1] for n in self.exclude if n.startswith(key + ".")}
        if not subs_in and not subs_out:
            return value

        def pick(item: Any) -> Any:
            if not isinstance(item, dict):
                return item
            if subs_in and key not in self.include:
                return {k: v for k, v in item.items() if k.lower() in subs_in}
            return {k: v for k, v in item.items() if k.lower() not in subs_out}

        if isinstance(value, list):
            return [pick(item) for item in value]
        return pick(value)


def _normalise_name(rtype: schema.ResourceType, name: str) -> str:
    path = sf.parse_attr_path(name)
    attr = path.attr.lower()
    sub = f".{path.sub_attr.lower()}" if path.sub_attr else ""
    if path.urn and path.urn.lower() != rtype.schema.id.lower():
        # "urn:...:User" alone names the whole extension.
        full = f"{path.urn}:{path.attr}"
        if rtype.schema_for(full) is not None and not path.sub_attr:
            return full.lower()
        return f"{path.urn.lower()}:{attr}{sub}"
    return f"{attr}{sub}"


# --- values: canonical names, types (RFC 7643 §2.3) ------------------------------------------
_TRUE = {"true"}
_FALSE = {"false"}


def _coerce(attr: schema.Attribute, value: Any, where: str) -> Any:
    """One value of ``attr`` in its canonical form; ScimError invalidValue if it is not of the
    attribute's type. Entra ID sends booleans as the strings "True"/"False": accepted."""
    if value is None:
        return None
    kind = attr.type
    if kind == "complex":
        if not isinstance(value, dict):
            raise invalid_value(f"{where} must be an object")
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = attr.sub(str(key))
            if sub is None or sub.mutability == "readOnly":
                continue  # unknown or read-only sub-attributes are ignored
            coerced = _coerce(sub, item, f"{where}.{sub.name}")
            if coerced is not None:
                out[sub.name] = coerced
        return out
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise invalid_value(f"{where} must be true or false")
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_value(f"{where} must be an integer")
        return value
    if kind == "decimal":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise invalid_value(f"{where} must be a number")
        return value
    if kind == "dateTime":
        if not isinstance(value, str):
            raise invalid_value(f"{where} must be a dateTime string")
        try:
            sf.parse_datetime(value)
        except ValueError:
            raise invalid_value(f"{where} must be an RFC 3339 dateTime") from None
        return value
    # string, reference, binary
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise invalid_value(f"{where} must be a string")
    text = str(value)
    if len(text) > MAX_STRING_LENGTH:
        raise invalid_value(f"{where} must be at most {MAX_STRING_LENGTH} characters")
    if "\x00" in text:
        raise invalid_value(f"{where} must not contain NUL characters")
    return text


def _coerce_attribute(attr: schema.Attribute, value: Any, where: str) -> Any:
    """A whole attribute value: a list for multi-valued ones (a single value is wrapped)."""
    if not attr.multi_valued and attr.type == "complex" and isinstance(value, list):
        # Entra ID sends the enterprise manager as a list of one object.
        if len(value) > 1:
            raise invalid_value(f"{where} takes one value")
        value = value[0] if value else None
    if attr.multi_valued:
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        if len(items) > (MAX_OPERATIONS * 100 if attr.name == "members" else MAX_MULTI_VALUES):
            raise invalid_value(f"{where} has too many values")
        out = []
        for item in items:
            coerced = _coerce(attr, item, where)
            if coerced not in (None, {}):
                out.append(coerced)
        return out
    return _coerce(attr, value, where)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _strip_empty(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = _strip_empty(value)
        if not _empty(value):
            out[key] = value
    return out


@dataclass
class _Target:
    """Where an attribute lives in a document: the container dict and its definition."""

    container: dict[str, Any]
    attr: schema.Attribute
    urn: str | None  # None for the core schema


def _lookup(
    rtype: schema.ResourceType, doc: dict[str, Any], urn: str | None, name: str, *, create: bool
) -> _Target | None:
    """The attribute ``name`` of schema ``urn`` (core when None) in ``doc``."""
    found = rtype.schema_for(urn)
    if found is None:
        return None
    attr = found.attribute(name) or (schema.COMMON.get(name.lower()) if urn is None else None)
    if attr is None:
        return None
    if found is rtype.schema:
        return _Target(doc, attr, None)
    container = doc.get(found.id)
    if not isinstance(container, dict):
        container = {}
        if create:
            doc[found.id] = container
    return _Target(container, attr, found.id)


def canonical_document(rtype: schema.ResourceType, body: dict[str, Any]) -> dict[str, Any]:
    """A request body (POST/PUT) as a document of canonical attribute names with coerced
    values. Read-only attributes and unknown attributes are ignored (RFC 7644 §3.3, §3.5.1);
    extension attributes come from their URN object or from URN-qualified keys."""
    if not isinstance(body, dict):
        raise ScimError(400, "The request body must be a JSON object", "invalidSyntax")
    doc: dict[str, Any] = {}
    for key, value in body.items():
        key = str(key)
        extension = rtype.schema_for(key) if key.lower().startswith("urn:") else None
        if extension is not None and extension is not rtype.schema:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise invalid_value(f"{extension.id} must be an object")
            for sub_key, sub_value in value.items():
                _set_from_body(rtype, doc, extension.id, str(sub_key), sub_value)
            continue
        if key.lower().startswith("urn:"):
            urn, _, name = key.rpartition(":")
            if rtype.schema_for(urn) is not None:
                _set_from_body(rtype, doc, urn if urn != rtype.schema.id else None, name, value)
            continue
        _set_from_body(rtype, doc, None, key, value)
    return doc


def _set_from_body(
    rtype: schema.ResourceType, doc: dict, urn: str | None, name: str, value: Any
) -> None:
    target = _lookup(rtype, doc, urn, name, create=True)
    if target is None or target.attr.mutability == "readOnly" or target.attr.name == "schemas":
        return
    if target.attr.name in ("id", "meta"):
        return
    value = _coerce_attribute(target.attr, value, target.attr.name)
    if not _empty(value):
        target.container[target.attr.name] = value
    if target.urn is not None and not target.container:
        doc.pop(target.urn, None)


# --- value filters evaluated in Python (PATCH paths) -------------------------------------------
def _item_value(item: dict[str, Any], name: str) -> Any:
    lowered = name.lower()
    for key, value in item.items():
        if key.lower() == lowered:
            return value
    return None


def value_matches(node: sf.Filter, item: Any, attr: schema.Attribute) -> bool:
    """Evaluate a bracketed filter (``emails[type eq "work"]``) against one value of the
    multi-valued attribute ``attr``, with the schema's case rules (RFC 7643 §2.1)."""
    if isinstance(node, sf.And):
        return value_matches(node.left, item, attr) and value_matches(node.right, item, attr)
    if isinstance(node, sf.Or):
        return value_matches(node.left, item, attr) or value_matches(node.right, item, attr)
    if isinstance(node, sf.Not):
        return not value_matches(node.inner, item, attr)
    if isinstance(node, sf.ValuePath):
        raise ScimError(400, "Filters in brackets cannot nest", "invalidPath")
    path = node.path
    sub = attr.sub(path.attr) if attr.sub_attributes else None
    if sub is None and attr.sub_attributes:
        raise ScimError(400, f"Unknown attribute {attr.name}.{path.attr}", "invalidPath")
    value = _item_value(item, path.attr) if isinstance(item, dict) else item
    if isinstance(node, sf.Present):
        return not _empty(value)
    wanted = node.value
    op = node.op
    if wanted is None:
        return _empty(value) if op == "eq" else not _empty(value)
    if value is None:
        return op == "ne"
    case_exact = sub.case_exact if sub is not None else attr.case_exact
    if isinstance(value, str) and isinstance(wanted, str):
        if not case_exact:
            value, wanted = value.lower(), wanted.lower()
    elif isinstance(wanted, bool) or isinstance(value, bool):
        if not (isinstance(wanted, bool) and isinstance(value, bool)):
            return op == "ne"
    elif type(value) is not type(wanted) and not (
        isinstance(value, int | float) and isinstance(wanted, int | float)
    ):
        return op == "ne"
    try:
        return _PY_OPS[op](value, wanted)
    except TypeError:
        return False


_PY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "co": lambda a, b: isinstance(a, str) and b in a,
    "sw": lambda a, b: isinstance(a, str) and a.startswith(b),
    "ew": lambda a, b: isinstance(a, str) and a.endswith(b),
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


def _equalities(node: sf.Filter) -> dict[str, Any] | None:
    """``type eq "work" and primary eq true`` as {"type": "work", "primary": True}; None for
    any other filter. Used to create the value an Entra ID ``add``/``replace`` addresses
    through a filter that matches nothing yet (``emails[type eq "work"].value``)."""
    if isinstance(node, sf.Compare) and node.op == "eq" and node.value is not None:
        return {node.path.attr: node.value}
    if isinstance(node, sf.And):
        left, right = _equalities(node.left), _equalities(node.right)
        if left is None or right is None:
            return None
        return {**left, **right}
    return None


# --- PATCH (RFC 7644 §3.5.2) -------------------------------------------------------------------
@dataclass
class _Operation:
    op: str
    path: sf.PatchPath | None
    value: Any
    raw_path: str | None


def parse_patch(body: Any) -> list[_Operation]:
    """A PatchOp request body as operations; 400 for anything malformed. Operation names are
    case-insensitive (Entra ID sends "Replace", "Add")."""
    if not isinstance(body, dict):
        raise ScimError(400, "The request body must be a JSON object", "invalidSyntax")
    schemas = body.get("schemas")
    if schemas is not None and (
        not isinstance(schemas, list) or schema.PATCH_OP not in [str(s) for s in schemas]
    ):
        raise ScimError(400, f"schemas must contain {schema.PATCH_OP}", "invalidSyntax")
    operations = _item_value(body, "Operations")
    if not isinstance(operations, list) or not operations:
        raise ScimError(400, "Operations must be a non-empty list", "invalidSyntax")
    if len(operations) > MAX_OPERATIONS:
        raise ScimError(400, f"At most {MAX_OPERATIONS} operations per request", "tooMany")
    parsed = []
    for raw in operations:
        if not isinstance(raw, dict):
            raise ScimError(400, "Each operation must be an object", "invalidSyntax")
        op = _item_value(raw, "op")
        if not isinstance(op, str) or op.strip().lower() not in ("add", "replace", "remove"):
            raise ScimError(400, "op must be add, replace or remove", "invalidSyntax")
        op = op.strip().lower()
        raw_path = _item_value(raw, "path")
        path = None
        if raw_path is not None and raw_path != "":
            if not isinstance(raw_path, str):
                raise ScimError(400, "path must be a string", "invalidPath")
            try:
                path = sf.parse_path(raw_path)
            except sf.PathError as exc:
                raise ScimError(400, str(exc), "invalidPath") from None
        has_value = any(str(k).lower() == "value" for k in raw)
        value = _item_value(raw, "value")
        if op != "remove" and not has_value:
            raise ScimError(400, f"The {op} operation needs a value", "invalidValue")
        if op == "remove" and path is None:
            raise ScimError(400, "The remove operation needs a path", "noTarget")
        parsed.append(_Operation(op, path, value, raw_path))
    return parsed


class Patcher:
    """Applies PATCH operations to a resource document (canonical names, see
    canonical_document). Multi-valued values are de-duplicated by hash, so adding a thousand
    group members costs a thousand dict look-ups, not a million comparisons."""

    def __init__(self, rtype: schema.ResourceType, doc: dict[str, Any]) -> None:
        self.rtype = rtype
        self.doc = doc
        self.touched: set[str] = set()

    def apply(self, operation: _Operation) -> None:
        if operation.path is None:
            self._without_path(operation)
            return
        path = operation.path
        attr_path = path.attr
        # "urn:...:enterprise:2.0:User" alone: the whole extension object.
        if attr_path.urn and not attr_path.sub_attr and path.value_filter is None:
            whole = self.rtype.schema_for(f"{attr_path.urn}:{attr_path.attr}")
            if whole is not None and whole is not self.rtype.schema:
                self._whole_extension(operation, whole)
                return
        urn = attr_path.urn
        if urn is not None and urn.lower() == self.rtype.schema.id.lower():
            urn = None
        target = _lookup(self.rtype, self.doc, urn, attr_path.attr, create=operation.op != "remove")
        if target is None:
            raise ScimError(400, f"Unknown attribute {operation.raw_path}", "invalidPath")
        sub_name = attr_path.sub_attr or path.sub_attr
        self._check_mutability(target, sub_name, operation)
        self.touched.add(target.attr.name if target.urn is None else target.urn)
        if path.value_filter is not None:
            self._filtered(operation, target, path.value_filter, sub_name)
        elif sub_name is not None:
            self._sub_attribute(operation, target, sub_name)
        else:
            self._attribute(operation, target)
        if target.urn is not None and not target.container:
            self.doc.pop(target.urn, None)

    # --- pieces -------------------------------------------------------------------------
    def _check_mutability(self, target: _Target, sub_name: str | None, op: _Operation) -> None:
        attr = target.attr
        if attr.name in ("id", "meta", "schemas") or attr.mutability == "readOnly":
            raise ScimError(400, f"{attr.name} is read-only", "mutability")
        if sub_name is not None:
            if attr.type != "complex":
                raise ScimError(400, f"{attr.name} has no sub-attributes", "invalidPath")
            sub = attr.sub(sub_name)
            if sub is None:
                raise ScimError(400, f"Unknown attribute {attr.name}.{sub_name}", "invalidPath")
            if sub.mutability == "readOnly":
                raise ScimError(400, f"{attr.name}.{sub.name} is read-only", "mutability")

    def _without_path(self, operation: _Operation) -> None:
        value = operation.value
        if not isinstance(value, dict):
            raise ScimError(400, "Without a path, value must be an object", "invalidValue")
        for key, item in value.items():
            key = str(key)
            lowered = key.lower()
            if lowered in ("schemas", "meta"):
                continue
            if lowered == "id":
                continue  # Okta repeats the id in path-less replaces: not a change
            extension = self.rtype.schema_for(key) if lowered.startswith("urn:") else None
            if extension is not None and extension is not self.rtype.schema:
                if not isinstance(item, dict):
                    raise invalid_value(f"{extension.id} must be an object")
                for sub_key, sub_value in item.items():
                    self._keyed(operation, f"{extension.id}:{sub_key}", sub_value)
                continue
            self._keyed(operation, key, item)

    def _keyed(self, operation: _Operation, key: str, item: Any) -> None:
        # Entra ID puts paths in path-less values ({"name.givenName": "x"}); so do we.
        try:
            path = sf.parse_path(key)
        except sf.PathError as exc:
            raise ScimError(400, str(exc), "invalidPath") from None
        target = _lookup(
            self.rtype, self.doc, _core_or(self.rtype, path.attr.urn), path.attr.attr, create=False
        )
        if target is not None and (
            target.attr.mutability == "readOnly" and path.value_filter is None
        ):
            return  # read-only attributes in a value are ignored, as in PUT
        self.apply(_Operation(operation.op, path, item, key))

    def _whole_extension(self, operation: _Operation, extension: schema.Schema) -> None:
        if operation.op == "remove":
            self.doc.pop(extension.id, None)
            self.touched.add(extension.id)
            return
        if not isinstance(operation.value, dict):
            raise invalid_value(f"{extension.id} must be an object")
        if operation.op == "replace":
            self.doc.pop(extension.id, None)
        for key, value in operation.value.items():
            if str(key).lower() in ("schemas", "id", "meta"):
                continue
            self._keyed(_Operation("add", None, value, None), f"{extension.id}:{key}", value)

    def _attribute(self, operation: _Operation, target: _Target) -> None:
        attr, container = target.attr, target.container
        name = attr.name
        if operation.op == "remove":
            if attr.multi_valued and operation.value not in (None, [], {}):
                # Entra ID: remove "members" with the values to remove as the value.
                removing = (
                    operation.value if isinstance(operation.value, list) else [operation.value]
                )
                keys = {_value_key(attr, v) for v in _coerce_attribute(attr, removing, name)}
                container[name] = [
                    v for v in container.get(name) or [] if _value_key(attr, v) not in keys
                ]
            else:
                container.pop(name, None)
            return
        value = _coerce_attribute(attr, operation.value, name)
        if attr.multi_valued:
            if operation.op == "replace":
                container[name] = _dedupe(attr, value)
            else:
                container[name] = _dedupe(attr, list(container.get(name) or []) + value)
            _one_primary(container.get(name) or [], prefer_last=True)
        elif attr.type == "complex":
            merged = dict(container.get(name) or {})
            merged.update(value or {})
            container[name] = merged
        else:
            container[name] = value
        if _empty(container.get(name)):
            container.pop(name, None)

    def _sub_attribute(self, operation: _Operation, target: _Target, sub_name: str) -> None:
        attr, container = target.attr, target.container
        sub = attr.sub(sub_name)
        assert sub is not None  # checked by _check_mutability
        if attr.multi_valued:
            # "emails.value" without a filter addresses every value (RFC 7644 §3.5.2).
            items = container.get(attr.name) or []
            for item in items:
                if operation.op == "remove":
                    item.pop(sub.name, None)
                else:
                    item[sub.name] = _coerce(sub, operation.value, f"{attr.name}.{sub.name}")
            container[attr.name] = [item for item in items if item]
            return
        current = dict(container.get(attr.name) or {})
        if operation.op == "remove":
            current.pop(sub.name, None)
        else:
            value = _coerce(sub, operation.value, f"{attr.name}.{sub.name}")
            if value is None:
                current.pop(sub.name, None)
            else:
                current[sub.name] = value
        if current:
            container[attr.name] = current
        else:
            container.pop(attr.name, None)

    def _filtered(
        self, operation: _Operation, target: _Target, value_filter: sf.Filter, sub_name: str | None
    ) -> None:
        attr, container = target.attr, target.container
        if not attr.multi_valued:
            raise ScimError(400, f"{attr.name} is not multi-valued", "invalidPath")
        items = list(container.get(attr.name) or [])
        matched = [i for i, item in enumerate(items) if value_matches(value_filter, item, attr)]
        where = f"{attr.name}.{sub_name}" if sub_name else attr.name
        if operation.op == "remove":
            if sub_name is None:
                items = [item for i, item in enumerate(items) if i not in set(matched)]
            else:
                sub = attr.sub(sub_name)
                for i in matched:
                    items[i].pop(sub.name, None)  # type: ignore[union-attr]
                items = [item for item in items if item]
        elif not matched:
            # Entra ID adds (and replaces) a work email as emails[type eq "work"].value before
            # any exists: create the value the filter describes, when it is plain equalities.
            seed = _equalities(value_filter)
            if seed is None:
                raise ScimError(400, f"No value of {attr.name} matches the filter", "noTarget")
            item = _coerce(attr, seed, attr.name)
            if sub_name is not None:
                sub = attr.sub(sub_name)
                item[sub.name] = _coerce(sub, operation.value, where)  # type: ignore[union-attr]
            else:
                item.update(_coerce(attr, operation.value, where) or {})
            items.append(item)
        else:
            for i in matched:
                if sub_name is not None:
                    sub = attr.sub(sub_name)
                    items[i][sub.name] = _coerce(sub, operation.value, where)  # type: ignore[union-attr]
                elif operation.op == "replace":
                    items[i] = _coerce(attr, operation.value, where)
                else:
                    items[i] = {**items[i], **(_coerce(attr, operation.value, where) or {})}
        items = [_strip_empty(item) if isinstance(item, dict) else item for item in items]
        container[attr.name] = _dedupe(attr, [item for item in items if not _empty(item)])
        if not container[attr.name]:
            container.pop(attr.name, None)


def _core_or(rtype: schema.ResourceType, urn: str | None) -> str | None:
    if urn is not None and urn.lower() == rtype.schema.id.lower():
        return None
    return urn


def _value_key(attr: schema.Attribute, value: Any) -> str:
    if attr.name == "members" and isinstance(value, dict):
        return str(value.get("value", "")).lower()
    return json.dumps(value, sort_keys=True)


def _dedupe(attr: schema.Attribute, values: list[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(_value_key(attr, value), value)
    return list(seen.values())


def _one_primary(values: list[Any], *, prefer_last: bool) -> None:
    """RFC 7643 §2.4: at most one value is primary; the one just added wins."""
    primaries = [v for v in values if isinstance(v, dict) and v.get("primary") is True]
    if len(primaries) <= 1:
        return
    keep = primaries[-1] if prefer_last else primaries[0]
    for value in primaries:
        if value is not keep:
            value["primary"] = False


# --- SQL helpers ---------------------------------------------------------------------------
def _dialect() -> str:
    return db.session.get_bind().dialect.name


def _json_text(column: Any, *keys: str) -> ColumnElement[Any]:
    """The text at ``keys`` inside a JSON column, on SQLite and PostgreSQL."""
    if _dialect() == "postgresql":
        return func.json_extract_path_text(column, *keys)
    path = "$" + "".join(f'."{key}"' for key in keys)
    return func.json_extract(column, path)


def _json_elements(column: Any, key: str):
    """A table of the elements of the JSON array ``column[key]`` (one column, ``value``)."""
    if _dialect() == "postgresql":
        return func.json_array_elements(func.json_extract_path(column, key)).table_valued("value")
    return func.json_each(column, f'$."{key}"').table_valued("value")


def _element_field(element: Any, name: str, kind: str) -> ColumnElement[Any]:
    if _dialect() == "postgresql":
        text = func.json_extract_path_text(element.c.value, name)
        return cast(text, Boolean) if kind == "boolean" else text
    value = func.json_extract(element.c.value, f'$."{name}"')
    return type_coerce(value, Boolean) if kind == "boolean" else type_coerce(value, String)


def _json_multi(column: Any, attr: schema.Attribute) -> sf.MultiValued:
    element = _json_elements(column, attr.name).alias(f"{attr.name.lower()}_values")
    subs = {
        sub.name.lower(): sf.Column(
            _element_field(element, sub.name, sub.type),
            "boolean" if sub.type == "boolean" else "string",
            case_exact=sub.case_exact,
        )
        for sub in attr.sub_attributes
    }
    return sf.MultiValued(
        exists=lambda clause: exists(select(literal(1)).select_from(element).where(clause)),
        sub_attributes=subs,
    )


_FILTER_TYPES = {"string", "boolean", "reference", "binary", "dateTime", "integer", "decimal"}


def _user_attributes(account_id_param: Any) -> dict[str, Any]:
    """The AttributeMap of User for filters and sortBy (see services.scim_filter)."""
    core = schema.USER_SCHEMA.lower()
    ext = schema.ENTERPRISE_SCHEMA.lower()
    attrs: dict[str, Any] = {
        "id": sf.Column(User.id, "string", case_exact=True),
        "externalid": sf.Column(User.external_id, "string", case_exact=True),
        # userName filters compare the lower-cased key (see _lower_user_name).
        "username": sf.Column(User.user_name_key, "string", case_exact=True),
        "name.givenname": sf.Column(User.given_name, "string"),
        "name.familyname": sf.Column(User.family_name, "string"),
        "active": sf.Column(and_(User.active, Membership.active), "boolean"),
        "meta.created": sf.Column(User.created_at, "dateTime"),
        "meta.lastmodified": sf.Column(User.updated_at, "dateTime"),
        "meta.resourcetype": sf.Constant("User", "string"),
    }
    for attr in schema.USER.attributes:
        key = attr.name.lower()
        if key in attrs or attr.name in ("password", "groups"):
            continue
        if attr.multi_valued:
            attrs[key] = _json_multi(User.scim_attributes, attr)
        elif attr.type == "complex":
            for sub in attr.sub_attributes:
                name = f"{key}.{sub.name.lower()}"
                if name not in attrs:
                    attrs[name] = sf.Column(
                        _json_text(User.scim_attributes, attr.name, sub.name), "string"
                    )
        elif attr.type in _FILTER_TYPES:
            attrs[key] = sf.Column(_json_text(User.scim_attributes, attr.name), "string")
    for attr in schema.ENTERPRISE_USER.attributes:
        if attr.type == "complex":
            for sub in attr.sub_attributes:
                attrs[f"{ext}:{attr.name.lower()}.{sub.name.lower()}"] = sf.Column(
                    _json_text(User.scim_attributes, schema.ENTERPRISE_SCHEMA, attr.name, sub.name),
                    "string",
                )
        else:
            attrs[f"{ext}:{attr.name.lower()}"] = sf.Column(
                _json_text(User.scim_attributes, schema.ENTERPRISE_SCHEMA, attr.name), "string"
            )
    groups = (
        select(Group.id, Group.display_name, GroupMember.user_id)
        .join(GroupMember, GroupMember.group_id == Group.id)
        .where(Group.account_id == account_id_param)
        .subquery("user_groups")
    )
    attrs["groups"] = sf.MultiValued(
        exists=lambda clause: exists(
            select(literal(1)).select_from(groups).where(groups.c.user_id == User.id, clause)
        ),
        sub_attributes={
            "value": sf.Column(groups.c.id, "string", case_exact=True),
            "display": sf.Column(groups.c.display_name, "string"),
            "type": sf.Constant("direct", "string"),
        },
    )
    del core
    return attrs


def _group_attributes() -> dict[str, Any]:
    members = GroupMember.__table__.alias("filter_members")
    return {
        "id": sf.Column(Group.id, "string", case_exact=True),
        "externalid": sf.Column(Group.external_id, "string", case_exact=True),
        "displayname": sf.Column(Group.display_name, "string"),
        "meta.created": sf.Column(Group.created_at, "dateTime"),
        "meta.lastmodified": sf.Column(Group.updated_at, "dateTime"),
        "meta.resourcetype": sf.Constant("Group", "string"),
        "members": sf.MultiValued(
            exists=lambda clause: exists(
                select(literal(1))
                .select_from(members)
                .where(members.c.group_id == Group.id, clause)
            ),
            sub_attributes={
                "value": sf.Column(members.c.user_id, "string", case_exact=True),
                "type": sf.Constant("User", "string", case_exact=True),
            },
        ),
    }


def _lower_user_name(node: sf.Filter, rtype: schema.ResourceType) -> sf.Filter:
    """userName is case-insensitive (RFC 7643 §4.1.1) and stored lower-cased in the indexed
    ``user_name_key``: compare that with the lower-cased value, which the index serves
    (``lower(column)`` would not). Entra ID looks every user up this way before writing."""
    if isinstance(node, sf.And | sf.Or):
        return type(node)(_lower_user_name(node.left, rtype), _lower_user_name(node.right, rtype))
    if isinstance(node, sf.Not):
        return sf.Not(_lower_user_name(node.inner, rtype))
    if (
        isinstance(node, sf.Compare)
        and isinstance(node.value, str)
        and node.path.attr.lower() == "username"
        and node.path.sub_attr is None
        and _core_or(rtype, node.path.urn) is None
    ):
        return sf.Compare(node.path, node.op, node.value.lower())
    return node


def _fast_user_filter(text: str) -> tuple[Any, str] | None:
    """``userName eq "x"`` and ``externalId eq "x"``, the look-ups Entra ID and Okta send
    before every write, straight to their indexed columns: the prebuilt statement and its
    value (the clause to_sql would build, without building the attribute map and the
    statement on every request)."""
    try:
        parsed = sf.parse_filter(text)
    except sf.FilterError as exc:
        raise ScimError(400, str(exc), "invalidFilter") from None
    if not (
        isinstance(parsed, sf.Compare)
        and parsed.op == "eq"
        and isinstance(parsed.value, str)
        and parsed.path.sub_attr is None
        and _core_or(schema.USER_TYPE, parsed.path.urn) is None
    ):
        return None
    name = parsed.path.attr.lower()
    if name == "username":
        return _USERS_BY_NAME_KEY, parsed.value.lower()
    if name == "externalid":
        return _USERS_BY_EXTERNAL_ID, parsed.value
    return None


def _filter_clause(
    rtype: schema.ResourceType, text: str, attributes: dict[str, Any]
) -> ColumnElement[bool]:
    try:
        parsed = sf.parse_filter(text)
        if rtype is schema.USER_TYPE:
            parsed = _lower_user_name(parsed, rtype)
        return sf.to_sql(parsed, attributes, default_urn=rtype.schema.id)
    except sf.FilterError as exc:
        raise ScimError(400, str(exc), "invalidFilter") from None


def _sort_column(
    rtype: schema.ResourceType, sort_by: str, attributes: dict[str, Any]
) -> ColumnElement[Any]:
    try:
        path = sf.parse_attr_path(sort_by)
    except sf.FilterError as exc:
        raise invalid_value(f"sortBy: {exc}") from None
    urn = _core_or(rtype, path.urn)
    name = path.attr.lower() + (f".{path.sub_attr.lower()}" if path.sub_attr else "")
    key = f"{urn.lower()}:{name}" if urn else name
    found = attributes.get(key)
    if isinstance(found, sf.Column):
        return found.expression
    if isinstance(found, sf.Constant):
        return literal(found.value)
    raise invalid_value(f"sortBy: cannot sort by {sort_by}")


# --- rows: the statements SCIM runs, built once -------------------------------------------------
# An IdP syncing a tenant sends hundreds of requests a second, each a handful of statements. As
# on the sign-in path (bench/RESULTS.md, password_login), building a SQLAlchemy statement and
# its cache key costs several times more than running it, and so do ORM objects (identity map,
# unit-of-work flush). So SCIM reads and writes rows with Core statements built here, once, run
# on the session's connection (in its transaction and SAVEPOINTs), and holds users, their
# membership and groups as plain rows (UserRow, MembershipRow, GroupRow).
_users = User.__table__
_memberships = Membership.__table__
_groups = Group.__table__
_group_members = GroupMember.__table__
_USER_KEYS: tuple[str, ...] = tuple(column.key for column in _users.columns)
_GROUP_KEYS: tuple[str, ...] = tuple(column.key for column in _groups.columns)


class _Row:
    """One table row as plain attributes. ``changes()`` is what an UPDATE must write: the
    columns whose values differ from those loaded (or last written), as the ORM's flush
    compares them."""

    _keys: tuple[str, ...] = ()

    def __init__(self, values: dict[str, Any], *, loaded: bool = True) -> None:
        self.__dict__.update(values)
        # None: a new row, not in the database yet.
        self._loaded: dict[str, Any] | None = dict(values) if loaded else None

    @property
    def is_new(self) -> bool:
        return self._loaded is None

    def changes(self) -> dict[str, Any]:
        loaded = self._loaded or {}
        values = self.__dict__
        return {key: values[key] for key in self._keys if values[key] != loaded.get(key)}

    def written(self, values: dict[str, Any] | None = None) -> None:
        """The database now holds these values (all of them when None)."""
        if values is None or self._loaded is None:
            self._loaded = {key: self.__dict__[key] for key in self._keys}
        else:
            self._loaded.update(values)


class UserRow(_Row):
    """A users row (the columns of app.models.User), with the account's membership it was
    loaded with and, when read in the same statement, the account's groups it is in."""

    _keys = _USER_KEYS

    def __init__(self, values: dict[str, Any], *, loaded: bool = True) -> None:
        super().__init__(values, loaded=loaded)
        self.membership: MembershipRow | None = None
        # [(group id, displayName)] when loaded with the user, else None.
        self.groups: list[tuple[uuid.UUID, str]] | None = None
        # Uniqueness checks already answered in this request, for this user's id:
        # ("email", address) -> taken by another user, ("externalId", value) -> used by
        # another member of the account.
        self.checked: dict[tuple[str, str], bool] = {}

    @property
    def scim_user_name(self) -> str:
        """The SCIM userName: as provisioned, or the email of a user created here."""
        return self.user_name or self.email

    def flush(self, *, end_sessions: dict[str, Any] | None = None) -> int:
        """Write the user's changes, then its membership's; with ``end_sessions`` (the
        parameters of users.REVOKE_SESSIONS), end the user's sessions after them and return
        how many. services.users calls this where the ORM would autoflush: before ending
        the sessions of a user it deactivates."""
        if end_sessions is None:
            _save_user(self)
            return 0
        if _on_postgresql() and _deactivation_shape(self):
            return _deactivate_pg(self, end_sessions)
        _save_user(self)
        result = _connection().execute(users_service.REVOKE_SESSIONS, end_sessions)
        return result.rowcount or 0


class MembershipRow(_Row):
    """The memberships row of one user in one account (SCIM reads and writes ``active``)."""

    _keys = ("active",)


class GroupRow(_Row):
    """A groups row (the columns of app.models.Group)."""

    _keys = _GROUP_KEYS


def _connection():
    return db.session.connection()


def _on_postgresql() -> bool:
    return _connection().dialect.name == "postgresql"


_MEMBER_OF = and_(
    _memberships.c.user_id == _users.c.id,
    _memberships.c.account_id == bindparam("account_id"),
)
_USER_COLUMNS = (
    *(_users.c[key] for key in _USER_KEYS),
    _memberships.c.id.label("membership_id"),
    _memberships.c.active.label("membership_active"),
)
# (user, membership) of the account's members: what its SCIM may see.
_VISIBLE_USERS = select(*_USER_COLUMNS).select_from(_users.join(_memberships, _MEMBER_OF))
_USER_BY_ID = _VISIBLE_USERS.where(_users.c.id == bindparam("user_id"))
# The same, with the account's groups the user is in (one row per group, ordered by name).
_USER_BY_ID_WITH_GROUPS = (
    select(*_USER_COLUMNS, _groups.c.id.label("group_id"), _groups.c.display_name)
    .select_from(
        _users.join(_memberships, _MEMBER_OF).outerjoin(
            _group_members.join(
                _groups,
                and_(
                    _groups.c.id == _group_members.c.group_id,
                    _groups.c.account_id == bindparam("account_id"),
                ),
            ),
            _group_members.c.user_id == _users.c.id,
        )
    )
    .where(_users.c.id == bindparam("user_id"))
    .order_by(_groups.c.display_name)
)
# Entra ID's and Okta's look-ups before every write (userName eq, externalId eq).
_LIST_ORDER = (_users.c.created_at, _users.c.id)
_USERS_BY_NAME_KEY = (
    _VISIBLE_USERS.where(_users.c.user_name_key == bindparam("value"))
    .order_by(*_LIST_ORDER)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
_USERS_BY_EXTERNAL_ID = (
    _VISIBLE_USERS.where(_users.c.external_id == bindparam("value"))
    .order_by(*_LIST_ORDER)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
_GROUPS_OF = (
    select(_group_members.c.user_id, _groups.c.id, _groups.c.display_name)
    .join(_groups, _groups.c.id == _group_members.c.group_id)
    .where(
        _groups.c.account_id == bindparam("account_id"),
        _group_members.c.user_id.in_(bindparam("user_ids", expanding=True)),
    )
    .order_by(_groups.c.display_name)
)
# Any user holding a userName (in any account), and whether they are a member of any.
_USER_BY_NAME_KEY = select(
    *(_users.c[key] for key in _USER_KEYS),
    exists().where(_memberships.c.user_id == _users.c.id).correlate(_users).label("has_membership"),
).where(_users.c.user_name_key == bindparam("key"))
_CREATE_CHECKS = select(
    exists().where(_users.c.user_name_key == bindparam("key")).label("name_taken"),
    exists()
    .where(
        _memberships.c.user_id == _users.c.id,
        _memberships.c.account_id == bindparam("account_id"),
        _users.c.external_id == bindparam("external_id"),
    )
    .label("external_id_used"),
    exists().where(_users.c.email == bindparam("email")).label("email_taken"),
)
_NAME_KEY_TAKEN = (
    select(_users.c.id)
    .where(_users.c.user_name_key == bindparam("key"), _users.c.id != bindparam("user_id"))
    .limit(1)
)
_EMAIL_TAKEN = (
    select(_users.c.id)
    .where(_users.c.email == bindparam("email"), _users.c.id != bindparam("user_id"))
    .limit(1)
)
_EXTERNAL_ID_CLASH = (
    select(_users.c.id)
    .join(_memberships, _memberships.c.user_id == _users.c.id)
    .where(
        _memberships.c.account_id == bindparam("account_id"),
        _users.c.external_id == bindparam("external_id"),
        _users.c.id != bindparam("user_id"),
    )
    .limit(1)
)
_INSERT_USER = insert(_users)
# No values(): each execution sets the columns its parameters name (compiled once per set).
_UPDATE_USER = update(_users).where(_users.c.id == bindparam("_id"))
_INSERT_MEMBERSHIP = insert(_memberships)
_UPDATE_MEMBERSHIP = (
    update(_memberships)
    .where(
        _memberships.c.user_id == bindparam("_user_id"),
        _memberships.c.account_id == bindparam("_account_id"),
    )
    .values(active=bindparam("_active"))
)


def _user_from(row: Any, account_id: int) -> UserRow:
    """A UserRow (with its MembershipRow) from a row of _USER_COLUMNS."""
    count = len(_USER_KEYS)
    user = UserRow(dict(zip(_USER_KEYS, row[:count], strict=True)))
    user.membership = MembershipRow(
        {"id": row[count], "active": row[count + 1], "user_id": user.id, "account_id": account_id}
    )
    return user


def _save_user(user: UserRow) -> None:
    """Write what changed of the user, then of its membership (INSERT for new rows)."""
    connection = _connection()
    if user.is_new:
        connection.execute(_INSERT_USER, {key: user.__dict__[key] for key in _USER_KEYS})
        user.written()
    else:
        changes = user.changes()
        if changes:
            if "updated_at" not in changes:
                # The column's onupdate, as the ORM applies it (and keeps it on the object).
                changes["updated_at"] = user.updated_at = utcnow()
            connection.execute(_UPDATE_USER, {**changes, "_id": user.id})
            user.written(changes)
    membership = user.membership
    if membership is None:
        return
    if membership.is_new:
        connection.execute(
            _INSERT_MEMBERSHIP,
            {
                "user_id": user.id,
                "account_id": membership.account_id,
                "role": membership.role,
                "active": membership.active,
                "created_at": membership.created_at,
            },
        )
        membership.written()
    elif membership.changes():
        connection.execute(
            _UPDATE_MEMBERSHIP,
            {
                "_user_id": user.id,
                "_account_id": membership.account_id,
                "_active": membership.active,
            },
        )
        membership.written()


# --- PostgreSQL: the writes of one change in one statement -----------------------------------
# Every statement is a round trip to the database server, and on PostgreSQL (over TCP) a round
# trip costs more CPU than anything else a SCIM request does: the driver, the kernel on both
# sides, and the server's own work per statement (bench/RESULTS.md, scim). The writes of a
# create, of a membership change and of a deactivation need nothing back from each other, so
# on PostgreSQL each such set goes as one statement of data-modifying WITH queries. SQLite has
# none; there they stay separate statements, which cost little in-process. Same rows, same
# values either way.
_audit = audit.TABLE
_AUDIT_KEYS = tuple(column.key for column in _audit.columns if column.key != "id")
_MEMBERSHIP_INSERT_KEYS = ("user_id", "account_id", "role", "active", "created_at")
_UUIDS = ARRAY(Uuid())


def _bound(table: Any, keys: Iterable[str], prefix: str) -> dict[Any, Any]:
    """VALUES of ``keys``, each a parameter named ``prefix + key`` of the column's type."""
    return {table.c[key]: bindparam(prefix + key, type_=table.c[key].type) for key in keys}


def _prefixed(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {prefix + key: value for key, value in values.items()}


# A new user: the users row, its membership and the audit event.
_CREATE_USER_PG = (
    insert(_audit)
    .values(_bound(_audit, _AUDIT_KEYS, "a_"))
    .add_cte(insert(_users).values(_bound(_users, _USER_KEYS, "u_")).cte("new_user"))
    .add_cte(
        insert(_memberships)
        .values(_bound(_memberships, _MEMBERSHIP_INSERT_KEYS, "m_"))
        .cte("new_membership")
    )
)
# Members added to and removed from a group: the group_members rows, the ETags of the users
# whose groups changed, the audit event, and the group's own version.
_CHANGE_MEMBERS_PG = (
    update(_groups)
    .where(_groups.c.id == bindparam("g_id"))
    .values(version=bindparam("g_version"), updated_at=bindparam("g_updated_at"))
    .add_cte(
        insert(_group_members)
        .from_select(
            ["group_id", "user_id", "created_at"],
            select(
                cast(bindparam("g_id"), Uuid()),
                func.unnest(cast(bindparam("added"), _UUIDS)),
                bindparam("added_at", type_=_group_members.c.created_at.type),
            ),
        )
        .cte("added_members")
    )
    .add_cte(
        delete(_group_members)
        .where(
            _group_members.c.group_id == bindparam("g_id"),
            _group_members.c.user_id == any_(cast(bindparam("removed"), _UUIDS)),
        )
        .cte("removed_members")
    )
    .add_cte(
        update(_users)
        .where(_users.c.id == any_(cast(bindparam("changed"), _UUIDS)))
        .values(version=_users.c.version + 1, updated_at=bindparam("added_at"))
        .cte("bumped_users")
    )
    .add_cte(insert(_audit).values(_bound(_audit, _AUDIT_KEYS, "a_")).cte("member_event"))
)
# A managed user deactivated: the user (active, version, updated_at), the membership's active,
# and every live session ended; returns how many. The users row is updated first (the main
# statement) and the sessions after it, the order every other deactivation takes.
_ENDED_SESSIONS = users_service.REVOKE_SESSIONS.returning(literal_column("1")).cte("ended_sessions")
_DEACTIVATE_PG = (
    update(_users)
    .where(_users.c.id == bindparam("_id"))
    .values(
        active=bindparam("u_active"),
        version=bindparam("u_version"),
        updated_at=bindparam("u_updated_at"),
    )
    .returning(select(func.count()).select_from(_ENDED_SESSIONS).scalar_subquery())
    .add_cte(_UPDATE_MEMBERSHIP.cte("deactivated_membership"))
)
_DEACTIVATION_COLUMNS = frozenset({"active", "version", "updated_at"})


def _deactivation_shape(user: UserRow) -> bool:
    """The changes _DEACTIVATE_PG writes: exactly those of the user and its membership."""
    membership = user.membership
    return (
        user.changes().keys() == _DEACTIVATION_COLUMNS
        and membership is not None
        and not membership.is_new
        and bool(membership.changes())
    )


def _deactivate_pg(user: UserRow, end_sessions: dict[str, Any]) -> int:
    membership = user.membership
    assert membership is not None
    ended = (
        _connection()
        .execute(
            _DEACTIVATE_PG,
            {
                "_id": user.id,
                "u_active": user.active,
                "u_version": user.version,
                "u_updated_at": user.updated_at,
                "_user_id": user.id,
                "_account_id": membership.account_id,
                "_active": membership.active,
                **end_sessions,
            },
        )
        .scalar()
    )
    user.written()
    membership.written()
    return ended or 0


def _create_user_pg(user: UserRow, event: dict[str, Any]) -> None:
    membership = user.membership
    assert membership is not None
    _connection().execute(
        _CREATE_USER_PG,
        {
            **_prefixed({key: user.__dict__[key] for key in _USER_KEYS}, "u_"),
            **_prefixed({key: membership.__dict__[key] for key in _MEMBERSHIP_INSERT_KEYS}, "m_"),
            **_prefixed(event, "a_"),
        },
    )
    user.written()
    membership.written()


# --- Users -----------------------------------------------------------------------------------
def _parse_id(resource_id: str, kind: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(resource_id))
    except ValueError:
        raise not_found(kind, resource_id) from None


def load_user(
    caller: Caller, resource_id: str, *, with_groups: bool = True
) -> tuple[UserRow, MembershipRow]:
    """The user ``resource_id`` as the caller's account sees it; 404 otherwise. With
    ``with_groups``, the account's groups the user is in come in the same statement
    (``user.groups``; a user's own writes never change them)."""
    key = _parse_id(resource_id, "User")
    params = {"account_id": caller.account_id, "user_id": key}
    if not with_groups:
        row = _connection().execute(_USER_BY_ID, params).first()
        if row is None:
            raise not_found("User", resource_id)
        user = _user_from(row, caller.account_id)
        return user, user.membership  # type: ignore[return-value]
    rows = _connection().execute(_USER_BY_ID_WITH_GROUPS, params).all()
    if not rows:
        raise not_found("User", resource_id)
    user = _user_from(rows[0], caller.account_id)
    user.groups = [(row.group_id, row.display_name) for row in rows if row.group_id is not None]
    return user, user.membership  # type: ignore[return-value]


def _groups_of(account_id: int, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[tuple]]:
    if not user_ids:
        return {}
    found: dict[uuid.UUID, list[tuple]] = {}
    for start in range(0, len(user_ids), 500):
        rows = _connection().execute(
            _GROUPS_OF, {"account_id": account_id, "user_ids": user_ids[start : start + 500]}
        )
        for user_id, group_id, display_name in rows:
            found.setdefault(user_id, []).append((group_id, display_name))
    return found


def user_document(user: UserRow, membership: MembershipRow) -> dict[str, Any]:
    """The user's writable attributes as a document (canonical names, no id/meta/groups)."""
    doc: dict[str, Any] = copy.deepcopy(user.scim_attributes or {})
    doc["userName"] = user.scim_user_name
    name = dict(doc.get("name") or {})
    if user.given_name:
        name["givenName"] = user.given_name
    if user.family_name:
        name["familyName"] = user.family_name
    if name:
        doc["name"] = name
    if user.external_id:
        doc["externalId"] = user.external_id
    unassigned = doc.pop(ACTIVE_UNASSIGNED, False)
    active = bool(user.active and membership.active)
    if not (active and unassigned):
        doc["active"] = active
    if "emails" not in doc and user.user_name is None:
        # A user created here: their one address is the userName and the primary email.
        doc["emails"] = [{"value": user.email, "primary": True}]
    return doc


def user_resource(
    caller: Caller,
    user: UserRow,
    membership: MembershipRow,
    *,
    groups: list[tuple] | None = None,
    projection: Projection | None = None,
) -> dict[str, Any]:
    """The User resource (RFC 7643 §4.1) as the caller's account sees it. ``groups``: the
    account's groups the user is in, when known (else those loaded with the user, else they
    are read)."""
    projection = projection or Projection()
    doc = _strip_empty(user_document(user, membership))
    resource: dict[str, Any] = {"schemas": [schema.USER_SCHEMA], "id": str(user.id)}
    if schema.ENTERPRISE_SCHEMA in doc:
        resource["schemas"].append(schema.ENTERPRISE_SCHEMA)
    # Schema order, as the RFC's examples: userName first, the extension last.
    for attr in schema.USER.attributes:
        if attr.name in doc:
            resource[attr.name] = doc[attr.name]
        if attr.name == "userName" and "externalId" in doc:
            resource["externalId"] = doc["externalId"]
    if schema.ENTERPRISE_SCHEMA in doc:
        resource[schema.ENTERPRISE_SCHEMA] = doc[schema.ENTERPRISE_SCHEMA]
    if projection.wants("groups"):
        if groups is None:
            groups = user.groups
        if groups is None:
            groups = _groups_of(caller.account_id, [user.id]).get(user.id, [])
        if groups:
            resource["groups"] = [
                {
                    "value": str(group_id),
                    "$ref": caller.location("Groups", group_id),
                    "display": display_name,
                    "type": "direct",
                }
                for group_id, display_name in groups
            ]
    resource["meta"] = {
        "resourceType": "User",
        "created": _timestamp(user.created_at),
        "lastModified": _timestamp(user.updated_at or user.created_at),
        "location": caller.location("Users", user.id),
        "version": etag(user.version or 1),
    }
    return projection.apply(schema.USER_TYPE, resource)


def _timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def list_users(caller: Caller, query: ListQuery, limits: Limits) -> dict[str, Any]:
    """A ListResponse of the account's users matching the filter (RFC 7644 §3.4.2)."""
    projection = Projection.of(schema.USER_TYPE, query)
    params: dict[str, Any] = {"account_id": caller.account_id}
    fast = _fast_user_filter(query.filter) if query.filter and not query.sort_by else None
    if fast is not None:
        # Prebuilt: the look-up IdPs send before every write.
        base = fast[0]
        params["value"] = fast[1]
        page = base
    else:
        base = _VISIBLE_USERS
        attributes = _user_attributes(literal(caller.account_id))
        if query.filter:
            base = base.where(_filter_clause(schema.USER_TYPE, query.filter, attributes))
        order = list(_LIST_ORDER)
        if query.sort_by:
            column = _sort_column(schema.USER_TYPE, query.sort_by, attributes)
            order = [
                column.desc() if query.sort_order == "descending" else column.asc(),
                _users.c.id,
            ]
        page = base.order_by(*order).limit(bindparam("limit")).offset(bindparam("offset"))

    def render(rows: list) -> list[dict[str, Any]]:
        found = [_user_from(row, caller.account_id) for row in rows]
        groups = (
            _groups_of(caller.account_id, [user.id for user in found])
            if projection.wants("groups")
            else {}
        )
        return [
            user_resource(
                caller,
                user,
                user.membership,  # type: ignore[arg-type]
                groups=groups.get(user.id, []),
                projection=projection,
            )
            for user in found
        ]

    return _list_response(base, page, params, query, limits, render)


def _list_response(base, page, params, query: ListQuery, limits: Limits, render) -> dict[str, Any]:
    """``page``: ``base`` ordered, with bound ``limit`` and ``offset``."""
    count = limits.max_results if query.count is None else min(query.count, limits.max_results)
    rows = []
    connection = _connection()
    if count > 0:
        rows = connection.execute(
            page, {**params, "limit": count, "offset": query.start_index - 1}
        ).all()
    if query.start_index == 1 and len(rows) < count:
        # The whole result is on this page (Entra's look-ups: zero or one user): no COUNT.
        total = len(rows)
    else:
        counting = base.with_only_columns(func.count()).order_by(None).limit(None).offset(None)
        total = connection.execute(counting, params).scalar()
    resources = render(rows)
    return {
        "schemas": [schema.LIST_RESPONSE],
        "totalResults": total or 0,
        "startIndex": query.start_index,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


@dataclass
class _UserChanges:
    """What applying a document changed (for the audit event and the version)."""

    attributes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    activated: bool | None = None


def _email_candidates(doc: dict[str, Any]) -> Iterator[str]:
    """The addresses User.email may be, best first, normalised, each once."""
    emails = [e for e in doc.get("emails") or [] if isinstance(e, dict) and e.get("value")]
    ordered = (
        [e for e in emails if e.get("primary") is True]
        + [e for e in emails if str(e.get("type", "")).lower() == "work"]
        + emails
    )
    # Each spelling once (the same address is often the primary, the work one and the
    # userName): normalising it is the expensive part.
    candidates = dict.fromkeys(str(e["value"]) for e in ordered)
    candidates[str(doc.get("userName") or "")] = None
    seen = set()
    for candidate in candidates:
        try:
            address = users_service.normalise_email(candidate)
        except ValidationError:
            continue
        if address not in seen:
            seen.add(address)
            yield address


def _derived_email(user: UserRow, doc: dict[str, Any]) -> str:
    """User.email from the SCIM values: the primary email, else a work email, else the first,
    else the userName when it is an address; one that belongs to another user is skipped
    (sign-in links by verified email, so an IdP must not claim someone else's address), and
    with none left the user gets a placeholder address that can never be a real one."""
    for address in _email_candidates(doc):
        if address == user.email:
            return address
        taken = user.checked.get(("email", address))
        if taken is None:
            taken = (
                _connection().execute(_EMAIL_TAKEN, {"email": address, "user_id": user.id}).first()
                is not None
            )
        if not taken:
            return address
    if user.email and user.email.endswith("@" + PLACEHOLDER_EMAIL_DOMAIN):
        return user.email
    return f"{user.id.hex}@{PLACEHOLDER_EMAIL_DOMAIN}"


def _check_user_name(caller: Caller, user: UserRow, user_name: Any) -> tuple[str, str]:
    if not isinstance(user_name, str) or not user_name.strip():
        raise invalid_value("userName is required")
    user_name = user_name.strip()
    if len(user_name) > MAX_USER_NAME_LENGTH:
        raise invalid_value(f"userName must be at most {MAX_USER_NAME_LENGTH} characters")
    key = user_name.lower()
    if key != user.user_name_key:
        taken = _connection().execute(_NAME_KEY_TAKEN, {"key": key, "user_id": user.id}).first()
        if taken is not None:
            # Whoever holds it, in this account or not: the answer says nothing more.
            raise ScimError(409, "userName is already taken", "uniqueness")
    return user_name, key


def _check_external_id(caller: Caller, user: UserRow, external_id: Any) -> str | None:
    if external_id is None:
        return None
    if len(external_id) > MAX_EXTERNAL_ID_LENGTH:
        raise invalid_value(f"externalId must be at most {MAX_EXTERNAL_ID_LENGTH} characters")
    if external_id != user.external_id:
        # Sign-in matches members by externalId (DESIGN sign-in rule 1): two members of one
        # account sharing one could sign one in as the other.
        clash = user.checked.get(("externalId", external_id))
        if clash is None:
            clash = (
                _connection()
                .execute(
                    _EXTERNAL_ID_CLASH,
                    {
                        "account_id": caller.account_id,
                        "external_id": external_id,
                        "user_id": user.id,
                    },
                )
                .first()
                is not None
            )
        if clash:
            raise ScimError(409, "externalId is already used in this account", "uniqueness")
    return external_id


def _short(value: Any, limit: int, name: str) -> str | None:
    if value is None:
        return None
    if len(value) > limit:
        raise invalid_value(f"{name} must be at most {limit} characters")
    return value


_COLUMN_KEYS = ("userName", "externalId", "active", "password")
# In scim_attributes: the IdP removed "active". Unassigned means what it means at creation,
# active; the attribute is then left out of the resource until assigned again.
ACTIVE_UNASSIGNED = "_activeUnassigned"


def _apply_user_document(
    caller: Caller,
    user: UserRow,
    membership: MembershipRow,
    doc: dict[str, Any],
    *,
    managed: bool,
) -> _UserChanges:
    """Write a complete document to the user (PUT, PATCH and POST end here)."""
    changes = _UserChanges()
    before = _strip_empty(user_document(user, membership)) if user.id else {}
    after = _strip_empty(doc)
    if "userName" not in after:
        raise invalid_value("userName is required")
    for key in set(before) | set(after):
        if key in ("password",):
            continue
        if before.get(key) != after.get(key):
            changes.attributes.append(key)
    if "password" in after:
        changes.attributes.append("password")
    changes.attributes.sort()
    if not managed:
        # Only the membership is this account's to change (DESIGN).
        changes.ignored = [a for a in changes.attributes if a != "active"]
        changes.attributes = [a for a in changes.attributes if a == "active"]
    else:
        user_name, key = _check_user_name(caller, user, after.get("userName"))
        user.user_name, user.user_name_key = user_name, key
        name = dict(after.get("name") or {})
        user.given_name = _short(name.pop("givenName", None), MAX_NAME_LENGTH, "name.givenName")
        user.family_name = _short(name.pop("familyName", None), MAX_NAME_LENGTH, "name.familyName")
        user.external_id = _check_external_id(caller, user, after.get("externalId"))
        password = after.get("password")
        if password is not None:
            try:
                passwords.check_password_strength(password, email=user.email)
            except ValidationError:
                # Okta sends a short random password when password sync is off: refusing it
                # would stop provisioning, and storing it would go below our policy. The
                # user signs in through the IdP; the password is left as it was.
                changes.attributes.remove("password")
                changes.ignored.append("password")
            else:
                user.password_hash = passwords.hash_password(password)
                user.password_changed_at = utcnow()
        rest = {k: v for k, v in after.items() if k not in _COLUMN_KEYS and k != "name"}
        if name:
            rest["name"] = name
        if "active" not in after:
            rest[ACTIVE_UNASSIGNED] = True
        user.scim_attributes = rest or None
        user.email = _derived_email(user, after)
    active = after.get("active", True)
    if active is not bool(user.active and membership.active):
        changes.activated = bool(active)
    if changes.attributes or changes.activated is not None:
        user.version = (user.version or 1) + 1
        user.updated_at = utcnow()
    return changes


def _set_active(
    caller: Caller, user: UserRow, membership: MembershipRow, active: bool, *, managed: bool
) -> None:
    """SCIM's active: the membership's flag; for a managed user also the user's own, and
    deactivating one ends every session at once (services.users)."""
    membership.active = active
    target = {"managed": managed}
    if managed and not active and user.active:
        users_service.deactivate_user(
            user,
            reason="scim_deactivated",
            meta=caller.meta,
            action="scim.user.deactivated",
            actor_label=caller.token.label,
            account_id=caller.account_id,
            details={"token_id": str(caller.token.id), **target},
        )
        return
    if managed and active and not user.active:
        users_service.reactivate_user(
            user,
            meta=caller.meta,
            action="scim.user.reactivated",
            actor_label=caller.token.label,
            account_id=caller.account_id,
            details={"token_id": str(caller.token.id), **target},
        )
        return
    caller.record(
        "scim.user.deactivated" if not active else "scim.user.reactivated",
        "user",
        user.id,
        {**target, "scope": "membership"},
    )


def create_user(caller: Caller, body: Any) -> tuple[UserRow, MembershipRow]:
    """POST /Users: a new user managed by the caller's account, a member of it.

    409 uniqueness when the userName belongs to any other user (in this account or not: the
    answer is the same). A user this account provisioned and later deleted (no membership
    left) is provisioned again under the same id."""
    doc = canonical_document(schema.USER_TYPE, body)
    user_name = doc.get("userName")
    if not isinstance(user_name, str) or not user_name.strip():
        raise invalid_value("userName is required")
    key = user_name.strip().lower()
    # The userName, and the externalId and email address the new user would get, checked
    # in one statement (each a query of its own otherwise).
    external_id = doc.get("externalId")
    email = next(_email_candidates(doc), None)
    checks = (
        _connection()
        .execute(
            _CREATE_CHECKS,
            {
                "key": key,
                "account_id": caller.account_id,
                "external_id": external_id,
                "email": email,
            },
        )
        .one()
    )
    existing = None
    if checks.name_taken:
        existing = _connection().execute(_USER_BY_NAME_KEY, {"key": key}).first()
    revived = False
    if existing is not None:
        user = UserRow(dict(zip(_USER_KEYS, existing[: len(_USER_KEYS)], strict=True)))
        if user.managed_by_account_id != caller.account_id or existing.has_membership:
            raise ScimError(409, "userName is already taken", "uniqueness")
        # Deleted by this account's SCIM earlier: a fresh start for the same userName.
        revived = True
        user.password_hash = None
        user.password_changed_at = None
        user.scim_attributes = None
        user.external_id = None
        user.given_name = user.family_name = None
    else:
        values = dict.fromkeys(_USER_KEYS)
        values.update(
            id=uuid.uuid4(),
            email="",
            active=True,
            version=1,
            # No user has this key (just checked): _check_user_name need not look again.
            user_name_key=key,
            managed_by_account_id=caller.account_id,
        )
        user = UserRow(values, loaded=False)
        # For a new id, "another user" is any user.
        if isinstance(external_id, str):
            user.checked["externalId", external_id] = checks.external_id_used
        if email is not None:
            user.checked["email", email] = checks.email_taken
    membership = MembershipRow(
        {
            "user_id": user.id,
            "account_id": caller.account_id,
            "role": Role.MEMBER.value,
            "active": True,
            "created_at": utcnow(),
        },
        loaded=False,
    )
    user.membership = membership
    active = doc.get("active", True)
    doc["active"] = True
    user.active = True
    _apply_user_document(caller, user, membership, doc, managed=True)
    now = utcnow()
    if revived:
        user.version = (user.version or 1) + 1
    else:
        user.version, user.created_at = 1, now
    user.updated_at = now
    event = (
        "scim.user.created",
        "user",
        user.id,
        {"userName": user.user_name, "revived": revived}
        if revived
        else {"userName": user.user_name},
    )
    if not revived and _on_postgresql():
        _create_user_pg(user, caller.audit_row(*event))
    else:
        _save_user(user)
        caller.record(*event)
    if active is False:
        _set_active(caller, user, membership, False, managed=True)
        _save_user(user)
    # A user just created is in no group.
    user.groups = []
    return user, membership


def replace_user(
    caller: Caller, resource_id: str, body: Any, *, if_match: str | None
) -> tuple[UserRow, MembershipRow]:
    """PUT /Users/{id} (Okta's update): the document replaces every attribute."""
    user, membership = load_user(caller, resource_id)
    check_if_match(if_match, user.version or 1)
    doc = canonical_document(schema.USER_TYPE, body)
    if "active" not in doc:
        doc["active"] = bool(user.active and membership.active)
    return _write_user(caller, user, membership, doc, "replace")


def patch_user(
    caller: Caller, resource_id: str, body: Any, *, if_match: str | None
) -> tuple[UserRow, MembershipRow]:
    """PATCH /Users/{id}: add/replace/remove operations applied in order, atomically."""
    user, membership = load_user(caller, resource_id)
    operations = parse_patch(body)
    check_if_match(if_match, user.version or 1)
    doc = _strip_empty(user_document(user, membership))
    patcher = Patcher(schema.USER_TYPE, doc)
    for operation in operations:
        patcher.apply(operation)
    return _write_user(caller, user, membership, patcher.doc, "patch")


def _write_user(
    caller: Caller, user: UserRow, membership: MembershipRow, doc: dict[str, Any], how: str
) -> tuple[UserRow, MembershipRow]:
    managed = user.managed_by_account_id == caller.account_id
    changes = _apply_user_document(caller, user, membership, doc, managed=managed)
    attributes = [a for a in changes.attributes if a != "active"]
    if attributes or changes.ignored:
        details: dict[str, Any] = {"attributes": attributes, "via": how}
        if changes.ignored:
            details["ignored"] = changes.ignored
        if attributes:
            caller.record("scim.user.updated", "user", user.id, details)
    if changes.activated is not None:
        _set_active(caller, user, membership, changes.activated, managed=managed)
    _save_user(user)
    return user, membership


def delete_user(caller: Caller, resource_id: str, *, if_match: str | None) -> None:
    """DELETE /Users/{id}: deprovision (services.users.deprovision_user); afterwards the
    resource is 404 for this account. The user row and the audit trail stay."""
    found, _membership = load_user(caller, resource_id, with_groups=False)
    check_if_match(if_match, found.version or 1)
    managed = found.managed_by_account_id == caller.account_id
    # deprovision_user works on the ORM object (not a hot path); read afresh, in case this
    # session (a Bulk request) holds an older copy.
    user = db.session.get(User, found.id, populate_existing=True)
    users_service.deprovision_user(
        user,  # type: ignore[arg-type]
        caller.account_id,
        managed=managed,
        reason="scim_deleted",
        meta=caller.meta,
        action="scim.user.deleted",
        actor_label=caller.token.label,
        details={"token_id": str(caller.token.id)},
    )
    db.session.flush()


# --- Groups ---------------------------------------------------------------------------------
_GROUP_COLUMNS = tuple(_groups.c[key] for key in _GROUP_KEYS)
_VISIBLE_GROUPS = select(*_GROUP_COLUMNS).where(_groups.c.account_id == bindparam("account_id"))
_GROUP_BY_ID = _VISIBLE_GROUPS.where(_groups.c.id == bindparam("group_id"))
_INSERT_GROUP = insert(_groups)
_UPDATE_GROUP = update(_groups).where(_groups.c.id == bindparam("_id"))
_DELETE_GROUP = delete(_groups).where(_groups.c.id == bindparam("group_id"))
_MEMBER_ORDER = (_group_members.c.created_at, _group_members.c.user_id)
_MEMBER_IDS = (
    select(_group_members.c.user_id)
    .where(_group_members.c.group_id == bindparam("group_id"))
    .order_by(*_MEMBER_ORDER)
)
_MEMBERS_OF_GROUPS = (
    select(_group_members.c.group_id, _group_members.c.user_id)
    .where(_group_members.c.group_id.in_(bindparam("group_ids", expanding=True)))
    .order_by(*_MEMBER_ORDER)
)
_PRESENT_MEMBERS = select(_group_members.c.user_id).where(
    _group_members.c.group_id == bindparam("group_id"),
    _group_members.c.user_id.in_(bindparam("user_ids", expanding=True)),
)
_ACCOUNT_MEMBERS = select(_memberships.c.user_id).where(
    _memberships.c.account_id == bindparam("account_id"),
    _memberships.c.user_id.in_(bindparam("user_ids", expanding=True)),
)
# Both in one round trip (kind 1: in the group, kind 2: a member of the account).
_MEMBER_STATE = union_all(
    select(literal_column("1").label("kind"), _group_members.c.user_id).where(
        _group_members.c.group_id == bindparam("group_id"),
        _group_members.c.user_id.in_(bindparam("touched", expanding=True)),
    ),
    select(literal_column("2").label("kind"), _memberships.c.user_id).where(
        _memberships.c.account_id == bindparam("account_id"),
        _memberships.c.user_id.in_(bindparam("adding", expanding=True)),
    ),
)


# At most this many members go in one IN list (every database's parameter limit allows it).
_STATE_CHUNK = 500
_STATE = _MEMBER_STATE.subquery("member_state")
_GROUP_WITH_MEMBER_STATE = (
    select(*_GROUP_COLUMNS, _STATE.c.kind, _STATE.c.user_id)
    .select_from(_groups.outerjoin(_STATE, true()))
    .where(
        _groups.c.id == bindparam("group_id"),
        _groups.c.account_id == bindparam("account_id"),
    )
)


def _group_from(row: Any) -> GroupRow:
    return GroupRow(dict(zip(_GROUP_KEYS, row, strict=True)))


def _save_group(group: GroupRow) -> None:
    """INSERT a new group, or UPDATE what changed of it."""
    if group.is_new:
        _connection().execute(_INSERT_GROUP, {key: group.__dict__[key] for key in _GROUP_KEYS})
        group.written()
        return
    changes = group.changes()
    if changes:
        if "updated_at" not in changes:
            # The column's onupdate, as the ORM applies it.
            changes["updated_at"] = group.updated_at = utcnow()
        _connection().execute(_UPDATE_GROUP, {**changes, "_id": group.id})
        group.written(changes)


def load_group(caller: Caller, resource_id: str) -> GroupRow:
    key = _parse_id(resource_id, "Group")
    row = (
        _connection()
        .execute(_GROUP_BY_ID, {"account_id": caller.account_id, "group_id": key})
        .first()
    )
    if row is None:
        raise not_found("Group", resource_id)
    return _group_from(row)


def _member_ids(group_id: uuid.UUID) -> list[uuid.UUID]:
    return list(_connection().execute(_MEMBER_IDS, {"group_id": group_id}).scalars())


def group_resource(
    caller: Caller,
    group: GroupRow,
    *,
    members: list[uuid.UUID] | None = None,
    projection: Projection | None = None,
) -> dict[str, Any]:
    """The Group resource (RFC 7643 §4.2). Members are loaded only when returned: Entra ID
    asks with excludedAttributes=members, and a group may have thousands."""
    projection = projection or Projection()
    resource: dict[str, Any] = {
        "schemas": [schema.GROUP_SCHEMA],
        "id": str(group.id),
        "displayName": group.display_name,
    }
    if group.external_id:
        resource["externalId"] = group.external_id
    if projection.wants("members"):
        if members is None:
            members = _member_ids(group.id)
        if members:
            resource["members"] = [
                {"value": str(uid), "$ref": caller.location("Users", uid), "type": "User"}
                for uid in members
            ]
    resource["meta"] = {
        "resourceType": "Group",
        "created": _timestamp(group.created_at),
        "lastModified": _timestamp(group.updated_at or group.created_at),
        "location": caller.location("Groups", group.id),
        "version": etag(group.version or 1),
    }
    return projection.apply(schema.GROUP_TYPE, resource)


def list_groups(caller: Caller, query: ListQuery, limits: Limits) -> dict[str, Any]:
    attributes = _group_attributes()
    base = _VISIBLE_GROUPS
    if query.filter:
        base = base.where(_filter_clause(schema.GROUP_TYPE, query.filter, attributes))
    order = [_groups.c.created_at, _groups.c.id]
    if query.sort_by:
        column = _sort_column(schema.GROUP_TYPE, query.sort_by, attributes)
        order = [
            column.desc() if query.sort_order == "descending" else column.asc(),
            _groups.c.id,
        ]
    page = base.order_by(*order).limit(bindparam("limit")).offset(bindparam("offset"))
    projection = Projection.of(schema.GROUP_TYPE, query)

    def render(rows: list) -> list[dict[str, Any]]:
        groups = [_group_from(row) for row in rows]
        members: dict[uuid.UUID, list[uuid.UUID]] = {g.id: [] for g in groups}
        if groups and projection.wants("members"):
            for group_id, user_id in _connection().execute(
                _MEMBERS_OF_GROUPS, {"group_ids": list(members)}
            ):
                members[group_id].append(user_id)
        return [
            group_resource(caller, g, members=members[g.id], projection=projection) for g in groups
        ]

    return _list_response(base, page, {"account_id": caller.account_id}, query, limits, render)


def _group_fields(doc: dict[str, Any]) -> tuple[str, str | None]:
    display_name = doc.get("displayName")
    if not isinstance(display_name, str) or not display_name.strip():
        raise invalid_value("displayName is required")
    display_name = _short(display_name, MAX_DISPLAY_NAME_LENGTH, "displayName")
    external_id = _short(doc.get("externalId"), MAX_EXTERNAL_ID_LENGTH, "externalId")
    return display_name, external_id  # type: ignore[return-value]


def _wanted_members(caller: Caller | None, doc: dict[str, Any]) -> list[uuid.UUID]:
    """The member ids a document asks for, each a user of the caller's account; 400
    otherwise (one query for all of them)."""
    ids: dict[uuid.UUID, None] = {}
    for member in doc.get("members") or []:
        raw = member.get("value") if isinstance(member, dict) else None
        kind = member.get("type") if isinstance(member, dict) else None
        if kind is not None and str(kind).lower() != "user":
            raise invalid_value("Only users can be group members (no nested groups)")
        try:
            ids[uuid.UUID(str(raw))] = None
        except ValueError:
            raise invalid_value(f"members: {str(raw)[:100]!r} is not a user id") from None
    return list(ids)


def _check_members(caller: Caller, ids: Iterable[uuid.UUID]) -> None:
    wanted = list(ids)
    if not wanted:
        return
    found: set[uuid.UUID] = set()
    # Chunks keep the IN list within every database's parameter limit.
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        found.update(
            _connection()
            .execute(_ACCOUNT_MEMBERS, {"account_id": caller.account_id, "user_ids": chunk})
            .scalars()
        )
    _refuse_missing(wanted, found)


def _refuse_missing(wanted: list[uuid.UUID], found: set[uuid.UUID]) -> None:
    missing = [uid for uid in wanted if uid not in found]
    if missing:
        # Another account's user reads exactly like a missing one.
        raise invalid_value(f"members: no user {missing[0]} in this account")


_INSERT_MEMBER = insert(_group_members)
_DELETE_MEMBER = delete(_group_members).where(
    _group_members.c.group_id == bindparam("g"),
    _group_members.c.user_id == bindparam("u"),
)
_DELETE_MEMBERS = delete(_group_members).where(_group_members.c.group_id == bindparam("g"))
_BUMP_USERS = (
    update(_users)
    .where(_users.c.id.in_(bindparam("user_ids", expanding=True)))
    .values(version=_users.c.version + 1, updated_at=bindparam("now"))
)


def _write_members(
    group: GroupRow, old: list[uuid.UUID], new: list[uuid.UUID], *, complete: bool = True
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Set-based: one executemany INSERT for the added members, one for the removed ones, and
    one UPDATE bumping the version of every user whose ``groups`` changed. ``complete``:
    ``old`` is every current member (not only the touched ones), so an empty ``new`` may
    delete them all in one statement."""
    old_set, new_set = set(old), set(new)
    added = [uid for uid in new if uid not in old_set]
    removed = [uid for uid in old if uid not in new_set]
    connection = _connection()
    now = utcnow()
    if added:
        connection.execute(
            _INSERT_MEMBER, [{"group_id": group.id, "user_id": u, "created_at": now} for u in added]
        )
    if removed:
        if complete and not new:
            connection.execute(_DELETE_MEMBERS, {"g": group.id})
        else:
            connection.execute(_DELETE_MEMBER, [{"g": group.id, "u": u} for u in removed])
    changed = added + removed
    # The users' "groups" attribute changed: their ETags must too.
    for start in range(0, len(changed), 500):
        connection.execute(_BUMP_USERS, {"user_ids": changed[start : start + 500], "now": now})
    return added, removed


def create_group(caller: Caller, body: Any) -> GroupRow:
    doc = canonical_document(schema.GROUP_TYPE, body)
    display_name, external_id = _group_fields(doc)
    members = _wanted_members(caller, doc)
    _check_members(caller, members)
    group = GroupRow(
        {
            "id": uuid.uuid4(),
            "account_id": caller.account_id,
            "display_name": display_name,
            "external_id": external_id,
            "version": 1,
            # The columns' defaults, one call each as the ORM makes them.
            "created_at": utcnow(),
            "updated_at": utcnow(),
        },
        loaded=False,
    )
    _save_group(group)
    _write_members(group, [], members)
    caller.record(
        "scim.group.created",
        "group",
        group.id,
        {"displayName": display_name, "members": len(members)},
    )
    return group


def replace_group(caller: Caller, resource_id: str, body: Any, *, if_match: str | None) -> GroupRow:
    group = load_group(caller, resource_id)
    check_if_match(if_match, group.version or 1)
    doc = canonical_document(schema.GROUP_TYPE, body)
    return _write_group(caller, group, doc, _member_ids(group.id), "replace")


def patch_group(caller: Caller, resource_id: str, body: Any, *, if_match: str | None) -> GroupRow:
    """PATCH /Groups/{id}. Members are applied as sets: a thousand added in one request is
    one INSERT (Entra ID sends membership changes in batches).

    The body is read before the group, so that a members-only change reads the group and
    the state of those members in one statement; errors still come in the order of the
    checks: the group (404), the body (400), If-Match (412), then the members (400)."""
    try:
        operations = parse_patch(body)
    except ScimError:
        load_group(caller, resource_id)
        raise
    try:
        delta = _member_delta(operations)
    except ScimError:
        check_if_match(if_match, load_group(caller, resource_id).version or 1)
        raise
    if delta is not None and len(delta[0]) + len(delta[1]) <= _STATE_CHUNK:
        group, state = _load_group_with_member_state(caller, resource_id, *delta)
        check_if_match(if_match, group.version or 1)
        return _apply_member_delta(caller, group, *delta, state=state)
    group = load_group(caller, resource_id)
    check_if_match(if_match, group.version or 1)
    if delta is not None:
        return _apply_member_delta(caller, group, *delta)
    old = _member_ids(group.id)
    doc: dict[str, Any] = {"displayName": group.display_name}
    if group.external_id:
        doc["externalId"] = group.external_id
    doc["members"] = [{"value": str(uid)} for uid in old]
    patcher = Patcher(schema.GROUP_TYPE, doc)
    for operation in operations:
        patcher.apply(operation)
    return _write_group(caller, group, patcher.doc, old, "patch")


def _member_delta(operations: list[_Operation]) -> tuple[list[uuid.UUID], list[uuid.UUID]] | None:
    """(ids to add, ids to remove) when every operation only adds or removes members by id:
    ``add members [...]``, ``remove members [...]`` (Entra) and ``remove members[value eq
    "id"]`` (Okta). Those are applied without reading the group's current members, which
    for a large group would cost more than the change. None for anything else."""
    last: dict[uuid.UUID, str] = {}
    for operation in operations:
        path = operation.path
        if (
            path is None
            or path.attr.attr.lower() != "members"
            or path.attr.sub_attr is not None
            or path.sub_attr is not None
            or _core_or(schema.GROUP_TYPE, path.attr.urn) is not None
        ):
            return None
        if path.value_filter is not None:
            node = path.value_filter
            if not (
                operation.op == "remove"
                and isinstance(node, sf.Compare)
                and node.op == "eq"
                and node.path.attr.lower() == "value"
                and isinstance(node.value, str)
            ):
                return None
            values = [{"value": node.value}]
        elif operation.op in ("add", "remove") and operation.value not in (None, [], {}):
            values = operation.value if isinstance(operation.value, list) else [operation.value]
        else:
            return None
        for item in _wanted_members(
            None, {"members": _coerce_attribute(_MEMBERS, values, "members")}
        ):
            last[item] = operation.op
    return (
        [uid for uid, op in last.items() if op == "add"],
        [uid for uid, op in last.items() if op == "remove"],
    )


_MEMBERS = schema.GROUP.attribute("members")


def _load_group_with_member_state(
    caller: Caller, resource_id: str, adding: list[uuid.UUID], removing: list[uuid.UUID]
) -> tuple[GroupRow, tuple[set[uuid.UUID], set[uuid.UUID]]]:
    """The group (404 otherwise) and, of the members a PATCH adds or removes, those in the
    group already and those the account has: one statement."""
    key = _parse_id(resource_id, "Group")
    rows = (
        _connection()
        .execute(
            _GROUP_WITH_MEMBER_STATE,
            {
                "group_id": key,
                "account_id": caller.account_id,
                "touched": adding + removing,
                "adding": adding,
            },
        )
        .all()
    )
    if not rows:
        raise not_found("Group", resource_id)
    count = len(_GROUP_KEYS)
    group = GroupRow(dict(zip(_GROUP_KEYS, rows[0][:count], strict=True)))
    present: set[uuid.UUID] = set()
    in_account: set[uuid.UUID] = set()
    for row in rows:
        if row.kind is not None:
            (present if row.kind == 1 else in_account).add(row.user_id)
    return group, (present, in_account)


def _apply_member_delta(
    caller: Caller,
    group: GroupRow,
    adding: list[uuid.UUID],
    removing: list[uuid.UUID],
    *,
    state: tuple[set[uuid.UUID], set[uuid.UUID]] | None = None,
) -> GroupRow:
    """``state``: (in the group, in the account) of the touched members, when read."""
    touched = adding + removing
    present: set[uuid.UUID] = set()
    if state is None and len(touched) <= _STATE_CHUNK:
        state = set(), set()
        for kind, user_id in _connection().execute(
            _MEMBER_STATE,
            {
                "group_id": group.id,
                "touched": touched,
                "account_id": caller.account_id,
                "adding": adding,
            },
        ):
            state[0 if kind == 1 else 1].add(user_id)
    if state is not None:
        present, in_account = state
        new = [uid for uid in adding if uid not in present]
        _refuse_missing(new, in_account)
    else:
        for start in range(0, len(touched), 500):
            present.update(
                _connection()
                .execute(
                    _PRESENT_MEMBERS,
                    {"group_id": group.id, "user_ids": touched[start : start + 500]},
                )
                .scalars()
            )
        new = [uid for uid in adding if uid not in present]
        _check_members(caller, new)
    gone = [uid for uid in removing if uid in present]
    if (new or gone) and len(new) + len(gone) <= _STATE_CHUNK and _on_postgresql():
        _change_members_pg(caller, group, new, gone)
        return group
    # _write_members computes the change from (old, new): give it just the touched ids.
    added, removed = _write_members(group, gone, new, complete=False)
    if added or removed:
        group.version = (group.version or 1) + 1
        group.updated_at = utcnow()
        caller.record("scim.group.updated", "group", group.id, _members_changed(added, removed))
    _save_group(group)
    return group


def _members_changed(added: list[uuid.UUID], removed: list[uuid.UUID]) -> dict[str, Any]:
    return {
        "attributes": ["members"],
        "via": "patch",
        "added": len(added),
        "removed": len(removed),
    }


def _change_members_pg(
    caller: Caller, group: GroupRow, added: list[uuid.UUID], removed: list[uuid.UUID]
) -> None:
    """_write_members, the audit event and the group's new version in one statement."""
    now = utcnow()
    group.version = (group.version or 1) + 1
    group.updated_at = utcnow()
    event = caller.audit_row(
        "scim.group.updated", "group", group.id, _members_changed(added, removed)
    )
    _connection().execute(
        _CHANGE_MEMBERS_PG,
        {
            "g_id": group.id,
            "g_version": group.version,
            "g_updated_at": group.updated_at,
            "added": added,
            "removed": removed,
            "changed": added + removed,
            "added_at": now,
            **_prefixed(event, "a_"),
        },
    )
    group.written()


def _write_group(
    caller: Caller, group: GroupRow, doc: dict[str, Any], old: list[uuid.UUID], how: str
) -> GroupRow:
    display_name, external_id = _group_fields(doc)
    members = _wanted_members(caller, doc)
    old_set = set(old)
    _check_members(caller, [uid for uid in members if uid not in old_set])
    changed = []
    if display_name != group.display_name:
        changed.append("displayName")
    if external_id != group.external_id:
        changed.append("externalId")
    group.display_name, group.external_id = display_name, external_id
    added, removed = _write_members(group, old, members)
    if added or removed:
        changed.append("members")
    if changed:
        group.version = (group.version or 1) + 1
        group.updated_at = utcnow()
        caller.record(
            "scim.group.updated",
            "group",
            group.id,
            {"attributes": changed, "via": how, "added": len(added), "removed": len(removed)},
        )
    _save_group(group)
    return group


def delete_group(caller: Caller, resource_id: str, *, if_match: str | None) -> None:
    group = load_group(caller, resource_id)
    check_if_match(if_match, group.version or 1)
    members = _member_ids(group.id)
    _write_members(group, members, [])
    caller.record(
        "scim.group.deleted",
        "group",
        group.id,
        {"displayName": group.display_name, "members": len(members)},
    )
    _connection().execute(_DELETE_GROUP, {"group_id": group.id})


# --- search across resource types (RFC 7644 §3.4.3) ----------------------------------------------
def search(
    caller: Caller, query: ListQuery, limits: Limits, rtype: schema.ResourceType | None
) -> dict[str, Any]:
    """POST /.search. At the root the search spans users then groups (RFC 7644 §3.4.3): a
    filter naming an attribute one type lacks matches none of that type, and is invalid only
    when it fits neither."""
    if rtype is schema.GROUP_TYPE:
        return list_groups(caller, query, limits)
    if rtype is schema.USER_TYPE:
        return list_users(caller, query, limits)
    listers = (list_users, list_groups)
    totals: list[int | None] = []
    first_error: ScimError | None = None
    for lister in listers:
        try:
            probe = dataclasses.replace(query, start_index=1, count=0, sort_by=None)
            totals.append(lister(caller, probe, limits)["totalResults"])
        except ScimError as error:
            if error.scim_type != "invalidFilter":
                raise
            first_error = first_error or error
            totals.append(None)
    if all(total is None for total in totals):
        raise first_error  # type: ignore[misc]
    wanted = limits.max_results if query.count is None else min(query.count, limits.max_results)
    skip = query.start_index - 1
    resources: list[dict[str, Any]] = []
    for lister, total in zip(listers, totals, strict=True):
        if not total:
            continue
        if skip >= total:
            skip -= total
            continue
        take = wanted - len(resources)
        if take <= 0:
            break
        page = dataclasses.replace(query, start_index=skip + 1, count=take)
        resources.extend(lister(caller, page, limits)["Resources"])
        skip = 0
    return {
        "schemas": [schema.LIST_RESPONSE],
        "totalResults": sum(total or 0 for total in totals),
        "startIndex": query.start_index,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


# --- Bulk (RFC 7644 §3.7) ----------------------------------------------------------------------
@dataclass
class BulkResult:
    body: dict[str, Any]


def open_transaction() -> None:
    """A real transaction before the first SAVEPOINT on SQLite (see linking's twin): pysqlite
    would otherwise make the SAVEPOINT the transaction, and releasing it would commit."""
    connection = db.session.connection()
    if connection.dialect.name != "sqlite":
        return
    if not connection.connection.dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def bulk(
    caller: Caller,
    body: Any,
    limits: Limits,
    dispatch: Callable[[str, str, Any, str | None], tuple[int, dict[str, Any] | None, str | None]],
) -> dict[str, Any]:
    """Run a BulkRequest: each operation in its own SAVEPOINT, ``bulkId:`` references
    resolved (also inside values), processing stopped after ``failOnErrors`` errors.

    ``dispatch(method, path, data, version)`` runs one operation and returns (status, resource
    or None, location); it raises ScimError for a failed operation."""
    if not isinstance(body, dict):
        raise ScimError(400, "The request body must be a JSON object", "invalidSyntax")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or schema.BULK_REQUEST not in schemas:
        raise ScimError(400, f"schemas must contain {schema.BULK_REQUEST}", "invalidSyntax")
    operations = _item_value(body, "Operations")
    if not isinstance(operations, list):
        raise ScimError(400, "Operations must be a list", "invalidSyntax")
    if len(operations) > limits.bulk_max_operations:
        raise ScimError(
            413,
            f"At most {limits.bulk_max_operations} operations per bulk request",
            "tooMany",
        )
    fail_on_errors = _item_value(body, "failOnErrors")
    if fail_on_errors is not None and (
        isinstance(fail_on_errors, bool)
        or not isinstance(fail_on_errors, int)
        or fail_on_errors < 1
    ):
        raise invalid_value("failOnErrors must be a positive integer")
    bulk_ids: dict[str, str] = {}
    results: list[dict[str, Any]] = []
    errors = 0
    open_transaction()
    for raw in operations:
        if fail_on_errors is not None and errors >= fail_on_errors:
            break
        result = _bulk_operation(caller, raw, bulk_ids, dispatch)
        if int(result["status"]) >= 400:
            errors += 1
        results.append(result)
    return {"schemas": [schema.BULK_RESPONSE], "Operations": results}


def _bulk_operation(caller: Caller, raw: Any, bulk_ids: dict[str, str], dispatch) -> dict[str, Any]:
    method = _item_value(raw, "method") if isinstance(raw, dict) else None
    bulk_id = _item_value(raw, "bulkId") if isinstance(raw, dict) else None
    path = _item_value(raw, "path") if isinstance(raw, dict) else None
    out: dict[str, Any] = {"method": str(method or "").upper()}
    if bulk_id is not None:
        out["bulkId"] = str(bulk_id)
    try:
        if not isinstance(method, str) or method.upper() not in ("POST", "PUT", "PATCH", "DELETE"):
            raise ScimError(400, "method must be POST, PUT, PATCH or DELETE", "invalidSyntax")
        method = method.upper()
        if not isinstance(path, str) or not path.startswith("/"):
            raise ScimError(400, "path must be a resource path such as /Users", "invalidSyntax")
        if method == "POST" and not (isinstance(bulk_id, str) and bulk_id):
            raise ScimError(400, "POST operations need a bulkId", "invalidSyntax")
        path = _resolve_bulk_ids(path, bulk_ids)
        data = _resolve_bulk_ids(_item_value(raw, "data"), bulk_ids)
        version = _item_value(raw, "version")
        with db.session.begin_nested():
            status, _resource, location = dispatch(method, path, data, version)
        out["status"] = str(status)
        if location:
            out["location"] = location
            if method == "POST":
                bulk_ids[bulk_id] = location.rsplit("/", 1)[-1]  # type: ignore[index]
        if _resource is not None and isinstance(_resource.get("meta"), dict):
            version_tag = _resource["meta"].get("version")
            if version_tag:
                out["version"] = version_tag
    except ScimError as error:
        out["status"] = str(error.status)
        out["response"] = error.to_json()
    except IntegrityError:
        error = ScimError(409, "The operation conflicts with another change", "uniqueness")
        out["status"] = "409"
        out["response"] = error.to_json()
    return out


class _UnresolvedBulkId(ScimError):
    def __init__(self, bulk_id: str) -> None:
        super().__init__(
            409, f"bulkId {bulk_id[:100]} does not name an earlier successful POST", "invalidValue"
        )


def _resolve_bulk_ids(value: Any, bulk_ids: dict[str, str]) -> Any:
    """Replace "bulkId:<id>" with the id the POST that had it created (RFC 7644 §3.7.2)."""
    if isinstance(value, str):
        if value.startswith("bulkId:"):
            key = value[len("bulkId:") :]
            if key not in bulk_ids:
                raise _UnresolvedBulkId(key)
            return bulk_ids[key]
        if "bulkId:" in value:
            # Inside a path: /Groups/bulkId:qwerty
            head, _, tail = value.partition("bulkId:")
            key, sep, rest = tail.partition("/")
            if key not in bulk_ids:
                raise _UnresolvedBulkId(key)
            return head + bulk_ids[key] + sep + rest
        return value
    if isinstance(value, list):
        return [_resolve_bulk_ids(item, bulk_ids) for item in value]
    if isinstance(value, dict):
        return {key: _resolve_bulk_ids(item, bulk_ids) for key, item in value.items()}
    return value


def payload_size_ok(size: int | None, limits: Limits) -> bool:
    return size is None or size <= limits.bulk_max_payload
