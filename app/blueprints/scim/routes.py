"""Views of the SCIM blueprint: authenticate, parse, call services.scim, commit, answer JSON.

Every answer is ``application/scim+json``; every error is a SCIM Error (RFC 7644 §3.12),
also for unknown paths, wrong methods, rate limits and crashes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Response
from flask import current_app
from flask import g
from flask import request
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RoutingNotFound

from app.blueprints.scim import bp
from app.extensions import db
from app.extensions import limiter
from app.ratelimit import ScimRateLimited
from app.ratelimit import check_scim_request
from app.services import scim
from app.services import scim_schema as schema
from app.services import scim_tokens
from app.services.scim import ScimError
from app.web import request_meta

log = logging.getLogger(__name__)
MIMETYPE = "application/scim+json"
# Accepted request bodies: SCIM's own type, and plain JSON, which many clients send.
ACCEPTED_TYPES = ("application/scim+json", "application/json")
RESOURCE_TYPES = {"Users": schema.USER_TYPE, "Groups": schema.GROUP_TYPE}


# --- plumbing --------------------------------------------------------------------------------
def scim_response(
    body: Any, status: int = 200, *, version: int | None = None, location: str | None = None
) -> Response:
    response = Response(json.dumps(body), status=status, mimetype=MIMETYPE)
    if version is not None:
        response.headers["ETag"] = scim.etag(version)
    if location:
        response.headers["Location"] = location
    return response


def error_response(error: ScimError) -> Response:
    response = scim_response(error.to_json(), error.status)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="scim"'
    return response


@bp.errorhandler(ScimError)
def _scim_error(error: ScimError):
    db.session.rollback()
    return error_response(error)


@bp.errorhandler(ScimRateLimited)
def _rate_limited(error: ScimRateLimited):
    response = error_response(ScimError(429, "Too many requests for this token", "tooMany"))
    response.headers["Retry-After"] = str(error.retry_after)
    return response


@bp.errorhandler(IntegrityError)
def _conflict(error: IntegrityError):
    # Two requests creating the same userName (or member) at once: the loser's unique index
    # violation is a conflict, as if it had come second.
    db.session.rollback()
    return error_response(ScimError(409, "The request conflicts with another change", "uniqueness"))


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException):
    db.session.rollback()
    status = error.code or 500
    detail = {413: "The request body is too large"}.get(status, error.name)
    return error_response(ScimError(status, detail))


@bp.errorhandler(Exception)
def _crash(error: Exception):
    db.session.rollback()
    log.exception("SCIM request failed: %s %s", request.method, request.path)
    return error_response(ScimError(500, "Internal error; it has been logged"))


def limits() -> scim.Limits:
    config = current_app.config
    return scim.Limits(
        max_results=config["SCIM_MAX_RESULTS"],
        bulk_max_operations=config["SCIM_BULK_MAX_OPERATIONS"],
        bulk_max_payload=config["SCIM_BULK_MAX_PAYLOAD"],
    )


def base_url() -> str:
    # Built from PUBLIC_URL, never from the Host header (DESIGN "Configuration").
    return (current_app.config.get("PUBLIC_URL") or "").rstrip("/") + bp.url_prefix


@limiter.request_filter
def _scim_request() -> bool:
    """SCIM is limited per token by authenticate() (ratelimit.check_scim_request):
    Flask-Limiter has nothing to count here, and resolving that per request costs more than
    the token's own counter."""
    return request.blueprint == "scim"


@bp.before_request
def authenticate() -> None:
    """Every SCIM request carries a live token of one account; it is counted against the
    token's rate limit. A revoked token is refused from its next request on (the row is read
    on every request, nothing is cached)."""
    if request.method == "GET":
        _read_only_without_transaction()
    token = scim_tokens.authenticate(request.headers.get("Authorization"))
    if token is None:
        raise ScimError(401, "A valid SCIM bearer token is required")
    if token.touched:
        db.session.commit()  # last_used_at, at most once a minute per token
    check_scim_request(current_app.config["SCIM_RATE_LIMIT"], str(token.id))
    g.scim_caller = scim.Caller(token=token, base_url=base_url(), meta=request_meta())


def _read_only_without_transaction() -> None:
    """A GET writes nothing but (once a minute per token) the token's last_used_at, which it
    commits at once. On PostgreSQL its statements then run without a transaction around them
    (each is its own, as each already reads its own snapshot at READ COMMITTED): that saves
    the BEGIN and the ROLLBACK, two of a look-up's five round trips to the server. SQLite
    opens no transaction for reads in the first place."""
    session = db.session()
    if session.get_bind().dialect.name == "postgresql" and not session.in_transaction():
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def caller() -> scim.Caller:
    return g.scim_caller


