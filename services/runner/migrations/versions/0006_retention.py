"""retention: runs say when their execution details were purged; the purges' indexes

Each purge picks its batches on a time index, so its cost follows the expired rows: runs by
create_time (activity), runs by (details_purge_time, create_time) (execution details still kept),
attempts by start_time. Erasure and export go by user: attempts and failure_mails by user_id.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEXES = [
    ("ix_runs_create_time", "runs", ["create_time"]),
    ("ix_runs_details_purge_time_create_time", "runs", ["details_purge_time", "create_time"]),
    ("ix_attempts_start_time", "attempts", ["start_time"]),
    ("ix_attempts_user_id_seq", "attempts", ["user_id", "seq"]),
    ("ix_failure_mails_user_id", "failure_mails", ["user_id"]),
]


def upgrade() -> None:
    op.add_column(
        "runs", sa.Column("details_purge_time", sa.DateTime(timezone=True), nullable=True)
    )
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("details_purge_time")
