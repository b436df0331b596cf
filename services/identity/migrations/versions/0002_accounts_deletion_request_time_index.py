"""accounts are listed by deletion request time (ListDeletionRequests)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 09:40:00
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_accounts_deletion_request_time", "accounts", ["deletion_request_time"])


def downgrade() -> None:
    op.drop_index("ix_accounts_deletion_request_time", table_name="accounts")
