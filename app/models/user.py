"""User: a person who signs in; email unique across Keyward, optional password."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING
from typing import Any

from flask_login import UserMixin
from sqlalchemy import JSON
from sqlalchemy import Boolean
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
    from app.models.account import Membership


class User(UserMixin, Base):
    __tablename__ = "users"
    # A unique index, not a constraint: migration 0004 could only add it that way on SQLite.
    __table_args__ = (Index("uq_users_user_name_key", "user_name_key", unique=True),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # Stored normalised (see services.users.normalise_email), so the unique index is
    # case-insensitive in effect on every database.
    email: Mapped[str] = mapped_column(String(254), unique=True)
    given_name: Mapped[str | None] = mapped_column(String(200))
    family_name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Flask-Login reads is_active; a deactivated user never gets a session.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    external_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # SCIM (services.scim). The account whose SCIM or just-in-time sign-in created the user:
    # only it may change the user's attributes, deactivate or delete them (DESIGN "Accounts,
    # users and SCIM"). No ON DELETE action: SQLite cannot reflect one on a column added by
    # ALTER TABLE (migration 0004), so an account is released from its users before deletion.
    managed_by_account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    # The SCIM userName as the IdP spelt it; None for users created here, whose userName is
    # their email. ``user_name_key`` is the lower-cased userName (or email): userName is
    # case-insensitive and unique across Keyward (RFC 7643 §4.1.1), and this column carries
    # that unique index on every database. Nullable only because SQLite cannot add a NOT NULL
    # column to a table other tables reference without rebuilding it; create_user fills it.
    user_name: Mapped[str | None] = mapped_column(String(254))
    user_name_key: Mapped[str | None] = mapped_column(String(254))
    # Every other SCIM attribute the IdP sent (displayName, emails, phoneNumbers, addresses,
    # the enterprise extension...), canonical names as keys, returned as stored.
    scim_attributes: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Bumped on every SCIM-visible change: the SCIM ETag is W/"<version>".
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )

    @property
    def is_active(self) -> bool:  # Flask-Login
        return bool(self.active)

    @property
    def has_password(self) -> bool:
        return self.password_hash is not None

    @property
    def scim_user_name(self) -> str:
        """The SCIM userName: as provisioned, or the email of a user created here."""
        return self.user_name or self.email

    @property
    def display_name(self) -> str:
        names = " ".join(part for part in (self.given_name, self.family_name) if part)
        return names or self.email

    def __repr__(self) -> str:
        return f"<User {self.id} {self.email!r}>"
