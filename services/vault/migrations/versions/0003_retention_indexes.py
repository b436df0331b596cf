"""retention: OAuth states and leases are purged by their expiry, on an index

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 13:00:00
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_oauth_states_expire_time"), "oauth_states", ["expire_time"])
    op.create_index(op.f("ix_leases_expire_time"), "leases", ["expire_time"])


def downgrade() -> None:
    op.drop_index(op.f("ix_leases_expire_time"), table_name="leases")
    op.drop_index(op.f("ix_oauth_states_expire_time"), table_name="oauth_states")
