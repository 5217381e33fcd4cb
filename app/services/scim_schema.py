"""The SCIM schemas Keyward serves (RFC 7643 §4, §8.7): attribute definitions used to read,
validate and project resources, and the discovery documents built from them."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Any

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SEARCH_REQUEST = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SPC_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"

# RFC 7643 §2.4: the canonical "type" values of the multi-valued attributes we list.
_CONTACT_TYPES = ("work", "home", "other")


@dataclass(frozen=True)
class Attribute:
    """One attribute definition (RFC 7643 §7): what the Schemas endpoint publishes and what
    services.scim checks incoming values against."""

    name: str
    type: str = "string"
    multi_valued: bool = False
    sub_attributes: tuple[Attribute, ...] = ()
    mutability: str = "readWrite"
    returned: str = "default"
    uniqueness: str = "none"
    case_exact: bool = False
    required: bool = False
    canonical_values: tuple[str, ...] = ()
    reference_types: tuple[str, ...] = ()
    description: str = ""
    _by_key: dict[str, Attribute] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for sub in self.sub_attributes:
            self._by_key[sub.name.lower()] = sub

    def sub(self, name: str) -> Attribute | None:
        return self._by_key.get(name.lower())

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "multiValued": self.multi_valued,
            "description": self.description or self.name,
            "required": self.required,
            "caseExact": self.case_exact,
            "mutability": self.mutability,
            "returned": self.returned,
            "uniqueness": self.uniqueness,
        }
        if self.canonical_values:
            data["canonicalValues"] = list(self.canonical_values)
        if self.reference_types:
            data["referenceTypes"] = list(self.reference_types)
        if self.sub_attributes:
            data["subAttributes"] = [sub.to_json() for sub in self.sub_attributes]
        return data


def _multi(name: str, value_type: str = "string", *, types=_CONTACT_TYPES, refs=()) -> Attribute:
    """A multi-valued complex attribute with value, display, type and primary."""
    return Attribute(
        name,
        "complex",
        multi_valued=True,
        sub_attributes=(
            Attribute("value", value_type, reference_types=refs),
            Attribute("display"),
            Attribute("type", canonical_values=types),
            Attribute("primary", "boolean"),
        ),
    )


@dataclass(frozen=True)
class Schema:
    id: str
    name: str
    description: str
    attributes: tuple[Attribute, ...]
    _by_key: dict[str, Attribute] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for attribute in self.attributes:
            self._by_key[attribute.name.lower()] = attribute

    def attribute(self, name: str) -> Attribute | None:
        return self._by_key.get(name.lower())

    def to_json(self, location: str) -> dict[str, Any]:
        return {
            "schemas": [SCHEMA_SCHEMA],
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "attributes": [a.to_json() for a in self.attributes],
            "meta": {"resourceType": "Schema", "location": location},
        }


# Common attributes (RFC 7643 §3.1): not part of any schema's "attributes".
ID = Attribute("id", mutability="readOnly", returned="always", uniqueness="server", case_exact=True)
EXTERNAL_ID = Attribute("externalId", case_exact=True)
META = Attribute(
    "meta",
    "complex",
    mutability="readOnly",
    sub_attributes=(
        Attribute("resourceType", mutability="readOnly", case_exact=True),
        Attribute("created", "dateTime", mutability="readOnly"),
        Attribute("lastModified", "dateTime", mutability="readOnly"),
        Attribute("location", "reference", mutability="readOnly", reference_types=("uri",)),
        Attribute("version", mutability="readOnly", case_exact=True),
    ),
)
SCHEMAS = Attribute("schemas", "reference", multi_valued=True, case_exact=True)
COMMON = {a.name.lower(): a for a in (ID, EXTERNAL_ID, META, SCHEMAS)}

USER = Schema(
    USER_SCHEMA,
    "User",
    "User Account",
    (
        Attribute(
            "userName",
            required=True,
            uniqueness="server",
            description="Unique identifier for the User, used to sign in.",
        ),
        Attribute(
            "name",
            "complex",
            sub_attributes=(
                Attribute("formatted"),
                Attribute("familyName"),
                Attribute("givenName"),
                Attribute("middleName"),
                Attribute("honorificPrefix"),
                Attribute("honorificSuffix"),
            ),
        ),
        Attribute("displayName"),
        Attribute("nickName"),
        Attribute("profileUrl", "reference", reference_types=("external",)),
        Attribute("title"),
        Attribute("userType"),
        Attribute("preferredLanguage"),
        Attribute("locale"),
        Attribute("timezone"),
        Attribute("active", "boolean"),
        Attribute("password", mutability="writeOnly", returned="never"),
        _multi("emails"),
        _multi("phoneNumbers", types=("work", "home", "mobile", "fax", "pager", "other")),
        _multi("ims", types=("aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo")),
        _multi("photos", "reference", types=("photo", "thumbnail"), refs=("external",)),
        Attribute(
            "addresses",
            "complex",
            multi_valued=True,
            sub_attributes=(
                Attribute("formatted"),
                Attribute("streetAddress"),
                Attribute("locality"),
                Attribute("region"),
                Attribute("postalCode"),
                Attribute("country"),
                Attribute("type", canonical_values=_CONTACT_TYPES),
                Attribute("primary", "boolean"),
            ),
        ),
        Attribute(
            "groups",
            "complex",
            multi_valued=True,
            mutability="readOnly",
            sub_attributes=(
                Attribute("value", mutability="readOnly"),
                Attribute("$ref", "reference", mutability="readOnly", reference_types=("Group",)),
                Attribute("display", mutability="readOnly"),
                Attribute("type", mutability="readOnly", canonical_values=("direct",)),
            ),
        ),
        _multi("entitlements", types=()),
        _multi("roles", types=()),
        _multi("x509Certificates", "binary", types=()),
    ),
)

ENTERPRISE_USER = Schema(
    ENTERPRISE_SCHEMA,
    "EnterpriseUser",
    "Enterprise User",
    (
        Attribute("employeeNumber"),
        Attribute("costCenter"),
        Attribute("organization"),
        Attribute("division"),
        Attribute("department"),
        Attribute(
            "manager",
            "complex",
            sub_attributes=(
                Attribute("value"),
                Attribute("$ref", "reference", reference_types=("User",)),
                Attribute("displayName", mutability="readOnly"),
            ),
        ),
    ),
)

GROUP = Schema(
    GROUP_SCHEMA,
    "Group",
    "Group",
    (
        Attribute("displayName", required=True),
        Attribute(
            "members",
            "complex",
            multi_valued=True,
            sub_attributes=(
                Attribute("value", mutability="immutable", case_exact=True),
                Attribute("$ref", "reference", mutability="immutable", reference_types=("User",)),
                Attribute("type", mutability="immutable", canonical_values=("User",)),
                Attribute("display", mutability="readOnly"),
            ),
        ),
    ),
)

SCHEMAS_BY_ID = {s.id.lower(): s for s in (USER, ENTERPRISE_USER, GROUP)}


@dataclass(frozen=True)
class ResourceType:
    name: str
    endpoint: str
    schema: Schema
    extensions: tuple[Schema, ...] = ()

    def schema_for(self, urn: str | None) -> Schema | None:
        """The core schema (``urn`` None or the core URN) or one of the extensions."""
        if urn is None or urn.lower() == self.schema.id.lower():
            return self.schema
        for extension in self.extensions:
            if urn.lower() == extension.id.lower():
                return extension
        return None

    def to_json(self, location: str) -> dict[str, Any]:
        return {
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": self.name,
            "name": self.name,
            "endpoint": self.endpoint,
            "description": self.schema.description,
            "schema": self.schema.id,
            "schemaExtensions": [{"schema": e.id, "required": False} for e in self.extensions],
            "meta": {"resourceType": "ResourceType", "location": location},
        }


USER_TYPE = ResourceType("User", "/Users", USER, (ENTERPRISE_USER,))
GROUP_TYPE = ResourceType("Group", "/Groups", GROUP)
RESOURCE_TYPES = {"User": USER_TYPE, "Group": GROUP_TYPE}


def service_provider_config(
    *, location: str, max_results: int, bulk_max_operations: int, bulk_max_payload: int
) -> dict[str, Any]:
    """RFC 7643 §5, with the limits the blueprint enforces."""
    return {
        "schemas": [SPC_SCHEMA],
        "documentationUri": "https://datatracker.ietf.org/doc/html/rfc7644",
        "patch": {"supported": True},
        "bulk": {
            "supported": True,
            "maxOperations": bulk_max_operations,
            "maxPayloadSize": bulk_max_payload,
        },
        "filter": {"supported": True, "maxResults": max_results},
        "changePassword": {"supported": True},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "A SCIM token issued on the account's SCIM tokens page, sent as "
                "'Authorization: Bearer <token>'.",
                "specUri": "https://www.rfc-editor.org/info/rfc6750",
                "primary": True,
            }
        ],
        "meta": {"resourceType": "ServiceProviderConfig", "location": location},
    }
