"""failure e-mails gathered per connection (at most one per window)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "failure_mails",
        sa.Column("connection_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("last_mail_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pending", sa.Integer(), nullable=False),
        sa.Column("last_message", sa.String(length=1000), nullable=True),
        sa.PrimaryKeyConstraint("connection_id", name=op.f("pk_failure_mails")),
    )
    op.create_index(
        "ix_failure_mails_pending_last_mail_time",
        "failure_mails",
        ["pending", "last_mail_time"],
    )


def downgrade() -> None:
    op.drop_index("ix_failure_mails_pending_last_mail_time", table_name="failure_mails")
    op.drop_table("failure_mails")
