"""Indexes for the activity stream's filters and the unread notifications

The web app lists a user's runs by status (`ix_runs_user_id_status_seq`: newest first within a
status) and by creation time (`ix_runs_user_id_create_time`: a day's runs without reading the
user's others), and counts and lists their unread notifications
(`ix_notifications_user_id_read_time`: read_time IS NULL). On PostgreSQL an index made on the
partitioned `runs` is made on each of its partitions, and on those made later.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 15:00:00
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

INDEXES = [
    ("ix_runs_user_id_status_seq", "runs", ["user_id", "status", "seq"]),
    ("ix_runs_user_id_create_time", "runs", ["user_id", "create_time"]),
    ("ix_notifications_user_id_read_time", "notifications", ["user_id", "read_time"]),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
