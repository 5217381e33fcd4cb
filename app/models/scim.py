"""ScimToken (a bearer token an identity provider uses to call an account's SCIM API), and the
SCIM groups of an account (Group, GroupMember)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import Uuid
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship

from app.models.base import Base
from app.models.base import UTCDateTime
from app.models.base import utcnow

if TYPE_CHECKING:
    from app.models.account import Account
    from app.models.provider import SsoProvider
    from app.models.user import User


class ScimToken(Base):
    """Only the SHA-256 of the token is stored: a copy of the database grants no SCIM access."""

    __tablename__ = "scim_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    # The provider whose users this token provisions. RESTRICT: a linked provider cannot be
    # deleted (its users would be orphaned while the IdP keeps provisioning them).
    provider_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("sso_providers.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    account: Mapped[Account] = relationship()
    provider: Mapped[SsoProvider | None] = relationship()
    created_by: Mapped[User | None] = relationship()

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def __repr__(self) -> str:
        return f"<ScimToken {self.id} {self.name!r}>"


class Group(Base):
    """A SCIM group of one account. Members are users of that account (GroupMember)."""

    __tablename__ = "groups"
    __table_args__ = (
        # Entra ID and Okta look groups up by displayName before creating them.
        Index("ix_groups_account_id_display_name", "account_id", "display_name"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    display_name: Mapped[str] = mapped_column(String(255))
    external_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Bumped on every change (members included): the SCIM ETag is W/"<version>".
    version: Mapped[int] = mapped_column(Integer, default=1)

    account: Mapped[Account] = relationship()

    def __repr__(self) -> str:
        return f"<Group {self.id} {self.display_name!r}>"


class GroupMember(Base):
    """One user in one group. Written set-based (services.scim): a membership PATCH of a
    thousand members is one INSERT, not a thousand ORM objects."""

    __tablename__ = "group_members"

    group_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
