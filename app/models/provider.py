"""SsoProvider (an identity provider configuration), its scheme aliases, role mappings and SAML
signing certificates, ProviderMetadata (last good copy) and the SAML assertion replay cache."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from datetime import timedelta
from typing import TYPE_CHECKING
from typing import Any

from sqlalchemy import JSON
from sqlalchemy import Boolean
from sqlalchemy import CheckConstraint
from sqlalchemy import ForeignKey
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import Text
from sqlalchemy import UniqueConstraint
from sqlalchemy import Uuid
from sqlalchemy import false
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship

from app.models.base import Base
from app.models.base import UTCDateTime
from app.models.base import utcnow

if TYPE_CHECKING:
    from app.models.account import Account


class Protocol(enum.StrEnum):
    OIDC = "oidc"
    OAUTH2 = "oauth2"
    SAML = "saml"


class SamlSigned(enum.StrEnum):
    """What a SAML provider must sign: the assertion, the whole response, or both."""

    ASSERTION = "assertion"
    RESPONSE = "response"
    BOTH = "both"


class ResponseType(enum.StrEnum):
    CODE = "code"
    ID_TOKEN = "id_token"  # noqa: S105 - a response type, not a password
    CODE_ID_TOKEN = "code id_token"  # noqa: S105 - a response type, not a password


class SsoProvider(Base):
    """One identity provider. ``account_id`` is None for the built-in Google and Microsoft."""

    __tablename__ = "sso_providers"
    __table_args__ = (
        CheckConstraint("protocol IN ('oidc', 'oauth2', 'saml')", name="protocol_known"),
        CheckConstraint(
            "response_type IN ('code', 'id_token', 'code id_token')", name="response_type_known"
        ),
        CheckConstraint("default_role IN ('owner', 'admin', 'member')", name="default_role_known"),
    )

    # The GUID admins copy into /sso/<guid> links.
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    # "google" or "microsoft" for the built-in providers, else None.
    builtin: Mapped[str | None] = mapped_column(String(16), unique=True)
    protocol: Mapped[str] = mapped_column(String(16), default=Protocol.OIDC.value)
    display_name: Mapped[str] = mapped_column(String(100))
    scheme: Mapped[str] = mapped_column(String(64))
    # Lower-cased scheme: schemes are compared case-insensitively (/signin-AcmeSSO is
    # /signin-acmesso), and this column carries the unique index on every database.
    scheme_key: Mapped[str] = mapped_column(String(64), unique=True)
    authority: Mapped[str | None] = mapped_column(String(2048))
    client_id: Mapped[str | None] = mapped_column(String(255))
    # MultiFernet ciphertext (services.crypto); never rendered, logged or exported.
    client_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    response_type: Mapped[str] = mapped_column(String(32), default=ResponseType.CODE.value)
    # Requested on top of "openid profile email" (space separated).
    additional_scopes: Mapped[str] = mapped_column(String(1024), default="")
    authorization_expression: Mapped[str | None] = mapped_column(Text)
    icon_url: Mapped[str | None] = mapped_column(String(2048))
    remote_signout_path: Mapped[str | None] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    visible: Mapped[bool] = mapped_column(Boolean, default=True)
    jit_provisioning: Mapped[bool] = mapped_column(Boolean, default=False)
    default_role: Mapped[str] = mapped_column(String(16), default="member")
    # The IdP guarantees the email it sends is verified (e.g. a corporate directory), so
    # linking by email is safe even without an email_verified claim.
    trust_email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    # Claim matched against a SCIM user's externalId (Entra ID: "oid"); None means "sub".
    external_id_claim: Mapped[str | None] = mapped_column(String(100))
    # HS256 ID tokens (signed with the client secret) are refused unless this is on.
    allow_hs256: Mapped[bool] = mapped_column(Boolean, default=False)
    # Plain OAuth 2.0: endpoints and the userinfo field names of subject and profile.
    authorization_endpoint: Mapped[str | None] = mapped_column(String(2048))
    token_endpoint: Mapped[str | None] = mapped_column(String(2048))
    userinfo_endpoint: Mapped[str | None] = mapped_column(String(2048))
    subject_field: Mapped[str] = mapped_column(String(100), default="sub")
    email_field: Mapped[str] = mapped_column(String(100), default="email")
    name_field: Mapped[str] = mapped_column(String(100), default="name")
    # Role mapping: the claim (OIDC) or attribute (SAML) whose values pick the member's role
    # at each sign-in, e.g. "groups"; None turns mapping off. ``role_mapping_default`` is the
    # role given when the claim is configured but no row matches (None: leave it as it is).
    # No CHECK constraint on it: adding one would rebuild this table on SQLite, which with
    # foreign keys on deletes every external login (services.providers validates it).
    role_claim: Mapped[str | None] = mapped_column(String(100))
    role_mapping_default: Mapped[str | None] = mapped_column(String(16))
    # SAML 2.0 (protocol "saml"); services.saml reads these. New columns only ever come as
    # plain ADD COLUMNs (see migration 0003), hence server defaults and no CHECK constraints:
    # services.providers validates saml_signed.
    saml_idp_entity_id: Mapped[str | None] = mapped_column(String(1024))
    # HTTP-Redirect binding endpoints of the IdP (SAML bindings 3.4).
    saml_sso_url: Mapped[str | None] = mapped_column(String(2048))
    saml_slo_url: Mapped[str | None] = mapped_column(String(2048))
    saml_metadata_url: Mapped[str | None] = mapped_column(String(2048))
    # The last metadata document applied (pasted or fetched), kept for the admin page.
    saml_metadata_xml: Mapped[str | None] = mapped_column(Text)
    saml_signed: Mapped[str] = mapped_column(
        String(16), default=SamlSigned.ASSERTION.value, server_default=SamlSigned.ASSERTION.value
    )
    # Unsolicited responses (no InResponseTo) cannot be tied to this browser: off by default.
    saml_allow_idp_initiated: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # The NameIDPolicy Format asked for; None lets the IdP choose.
    saml_nameid_format: Mapped[str | None] = mapped_column(String(255))
    saml_sign_requests: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The SP key pair for signing AuthnRequests and logout messages: the key is MultiFernet
    # ciphertext (services.crypto), the certificate is public (it goes into SP metadata).
    saml_sp_key_encrypted: Mapped[str | None] = mapped_column(Text)
    saml_sp_cert: Mapped[str | None] = mapped_column(Text)
    # Attribute names to read the profile from; None means the built-in list
    # (services.saml.DEFAULT_ATTRIBUTES, which fits Entra ID, Okta and Google).
    saml_email_attribute: Mapped[str | None] = mapped_column(String(255))
    saml_given_name_attribute: Mapped[str | None] = mapped_column(String(255))
    saml_family_name_attribute: Mapped[str | None] = mapped_column(String(255))
    saml_name_attribute: Mapped[str | None] = mapped_column(String(255))
    # Bumped on every change: caches and clients are keyed by (id, version).
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    account: Mapped[Account | None] = relationship()
    metadata_record: Mapped[ProviderMetadata | None] = relationship(
        back_populates="provider", cascade="all, delete-orphan", uselist=False
    )
    scheme_aliases: Mapped[list[ProviderSchemeAlias]] = relationship(
        back_populates="provider",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ProviderSchemeAlias.id",
    )
    role_mappings: Mapped[list[ProviderRoleMapping]] = relationship(
        back_populates="provider",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ProviderRoleMapping.id",
    )
    certificates: Mapped[list[ProviderCertificate]] = relationship(
        back_populates="provider",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ProviderCertificate.id",
    )

    @property
    def scopes(self) -> list[str]:
        """openid profile email (OIDC) plus the additional scopes, without duplicates."""
        base = ["openid", "profile", "email"] if self.protocol == Protocol.OIDC else []
        extra = [s for s in (self.additional_scopes or "").split() if s not in base]
        return base + extra

    def __repr__(self) -> str:
        return f"<SsoProvider {self.id} {self.scheme!r}>"


class ProviderSchemeAlias(Base):
    """A provider's former scheme, kept for a grace period after a rename.

    IdPs keep sending users to the redirect URI they have registered, so /signin-<old>
    must keep working until the admin has updated it at the IdP."""

    __tablename__ = "provider_scheme_aliases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sso_providers.id", ondelete="CASCADE"), index=True
    )
    # The old scheme as it was spelt, and lower-cased for the case-insensitive unique index.
    scheme: Mapped[str] = mapped_column(String(64))
    scheme_key: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    provider: Mapped[SsoProvider] = relationship(back_populates="scheme_aliases")

    def __repr__(self) -> str:
        return f"<ProviderSchemeAlias {self.scheme!r} -> {self.provider_id}>"


class ProviderRoleMapping(Base):
    """One claim value (e.g. a group name) and the account role it gives at sign-in."""

    __tablename__ = "provider_role_mappings"
    __table_args__ = (
        UniqueConstraint(
            "provider_id", "claim_value", name="uq_provider_role_mappings_provider_claim"
        ),
        CheckConstraint("role IN ('owner', 'admin', 'member')", name="role_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sso_providers.id", ondelete="CASCADE")
    )
    # Compared exactly (case-sensitive): group names and ids are opaque to us.
    claim_value: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))

    provider: Mapped[SsoProvider] = relationship(back_populates="role_mappings")


# The admin page warns this long before a signing certificate expires.
CERT_EXPIRY_WARNING = timedelta(days=30)


class ProviderMetadata(Base):
    """The last good discovery document and JWKS of a provider, and its fetch health.

    The durable copy behind the Redis cache: sign-ins keep working from it when the IdP is
    down (stale-if-error)."""

    __tablename__ = "provider_metadata"

    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sso_providers.id", ondelete="CASCADE"), primary_key=True
    )
    discovery: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    jwks_fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(500))
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    key_ids: Mapped[list[str] | None] = mapped_column(JSON)
    # Earliest not-after of the signing certificates (OIDC: x5c in the JWKS; SAML: metadata).
    cert_expiry: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When beat next refreshes this provider: the IdP's max-age (within the configured
    # bounds) after a success, the backoff after a failure; None means at the next sweep.
    next_refresh_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # Failed refreshes in a row; drives the exponential backoff, back to 0 after a success.
    failure_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    provider: Mapped[SsoProvider] = relationship(back_populates="metadata_record")

    @property
    def cert_expiry_status(self) -> str | None:
        """``expired``, ``soon`` (within CERT_EXPIRY_WARNING) or ``ok``; None without a
        certificate. The admin page warns before the IdP's certificate runs out."""
        if self.cert_expiry is None:
            return None
        now = utcnow()
        if self.cert_expiry <= now:
            return "expired"
        return "soon" if self.cert_expiry - now <= CERT_EXPIRY_WARNING else "ok"


