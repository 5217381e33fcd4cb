"""Sessions and users: room for in-place (HOT) updates; drop the unused revoked_at index.

Revision ID: 0008_session_hot_updates
Revises: 0007_jobs

Ending a session writes revoked_at and revoked_reason; every request of a live session moves
last_seen_at; SCIM and deprovisioning flip users' active flag and version. On PostgreSQL such
an update can stay on its page without touching any index (a heap-only tuple) only when none
of the changed columns is indexed and the page has free space. The index on
sessions.revoked_at served no query (the purge's OR over several columns is a scan either
way) and forced every revocation to insert into all six session indexes; the fill factors
leave the free space. SQLite has neither notion: there only the index goes.
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0008_session_hot_updates"
down_revision = "0007_jobs"
branch_labels = None
depends_on = None

SESSIONS_FILLFACTOR = 80
USERS_FILLFACTOR = 90


def upgrade():
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_revoked_at"))
    if op.get_bind().dialect.name == "postgresql":
        # Applies to pages written from now on; existing pages fill up as rows churn.
        op.execute(f"ALTER TABLE sessions SET (fillfactor = {SESSIONS_FILLFACTOR})")
        op.execute(f"ALTER TABLE users SET (fillfactor = {USERS_FILLFACTOR})")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE users RESET (fillfactor)")
        op.execute("ALTER TABLE sessions RESET (fillfactor)")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sessions_revoked_at"), ["revoked_at"], unique=False)
