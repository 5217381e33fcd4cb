"""Metadata refresh by the workers: when each provider is next due, and its failures in a row.

Revision ID: 0006_metadata_refresh
Revises: 0005_saml
Create Date: 2026-12-09 09:41:17.502311

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0006_metadata_refresh"
down_revision = "0005_saml"
branch_labels = None
depends_on = None


def upgrade():
    # Plain ADD COLUMNs (see 0003): SQLite runs them in place, no batch rebuild. Existing rows
    # get next_refresh_at NULL, which the beat sweep treats as due at once.
    op.add_column(
        "provider_metadata",
        sa.Column("next_refresh_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "provider_metadata",
        sa.Column("failure_count", sa.Integer(), server_default="0", nullable=False),
    )
    op.create_index(
        op.f("ix_provider_metadata_next_refresh_at"),
        "provider_metadata",
        ["next_refresh_at"],
        unique=False,
    )


def downgrade():
    op.drop_index(op.f("ix_provider_metadata_next_refresh_at"), table_name="provider_metadata")
    # SQLite 3.35+ drops a column in place (ALTER TABLE ... DROP COLUMN).
    op.drop_column("provider_metadata", "failure_count")
    op.drop_column("provider_metadata", "next_refresh_at")
