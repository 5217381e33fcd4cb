"""Session: the server-side record behind the session cookie (revocable on every process)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING
from typing import Any

from sqlalchemy import JSON
from sqlalchemy import ForeignKey
from sqlalchemy import String
from sqlalchemy import Text
from sqlalchemy import Uuid
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship

from app.models.base import Base
from app.models.base import UTCDateTime
from app.models.base import utcnow

if TYPE_CHECKING:
    from app.models.user import User


class Session(Base):
    """One browser session. Anonymous until a sign-in binds it to a user.

    The cookie holds a random token; only its SHA-256 is stored, so a copy of the database
    does not hand out live sessions.
    """

    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    # Session payload (CSRF token, flashed messages, next URL, flow state).
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    authenticated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # How the user signed in: "password" or, for federated sessions, the provider's protocol.
    auth_method: Mapped[str | None] = mapped_column(String(32))
    # Federated sessions: the provider, the IdP's session id (``sid``, used by front- and
    # back-channel logout) and subject, and the ID token for id_token_hint (encrypted).
    provider_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("sso_providers.id", ondelete="SET NULL"), index=True
    )
    idp_sid: Mapped[str | None] = mapped_column(String(255), index=True)
    idp_subject: Mapped[str | None] = mapped_column(String(255))
    id_token_encrypted: Mapped[str | None] = mapped_column(Text)
    ip_address: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_reason: Mapped[str | None] = mapped_column(String(32))

    user: Mapped[User | None] = relationship()

    @property
    def is_authenticated(self) -> bool:
        return self.user_id is not None