def read_json(max_size: int | None = None) -> Any:
    """The request body as JSON; 400 invalidSyntax when it is not, 413 when too large."""
    limit = max_size or current_app.config["SCIM_MAX_PAYLOAD"]
    mimetype = request.mimetype
    if mimetype and mimetype not in ACCEPTED_TYPES:
        raise ScimError(400, "The body must be application/scim+json", "invalidSyntax")
    if request.content_length is not None and request.content_length > limit:
        raise ScimError(413, f"The request body is larger than {limit} bytes")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise ScimError(413, f"The request body is larger than {limit} bytes")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ScimError(400, "The request body is not valid JSON", "invalidSyntax") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _projection(rtype: schema.ResourceType) -> scim.Projection:
    return scim.Projection.of(rtype, scim.ListQuery.from_args(request.args))


def _if_match() -> str | None:
    return request.headers.get("If-Match")


# --- discovery (RFC 7644 §4) ----------------------------------------------------------------------
@bp.get("/ServiceProviderConfig")
def service_provider_config():
    lim = limits()
    return scim_response(
        schema.service_provider_config(
            location=f"{base_url()}/ServiceProviderConfig",
            max_results=lim.max_results,
            bulk_max_operations=lim.bulk_max_operations,
            bulk_max_payload=lim.bulk_max_payload,
        )
    )


