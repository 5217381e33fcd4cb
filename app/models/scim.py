"""ScimToken: a bearer token an identity provider uses to call an account's SCIM API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey
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
