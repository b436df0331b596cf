"""signed webhooks remembered for their replay window; the webhooks log lists what it redacted

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 09:45:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_signatures",
        sa.Column("connection_id", sa.String(length=36), nullable=False),
        sa.Column("signature_sha256", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "connection_id", "signature_sha256", name=op.f("pk_webhook_signatures")
        ),
    )
    with op.batch_alter_table("webhook_signatures") as batch:
        batch.create_index(
            batch.f("ix_webhook_signatures_expire_time"), ["expire_time"], unique=False
        )
    with op.batch_alter_table("webhook_log") as batch:
        batch.add_column(sa.Column("redacted", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_log") as batch:
        batch.drop_column("redacted")
    with op.batch_alter_table("webhook_signatures") as batch:
        batch.drop_index(batch.f("ix_webhook_signatures_expire_time"))
    op.drop_table("webhook_signatures")
