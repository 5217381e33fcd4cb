"""SCIM provisioning: managed users, userName, SCIM attributes and versions, membership
active flag, groups and their members.

Revision ID: 0004_scim
Revises: 0003_provider_admin
Create Date: 2026-12-06 09:41:17.502113

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0004_scim"
down_revision = "0003_provider_admin"
branch_labels = None
depends_on = None


def upgrade():
    # Plain ADD COLUMNs only (see 0003): users and memberships are referenced by other tables'
    # foreign keys, and a SQLite batch rebuild would drop them, cascading into sessions,
    # external logins and memberships. So the foreign key of managed_by_account_id is added
    # with the column (SQLite accepts a REFERENCES clause in ADD COLUMN when its default is
    # NULL), the unique user_name_key is a unique index rather than a table constraint, and
    # user_name_key stays nullable (create_user always fills it).
    if op.get_bind().dialect.name == "sqlite":
        # Alembic would add the foreign key as a separate ALTER, which SQLite lacks; a
        # column constraint inside ADD COLUMN is allowed (its default is NULL). SQLite's
        # reflection loses an ON DELETE clause written there, hence none (on any database).
        op.execute(
            "ALTER TABLE users ADD COLUMN managed_by_account_id INTEGER "
            "CONSTRAINT fk_users_managed_by_account_id_accounts REFERENCES accounts (id)"
        )
    else:
        op.add_column("users", sa.Column("managed_by_account_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            op.f("fk_users_managed_by_account_id_accounts"),
            "users",
            "accounts",
            ["managed_by_account_id"],
            ["id"],
        )
    op.add_column("users", sa.Column("user_name", sa.String(length=254), nullable=True))
    op.add_column("users", sa.Column("user_name_key", sa.String(length=254), nullable=True))
    op.add_column("users", sa.Column("scim_attributes", sa.JSON(), nullable=True))
    op.add_column("users", sa.Column("version", sa.Integer(), server_default="1", nullable=False))
    # Existing users are "created here": their userName is their (already lower-cased) email.
    op.execute("UPDATE users SET user_name_key = email")
    op.create_index(
        op.f("ix_users_managed_by_account_id"), "users", ["managed_by_account_id"], unique=False
    )
    op.create_index(op.f("uq_users_user_name_key"), "users", ["user_name_key"], unique=True)

    op.add_column(
        "memberships",
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
    )

    op.create_table(
        "groups",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_groups_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_groups")),
    )
    op.create_index(op.f("ix_groups_account_id"), "groups", ["account_id"], unique=False)
    op.create_index(
        "ix_groups_account_id_display_name", "groups", ["account_id", "display_name"], unique=False
    )

    op.create_table(
        "group_members",
        sa.Column("group_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_group_members_group_id_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_group_members_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "user_id", name=op.f("pk_group_members")),
    )
    op.create_index(op.f("ix_group_members_user_id"), "group_members", ["user_id"], unique=False)


def downgrade():
    op.drop_index(op.f("ix_group_members_user_id"), table_name="group_members")
    op.drop_table("group_members")
    op.drop_index("ix_groups_account_id_display_name", table_name="groups")
    op.drop_index(op.f("ix_groups_account_id"), table_name="groups")
    op.drop_table("groups")
    # SQLite >= 3.35 drops a column in place (no table rebuild, see upgrade()); a column
    # with a foreign key cannot be dropped that way, so SQLite keeps managed_by_account_id.
    op.drop_column("memberships", "active")
    op.drop_index(op.f("uq_users_user_name_key"), table_name="users")
    op.drop_index(op.f("ix_users_managed_by_account_id"), table_name="users")
    op.drop_column("users", "version")
    op.drop_column("users", "scim_attributes")
    op.drop_column("users", "user_name_key")
    op.drop_column("users", "user_name")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(
            op.f("fk_users_managed_by_account_id_accounts"), "users", type_="foreignkey"
        )
        op.drop_column("users", "managed_by_account_id")
