"""PostgreSQL: runs, attempts and webhook_log range-partitioned by UTC day (SQLite: nothing)

A purge of whole expired days is then a DETACH and DROP of their partitions instead of a bulk
DELETE (PostgreSQL's documentation, "Table Partitioning": "bulk loads and deletes can be
accomplished by adding or removing partitions"). Each table becomes `PARTITION BY RANGE` on its
retention time, with one partition per UTC day in the schema `partitions` (named
`<table>_pYYYYMMDD`, out of the way of the service's own tables) and a DEFAULT partition there
too, so that no insert ever fails for want of a partition: accepted means durable. The runner
makes the days ahead (services/kit/partitions.py); this migration makes the days its rows are
on, and the next DAYS_AHEAD.

A unique constraint of a partitioned table must hold its partition key: the primary keys become
(seq, time) (seq alone still comes from its sequence, kept), and `id` a plain index (ids are
UUIDs made by the runner; nothing relies on a unique violation of one).

Existing rows are moved: the old table renamed, the new one made with the old's columns and
defaults, its partitions made for every day the rows are on, the rows copied, the old dropped.
Self-contained on purpose: a migration must not change when the runner's code does.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 16:00:00
"""

from datetime import UTC, date, datetime, timedelta

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SCHEMA = "partitions"
DAYS_AHEAD = 7
# (table, partition key, its plain indexes as they were, whether `id` was unique).
TABLES = [
    (
        "runs",
        "create_time",
        {
            "ix_runs_user_id_seq": "user_id, seq",
            "ix_runs_connection_id_seq": "connection_id, seq",
            "ix_runs_status_next_attempt_time": "status, next_attempt_time",
            "ix_runs_create_time": "create_time",
            "ix_runs_details_purge_time_create_time": "details_purge_time, create_time",
        },
        True,
    ),
    (
        "attempts",
        "start_time",
        {
            "ix_attempts_run_id": "run_id",
            "ix_attempts_start_time": "start_time",
            "ix_attempts_user_id_seq": "user_id, seq",
        },
        False,
    ),
    (
        "webhook_log",
        "receive_time",
        {
            "ix_webhook_log_receive_time": "receive_time",
            "ix_webhook_log_user_id_seq": "user_id, seq",
            "ix_webhook_log_connection_id_seq": "connection_id, seq",
        },
        True,
    ),
]


def _bound(day: date) -> str:
    # An explicit offset: the bound means the same whatever the session's TimeZone.
    return f"'{day.isoformat()} 00:00:00+00'"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    for table, key, indexes, unique_id in TABLES:
        _partition(table, key, indexes, unique_id)


def _partition(table: str, key: str, indexes: dict[str, str], unique_id: bool) -> None:
    old = f"{table}_unpartitioned"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} DROP CONSTRAINT pk_{table}")
    if unique_id:
        op.execute(f"ALTER TABLE {old} DROP CONSTRAINT uq_{table}_id")
    for name in indexes:
        op.execute(f"DROP INDEX {name}")
    # The sequence outlives the old table (it was owned by its column).
    op.execute(f"ALTER SEQUENCE {table}_seq_seq OWNED BY NONE")
    op.execute(
        f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        f" PARTITION BY RANGE ({key})"
    )
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (seq, {key})")
    if unique_id:
        op.execute(f"CREATE INDEX ix_{table}_id ON {table} (id)")
    for name, columns in indexes.items():
        op.execute(f"CREATE INDEX {name} ON {table} ({columns})")
    op.execute(f"CREATE TABLE {SCHEMA}.{table}_default PARTITION OF {table} DEFAULT")
    found = op.get_bind().exec_driver_sql(
        f"SELECT DISTINCT (date_trunc('day', {key} AT TIME ZONE 'UTC'))::date FROM {old}"  # noqa: S608
    )
    today = datetime.now(UTC).date()
    days = {row[0] for row in found} | {today + timedelta(days=n) for n in range(DAYS_AHEAD + 1)}
    for day in sorted(days):
        op.execute(
            f"CREATE TABLE {SCHEMA}.{table}_p{day:%Y%m%d} PARTITION OF {table}"
            f" FOR VALUES FROM ({_bound(day)}) TO ({_bound(day + timedelta(days=1))})"
        )
    op.execute(f"INSERT INTO {table} SELECT * FROM {old}")  # noqa: S608 - names of ours
    op.execute(f"DROP TABLE {old}")
    op.execute(f"ALTER SEQUENCE {table}_seq_seq OWNED BY {table}.seq")
    op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, key, indexes, unique_id in reversed(TABLES):
        _unpartition(table, key, indexes, unique_id)
    op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def _unpartition(table: str, key: str, indexes: dict[str, str], unique_id: bool) -> None:
    old = f"{table}_partitioned"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} DROP CONSTRAINT pk_{table}")
    if unique_id:
        op.execute(f"DROP INDEX ix_{table}_id")
    for name in indexes:
        op.execute(f"DROP INDEX {name}")
    op.execute(f"ALTER SEQUENCE {table}_seq_seq OWNED BY NONE")
    op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (seq)")
    if unique_id:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT uq_{table}_id UNIQUE (id)")
    for name, columns in indexes.items():
        op.execute(f"CREATE INDEX {name} ON {table} ({columns})")
    op.execute(f"INSERT INTO {table} SELECT * FROM {old}")  # noqa: S608 - names of ours
    op.execute(f"DROP TABLE {old}")
    op.execute(f"ALTER SEQUENCE {table}_seq_seq OWNED BY {table}.seq")
