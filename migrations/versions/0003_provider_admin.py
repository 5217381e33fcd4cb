"""Provider self-service: scheme aliases, role mappings and their claim, SCIM tokens.

Revision ID: 0003_provider_admin
Revises: 0002_sso_providers
Create Date: 2026-11-29 10:12:03.118402

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0003_provider_admin"
down_revision = "0002_sso_providers"
branch_labels = None
depends_on = None


def upgrade():
    # Plain ADD COLUMNs (nullable, no constraint): SQLite runs them in place. A batch
    # "move and copy" of sso_providers would drop the old table, which with foreign keys on
    # cascades into external_logins and deletes every login.
    op.add_column("sso_providers", sa.Column("role_claim", sa.String(length=100), nullable=True))
    op.add_column(
        "sso_providers", sa.Column("role_mapping_default", sa.String(length=16), nullable=True)
    )

    op.create_table(
        "provider_scheme_aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.Uuid(), nullable=False),
        sa.Column("scheme", sa.String(length=64), nullable=False),
        sa.Column("scheme_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["sso_providers.id"],
            name=op.f("fk_provider_scheme_aliases_provider_id_sso_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_scheme_aliases")),
        sa.UniqueConstraint("scheme_key", name=op.f("uq_provider_scheme_aliases_scheme_key")),
    )
    op.create_index(
        op.f("ix_provider_scheme_aliases_provider_id"),
        "provider_scheme_aliases",
        ["provider_id"],
        unique=False,
    )

    op.create_table(
        "provider_role_mappings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.Uuid(), nullable=False),
        sa.Column("claim_value", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.CheckConstraint(
            "role IN ('owner', 'admin', 'member')",
            name=op.f("ck_provider_role_mappings_role_known"),
        ),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["sso_providers.id"],
            name=op.f("fk_provider_role_mappings_provider_id_sso_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_role_mappings")),
        sa.UniqueConstraint(
            "provider_id", "claim_value", name="uq_provider_role_mappings_provider_claim"
        ),
    )

    op.create_table(
        "scim_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by_id", sa.Uuid(), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_scim_tokens_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_scim_tokens_created_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["sso_providers.id"],
            name=op.f("fk_scim_tokens_provider_id_sso_providers"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scim_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_scim_tokens_token_hash")),
    )
    op.create_index(op.f("ix_scim_tokens_account_id"), "scim_tokens", ["account_id"], unique=False)
    op.create_index(
        op.f("ix_scim_tokens_provider_id"), "scim_tokens", ["provider_id"], unique=False
    )


def downgrade():
    op.drop_index(op.f("ix_scim_tokens_provider_id"), table_name="scim_tokens")
    op.drop_index(op.f("ix_scim_tokens_account_id"), table_name="scim_tokens")
    op.drop_table("scim_tokens")
    op.drop_table("provider_role_mappings")
    op.drop_index(
        op.f("ix_provider_scheme_aliases_provider_id"), table_name="provider_scheme_aliases"
    )
    op.drop_table("provider_scheme_aliases")
    # SQLite >= 3.35 drops a column in place (no table rebuild, see upgrade()).
    op.drop_column("sso_providers", "role_mapping_default")
    op.drop_column("sso_providers", "role_claim")
