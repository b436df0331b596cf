"""OAuth states may reconnect a credential: the flow started from a credential that needs
reconnecting replaces that credential's tokens instead of making a new one.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 19:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("oauth_states", sa.Column("credential_id", sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("oauth_states") as batch:
        batch.drop_column("credential_id")
