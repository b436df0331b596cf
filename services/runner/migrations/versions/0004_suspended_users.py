"""users whose account deletion was requested are suspended

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "suspended_users",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("suspend_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_suspended_users")),
    )


def downgrade() -> None:
    op.drop_table("suspended_users")