def _list_of(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schemas": [schema.LIST_RESPONSE],
        "totalResults": len(resources),
        "startIndex": 1,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


@bp.get("/ResourceTypes")
def resource_types():
    return scim_response(
        _list_of(
            [
                rtype.to_json(f"{base_url()}/ResourceTypes/{rtype.name}")
                for rtype in schema.RESOURCE_TYPES.values()
            ]
        )
    )


@bp.get("/ResourceTypes/<name>")
def resource_type(name: str):
    rtype = schema.RESOURCE_TYPES.get(name)
    if rtype is None:
        raise ScimError(404, f"No resource type {name[:100]}")
    return scim_response(rtype.to_json(f"{base_url()}/ResourceTypes/{rtype.name}"))


@bp.get("/Schemas")
def schemas():
    return scim_response(
        _list_of([s.to_json(f"{base_url()}/Schemas/{s.id}") for s in schema.SCHEMAS_BY_ID.values()])
    )


@bp.get("/Schemas/<path:schema_id>")
def schema_by_id(schema_id: str):
    found = schema.SCHEMAS_BY_ID.get(schema_id.lower())
    if found is None:
        raise ScimError(404, f"No schema {schema_id[:200]}")
    return scim_response(found.to_json(f"{base_url()}/Schemas/{found.id}"))


# --- Users ----------------------------------------------------------------------------------------
def _user_response(user, membership, status: int = 200, groups=None) -> Response:
    body = scim.user_resource(
        caller(), user, membership, groups=groups, projection=_projection(schema.USER_TYPE)
    )
    location = caller().location("Users", user.id)
    return scim_response(
        body, status, version=user.version, location=location if status == 201 else None
    )


@bp.get("/Users")
def list_users():
    query = scim.ListQuery.from_args(request.args)
    return scim_response(scim.list_users(caller(), query, limits()))


@bp.post("/Users")
def create_user():
    user, membership = scim.create_user(caller(), read_json())
    # Rendered before the commit, which would expire the rows and cost a reload; a user
    # just created is in no group.
    response = _user_response(user, membership, 201, groups=[])
    db.session.commit()
    return response


@bp.get("/Users/<resource_id>")
def get_user(resource_id: str):
    user, membership = scim.load_user(caller(), resource_id)
    if scim.matches_if_none_match(request.headers.get("If-None-Match"), user.version):
        return scim_response("", 304, version=user.version)
    return _user_response(user, membership)


@bp.put("/Users/<resource_id>")
def replace_user(resource_id: str):
    user, membership = scim.replace_user(caller(), resource_id, read_json(), if_match=_if_match())
    response = _user_response(user, membership)
    db.session.commit()
    return response


@bp.patch("/Users/<resource_id>")
def patch_user(resource_id: str):
    user, membership = scim.patch_user(caller(), resource_id, read_json(), if_match=_if_match())
    response = _user_response(user, membership)
    db.session.commit()
    return response


@bp.delete("/Users/<resource_id>")
def delete_user(resource_id: str):
    scim.delete_user(caller(), resource_id, if_match=_if_match())
    db.session.commit()
    return Response(status=204)


# --- Groups ---------------------------------------------------------------------------------------
def _group_response(group, status: int = 200) -> Response:
    body = scim.group_resource(caller(), group, projection=_projection(schema.GROUP_TYPE))
    location = caller().location("Groups", group.id)
    return scim_response(
        body, status, version=group.version, location=location if status == 201 else None
    )


@bp.get("/Groups")
def list_groups():
    query = scim.ListQuery.from_args(request.args)
    return scim_response(scim.list_groups(caller(), query, limits()))


@bp.post("/Groups")
def create_group():
    group = scim.create_group(caller(), read_json())
    response = _group_response(group, 201)
    db.session.commit()
    return response


@bp.get("/Groups/<resource_id>")
def get_group(resource_id: str):
    group = scim.load_group(caller(), resource_id)
    if scim.matches_if_none_match(request.headers.get("If-None-Match"), group.version):
        return scim_response("", 304, version=group.version)
    return _group_response(group)


@bp.put("/Groups/<resource_id>")
def replace_group(resource_id: str):
    group = scim.replace_group(caller(), resource_id, read_json(), if_match=_if_match())
    response = _group_response(group)
    db.session.commit()
    return response


@bp.patch("/Groups/<resource_id>")
def patch_group(resource_id: str):
    group = scim.patch_group(caller(), resource_id, read_json(), if_match=_if_match())
    response = _group_response(group)
    db.session.commit()
    return response


@bp.delete("/Groups/<resource_id>")
def delete_group(resource_id: str):
    scim.delete_group(caller(), resource_id, if_match=_if_match())
    db.session.commit()
    return Response(status=204)


# --- search and bulk ------------------------------------------------------------------------------
def _search_body() -> scim.ListQuery:
    body = read_json()
    if not isinstance(body, dict):
        raise ScimError(400, "The request body must be a JSON object", "invalidSyntax")
    schemas = body.get("schemas")
    if schemas is not None and (
        not isinstance(schemas, list) or schema.SEARCH_REQUEST not in schemas
    ):
        raise ScimError(400, f"schemas must contain {schema.SEARCH_REQUEST}", "invalidSyntax")
    return scim.ListQuery.from_mapping({k: v for k, v in body.items() if k != "schemas"})


@bp.post("/.search")
def search_root():
    return scim_response(scim.search(caller(), _search_body(), limits(), None))


@bp.post("/<any(Users, Groups):endpoint>/.search")
def search_resources(endpoint: str):
    return scim_response(scim.search(caller(), _search_body(), limits(), RESOURCE_TYPES[endpoint]))


@bp.post("/Bulk")
def bulk():
    lim = limits()
    body = read_json(lim.bulk_max_payload)
    result = scim.bulk(caller(), body, lim, _dispatch)
    db.session.commit()
    return scim_response(result)


def _dispatch(method: str, path: str, data: Any, version: Any):
    """One Bulk operation through the same services as the single-resource endpoints."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if not parts or parts[0] not in RESOURCE_TYPES or len(parts) > 2:
        raise ScimError(400, f"Unsupported bulk path {path[:100]}", "invalidPath")
    endpoint, resource_id = parts[0], (parts[1] if len(parts) == 2 else None)
    if (method == "POST") != (resource_id is None):
        raise ScimError(400, f"{method} does not apply to {path[:100]}", "invalidPath")
    if_match = version if isinstance(version, str) else None
    who = caller()
    if endpoint == "Users":
        if method == "POST":
            user, membership = scim.create_user(who, data)
        elif method == "PUT":
            user, membership = scim.replace_user(who, resource_id, data, if_match=if_match)
        elif method == "PATCH":
            user, membership = scim.patch_user(who, resource_id, data, if_match=if_match)
        else:
            scim.delete_user(who, resource_id, if_match=if_match)
            return 204, None, who.location("Users", resource_id)
        body = scim.user_resource(who, user, membership)
        return (201 if method == "POST" else 200), body, body["meta"]["location"]
    if method == "POST":
        group = scim.create_group(who, data)
    elif method == "PUT":
        group = scim.replace_group(who, resource_id, data, if_match=if_match)
    elif method == "PATCH":
        group = scim.patch_group(who, resource_id, data, if_match=if_match)
    else:
        scim.delete_group(who, resource_id, if_match=if_match)
        return 204, None, who.location("Groups", resource_id)
    body = scim.group_resource(
        who, group, projection=scim.Projection(exclude=frozenset({"members"}))
    )
    return (201 if method == "POST" else 200), body, body["meta"]["location"]


# --- everything else under /scim/v2 ---------------------------------------------------------------
@bp.get("/Me")
def me():
    # RFC 7644 §3.11: a token is an IdP, not a user; there is no "me".
    raise ScimError(501, "/Me is not supported: SCIM tokens act for an account, not a user")


@bp.route("/", defaults={"rest": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@bp.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(rest: str):
    """Unknown paths answer 404 and known paths with another method 405, as SCIM errors."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        if method == request.method:
            continue
        try:
            endpoint, _ = adapter.match(request.path, method=method)
        except (RoutingNotFound, MethodNotAllowed, HTTPException):
            continue
        if endpoint != "scim.unknown":
            allowed.append(method)
    if allowed:
        response = error_response(ScimError(405, f"{request.method} is not supported here"))
        response.headers["Allow"] = ", ".join(allowed)
        return response
    raise ScimError(404, "There is no SCIM endpoint at this path")
