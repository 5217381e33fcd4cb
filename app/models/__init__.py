"""All models, re-exported so Alembic sees every table."""

from app.models.account import Account
from app.models.account import Membership
from app.models.account import Role
from app.models.audit import AuditEvent
from app.models.session import Session
from app.models.user import User

__all__ = ["Account", "AuditEvent", "Membership", "Role", "Session", "User"]
