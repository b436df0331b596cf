"""retention: time indexes for purges, deletion cancel tokens, revoked sessions end when revoked

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 13:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deletion_cancel_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("use_time", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_deletion_cancel_tokens_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_deletion_cancel_tokens")),
    )
    op.create_index(
        op.f("ix_deletion_cancel_tokens_account_id"), "deletion_cancel_tokens", ["account_id"]
    )
    op.create_index(
        op.f("ix_deletion_cancel_tokens_expire_time"), "deletion_cancel_tokens", ["expire_time"]
    )
    op.create_index(op.f("ix_sessions_expire_time"), "sessions", ["expire_time"])
    op.create_index(op.f("ix_reset_tokens_expire_time"), "reset_tokens", ["expire_time"])
    op.create_index(
        op.f("ix_accounting_records_record_time"), "accounting_records", ["record_time"]
    )
    # A session revoked before this version kept its idle deadline: it ends when it was revoked.
    op.execute(
        "UPDATE sessions SET expire_time = revoke_time "
        "WHERE revoke_time IS NOT NULL AND revoke_time < expire_time"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_accounting_records_record_time"), table_name="accounting_records")
    op.drop_index(op.f("ix_reset_tokens_expire_time"), table_name="reset_tokens")
    op.drop_index(op.f("ix_sessions_expire_time"), table_name="sessions")
    op.drop_index(
        op.f("ix_deletion_cancel_tokens_expire_time"), table_name="deletion_cancel_tokens"
    )
    op.drop_index(op.f("ix_deletion_cancel_tokens_account_id"), table_name="deletion_cancel_tokens")
    op.drop_table("deletion_cancel_tokens")
