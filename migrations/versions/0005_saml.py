"""SAML 2.0 providers: SAML settings on sso_providers, IdP signing certificates, and the
assertion replay cache (for deployments without Redis).

Revision ID: 0005_saml
Revises: 0004_scim
Create Date: 2026-12-08 14:02:51.220913

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0005_saml"
down_revision = "0004_scim"
branch_labels = None
depends_on = None

# (name, type) of the nullable SAML columns of sso_providers, in model order.
_NULLABLE_COLUMNS = (
    ("saml_idp_entity_id", sa.String(length=1024)),
    ("saml_sso_url", sa.String(length=2048)),
    ("saml_slo_url", sa.String(length=2048)),
    ("saml_metadata_url", sa.String(length=2048)),
    ("saml_metadata_xml", sa.Text()),
    ("saml_nameid_format", sa.String(length=255)),
    ("saml_sp_key_encrypted", sa.Text()),
    ("saml_sp_cert", sa.Text()),
    ("saml_email_attribute", sa.String(length=255)),
    ("saml_given_name_attribute", sa.String(length=255)),
    ("saml_family_name_attribute", sa.String(length=255)),
    ("saml_name_attribute", sa.String(length=255)),
)


def upgrade():
    # Plain ADD COLUMNs only (see 0003): a SQLite batch rebuild of sso_providers would drop
    # the table and, with foreign keys on, cascade into external logins and sessions. The
    # NOT NULL columns therefore carry server defaults, and saml_signed has no CHECK
    # constraint (services.providers validates it).
    for name, type_ in _NULLABLE_COLUMNS:
        op.add_column("sso_providers", sa.Column(name, type_, nullable=True))
    op.add_column(
        "sso_providers",
        sa.Column("saml_signed", sa.String(length=16), server_default="assertion", nullable=False),
    )
    op.add_column(
        "sso_providers",
        sa.Column(
            "saml_allow_idp_initiated", sa.Boolean(), server_default=sa.false(), nullable=False
        ),
    )
    op.add_column(
        "sso_providers",
        sa.Column("saml_sign_requests", sa.Boolean(), server_default=sa.false(), nullable=False),
    )

    op.create_table(
        "provider_certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.Uuid(), nullable=False),
        sa.Column("pem", sa.Text(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("use", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["sso_providers.id"],
            name=op.f("fk_provider_certificates_provider_id_sso_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_certificates")),
        sa.UniqueConstraint(
            "provider_id",
            "fingerprint_sha256",
            name="uq_provider_certificates_provider_fingerprint",
        ),
    )
    op.create_index(
        op.f("ix_provider_certificates_provider_id"),
        "provider_certificates",
        ["provider_id"],
        unique=False,
    )

    op.create_table(
        "saml_assertion_ids",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("assertion_id_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saml_assertion_ids")),
        sa.UniqueConstraint(
            "assertion_id_hash", name=op.f("uq_saml_assertion_ids_assertion_id_hash")
        ),
    )
    op.create_index(
        op.f("ix_saml_assertion_ids_expires_at"),
        "saml_assertion_ids",
        ["expires_at"],
        unique=False,
    )


def downgrade():
    op.drop_index(op.f("ix_saml_assertion_ids_expires_at"), table_name="saml_assertion_ids")
    op.drop_table("saml_assertion_ids")
    op.drop_index(op.f("ix_provider_certificates_provider_id"), table_name="provider_certificates")
    op.drop_table("provider_certificates")
    # SQLite >= 3.35 drops a column in place (no table rebuild, see upgrade()).
    for name in ("saml_sign_requests", "saml_allow_idp_initiated", "saml_signed"):
        op.drop_column("sso_providers", name)
    for name, _type in reversed(_NULLABLE_COLUMNS):
        op.drop_column("sso_providers", name)
