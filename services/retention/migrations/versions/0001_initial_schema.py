"""retention: purge ledger, erasure cases, schedule state, leases

Revision ID: 0001
Revises:
Create Date: 2026-12-03 13:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "purge_ledger",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("participant", sa.String(length=64), nullable=False),
        sa.Column("category", sa.String(length=100), nullable=False),
        sa.Column("cutoff", Time, nullable=False),
        sa.Column("rows_deleted", sa.BigInteger(), nullable=False),
        sa.Column("start_time", Time, nullable=False),
        sa.Column("end_time", Time, nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purge_ledger")),
    )
    op.create_index(op.f("ix_purge_ledger_start_time"), "purge_ledger", ["start_time"])
    op.create_index(
        "ix_purge_ledger_participant_category_start",
        "purge_ledger",
        ["participant", "category", "start_time"],
    )
    op.create_table(
        "erasure_cases",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("subject_ref", sa.String(length=64), nullable=False),
        sa.Column("request_time", Time, nullable=False),
        sa.Column("deadline", Time, nullable=False),
        sa.Column("execute_after", Time, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("open_time", Time, nullable=False),
        sa.Column("end_time", Time, nullable=True),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("certificate", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasure_cases")),
        sa.UniqueConstraint("user_id", name=op.f("uq_erasure_cases_user_id")),
    )
    for column in ("subject_ref", "state", "open_time", "end_time"):
        op.create_index(op.f(f"ix_erasure_cases_{column}"), "erasure_cases", [column])
    op.create_table(
        "schedule_state",
        sa.Column("job", sa.String(length=200), nullable=False),
        sa.Column("last_run_time", Time, nullable=False),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_schedule_state")),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expire_time", Time, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )


def downgrade() -> None:
    for table in ("leases", "schedule_state", "erasure_cases", "purge_ledger"):
        op.drop_table(table)