class ProviderCertificate(Base):
    """An IdP signing certificate (PEM). Several may be active at once: IdPs publish the next
    certificate before they switch to it (rollover), and either must verify meanwhile."""

    __tablename__ = "provider_certificates"
    __table_args__ = (
        UniqueConstraint(
            "provider_id",
            "fingerprint_sha256",
            name="uq_provider_certificates_provider_fingerprint",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sso_providers.id", ondelete="CASCADE"), index=True
    )
    pem: Mapped[str] = mapped_column(Text)
    # Hex SHA-256 of the DER certificate: identifies it on the admin page and in the audit log.
    fingerprint_sha256: Mapped[str] = mapped_column(String(64))
    # Shown to the admin and reported as health; an expired certificate is not refused by
    # SAML (metadata is the trust anchor), but the admin must know before the IdP rolls over.
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    use: Mapped[str] = mapped_column(String(16), default="signing")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    provider: Mapped[SsoProvider] = relationship(back_populates="certificates")

    def __repr__(self) -> str:
        return f"<ProviderCertificate {self.fingerprint_sha256[:16]} of {self.provider_id}>"


class SamlAssertionId(Base):
    """A SAML assertion already used, kept until it expires: a second use is a replay.

    The replay cache when there is no Redis (REDIS_URL unset). Only a hash is kept: the unique
    index makes a concurrent second insert fail on every database."""

    __tablename__ = "saml_assertion_ids"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # SHA-256 (hex) of provider id + assertion ID.
    assertion_id_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
