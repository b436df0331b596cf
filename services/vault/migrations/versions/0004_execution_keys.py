"""execution keys: per-user owner keys, per-category day keys and their destruction horizon

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 19:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "owner_keys",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("kek_version", sa.String(length=32), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_owner_keys")),
    )
    op.create_index(op.f("ix_owner_keys_kek_version"), "owner_keys", ["kek_version"])
    op.create_table(
        "epoch_keys",
        sa.Column("participant", sa.String(length=32), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("kek_version", sa.String(length=32), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("participant", "category", "day", name=op.f("pk_epoch_keys")),
    )
    op.create_index(op.f("ix_epoch_keys_kek_version"), "epoch_keys", ["kek_version"])
    op.create_table(
        "epoch_horizons",
        sa.Column("participant", sa.String(length=32), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("destroyed_before", sa.String(length=10), nullable=True),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("participant", "category", name=op.f("pk_epoch_horizons")),
    )


def downgrade() -> None:
    op.drop_table("epoch_horizons")
    op.drop_index(op.f("ix_epoch_keys_kek_version"), table_name="epoch_keys")
    op.drop_table("epoch_keys")
    op.drop_index(op.f("ix_owner_keys_kek_version"), table_name="owner_keys")
    op.drop_table("owner_keys")
