"""All models, re-exported so Alembic sees every table."""

from app.models.account import Account
from app.models.account import Membership
from app.models.account import Role
from app.models.audit import AuditEvent
from app.models.external_login import ExternalLogin
from app.models.job import ItemState
from app.models.job import Job
from app.models.job import JobItem
from app.models.job import JobStatus
from app.models.provider import Protocol
from app.models.provider import ProviderCertificate
from app.models.provider import ProviderMetadata
from app.models.provider import ProviderRoleMapping
from app.models.provider import ProviderSchemeAlias
from app.models.provider import ResponseType
from app.models.provider import SamlAssertionId
from app.models.provider import SamlSigned
from app.models.provider import SsoProvider
from app.models.scim import Group
from app.models.scim import GroupMember
from app.models.scim import ScimToken
from app.models.session import Session
from app.models.user import User

__all__ = [
    "Account",
    "AuditEvent",
    "ExternalLogin",
    "Group",
    "GroupMember",
    "ItemState",
    "Job",
    "JobItem",
    "JobStatus",
    "Membership",
    "Protocol",
    "ProviderCertificate",
    "ProviderMetadata",
    "ProviderRoleMapping",
    "ProviderSchemeAlias",
    "ResponseType",
    "Role",
    "SamlAssertionId",
    "SamlSigned",
    "ScimToken",
    "Session",
    "SsoProvider",
    "User",
]
