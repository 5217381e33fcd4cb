"""ExternalLogin: a user's identity at one provider (provider x subject)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import UniqueConstraint
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship

from app.models.base import Base
from app.models.base import UTCDateTime
from app.models.base import utcnow

if TYPE_CHECKING:
    from app.models.provider import SsoProvider
    from app.models.user import User


class ExternalLogin(Base):
    """Keyed by the provider's GUID, not its scheme: renaming a scheme keeps every login."""

    __tablename__ = "external_logins"
    __table_args__ = (
        # The first step of the sign-in resolution order, and one identity per user.
        UniqueConstraint("provider_id", "subject", name="uq_external_logins_provider_subject"),
        UniqueConstraint("user_id", "provider_id", name="uq_external_logins_user_provider"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sso_providers.id", ondelete="CASCADE"), index=True
    )
    subject: Mapped[str] = mapped_column(String(255))
    # The identity's email at link time: a hint shown to the user, never used to sign in.
    email: Mapped[str | None] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()
    provider: Mapped[SsoProvider] = relationship()
