"""Runner's tables. Each listable table has an increasing `seq` (newest first = highest seq) and
a public `id`.

Retention categories (each a setting; declared in services/runner/retention.py, where every table
here must have its place): webhooks log 7 days (`webhook_log`), activity stream 30 days (`runs`),
execution details 7 days (`attempts`, and the event a run carried: `runs.event`), notifications
7 days (`notifications`); idempotency keys live 24 hours. The `*_time` indexes are the purges':
each picks its batch on one, so a purge costs the rows it removes, not the table.

On PostgreSQL, `runs`, `attempts` and `webhook_log` are range-partitioned by UTC day on their
retention time (PARTITIONED_BY; migration 0007, services/kit/partitions.py), so a purge drops whole
expired days. A unique key of a partitioned table must hold its partition key, so there the
primary keys are (seq, time) and `id` a plain index `ix_<table>_id`; seq stays unique by its
sequence, ids are UUIDs, and nothing relies on a unique violation of either. What is written here
is what both dialects share (SQLite keeps `seq` alone and `uq_<table>_id`); `postgresql_only`
names the difference for schema comparisons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import JSON, Boolean, Column, Index, Integer, String, Table, Text

from services.kit.db import Serial, Time, service_metadata

metadata = service_metadata()

# PostgreSQL: the tables partitioned by day, and on which column (each category's time column).
PARTITIONED_BY = {"runs": "create_time", "attempts": "start_time", "webhook_log": "receive_time"}

connections = Table(
    "connections",
    metadata,
    Column("seq", Serial, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("user_id", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    # active, paused
    Column("status", String(16), nullable=False),
    Column("trigger", JSON, nullable=False),
    Column("action", JSON, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("signing_secret", String(200), nullable=True),
    # Webhook triggers: SHA-256 of the token (the token is shown once) and its first characters.
    Column("webhook_token_sha256", String(64), nullable=True, unique=True),
    Column("webhook_token_hint", String(16), nullable=True),
    Column("consecutive_failures", Integer, nullable=False),
    Column("pause_reason", String(300), nullable=True),
    Column("create_time", Time, nullable=False),
    Column("update_time", Time, nullable=False),
    Index("ix_connections_user_id_seq", "user_id", "seq"),
)

runs = Table(
    "runs",
    metadata,
    Column("seq", Serial, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("user_id", String(64), nullable=False),
    Column("connection_id", String(36), nullable=False),
    # webhook, schedule, manual
    Column("trigger", String(16), nullable=False),
    # queued, running, succeeded, failed, cancelled (the owner's account is being deleted)
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    # The event delivered: {"body", "headers", "query", "received_at"} (execution details).
    Column("event", JSON, nullable=True),
    Column("create_time", Time, nullable=False),
    Column("start_time", Time, nullable=True),
    Column("finish_time", Time, nullable=True),
    Column("next_attempt_time", Time, nullable=False),
    # Redis queue: when the run was last pushed to the stream (NULL: not pushed since due).
    Column("push_time", Time, nullable=True),
    # A claimed run belongs to its worker until then.
    Column("lease_until", Time, nullable=True),
    Column("worker", String(100), nullable=True),
    Column("error", String(1000), nullable=True),
    # The W3C traceparent of the request that queued the run (the webhook's trace), so that its
    # delivery joins that trace; NULL for scheduled runs. Ids only, never data.
    Column("trace_parent", String(64), nullable=True),
    # When retention purged the run's execution details (its event; its attempts went by their
    # own age): NULL while they are kept. The run itself stays in the activity stream.
    Column("details_purge_time", Time, nullable=True),
    Index("ix_runs_user_id_seq", "user_id", "seq"),
    Index("ix_runs_connection_id_seq", "connection_id", "seq"),
    # The activity stream's filters: by status, by creation time (migration 0009).
    Index("ix_runs_user_id_status_seq", "user_id", "status", "seq"),
    Index("ix_runs_user_id_create_time", "user_id", "create_time"),
    Index("ix_runs_status_next_attempt_time", "status", "next_attempt_time"),
    # Retention: the activity purge (oldest runs first) and the execution-details purge (oldest
    # runs whose details are still kept: details_purge_time IS NULL, then by age).
    Index("ix_runs_create_time", "create_time"),
    Index("ix_runs_details_purge_time_create_time", "details_purge_time", "create_time"),
    postgresql_partition_by="RANGE (create_time)",
)

attempts = Table(
    "attempts",
    metadata,
    Column("seq", Serial, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False, index=True),
    Column("user_id", String(64), nullable=False),
    Column("number", Integer, nullable=False),
    Column("start_time", Time, nullable=False),
    Column("finish_time", Time, nullable=False),
    # method, url, headers, body as sent; credentials redacted.
    Column("request", JSON, nullable=False),
    Column("response_status", Integer, nullable=True),
    Column("response_headers", JSON, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("response_body_encoding", String(8), nullable=True),
    Column("response_truncated", Boolean, nullable=False),
    Column("error", String(1000), nullable=True),
    # Retention: the purge by age, and erasure and export by user.
    Index("ix_attempts_start_time", "start_time"),
    Index("ix_attempts_user_id_seq", "user_id", "seq"),
    postgresql_partition_by="RANGE (start_time)",
)

webhook_log = Table(
    "webhook_log",
    metadata,
    Column("seq", Serial, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("user_id", String(64), nullable=False),
    Column("connection_id", String(36), nullable=False),
    Column("run_id", String(36), nullable=True),
    Column("receive_time", Time, nullable=False, index=True),
    Column("source_ip", String(64), nullable=False),
    Column("method", String(16), nullable=False),
    Column("headers", JSON, nullable=False),
    Column("query", Text, nullable=False),
    # json, form, text, base64
    Column("body_encoding", String(8), nullable=False),
    Column("body", Text, nullable=False),
    # Names of the headers and query parameters whose values were replaced by "[redacted]"
    # (NULL: none, or an entry from before redaction was listed).
    Column("redacted", JSON, nullable=True),
    Index("ix_webhook_log_user_id_seq", "user_id", "seq"),
    Index("ix_webhook_log_connection_id_seq", "connection_id", "seq"),
    postgresql_partition_by="RANGE (receive_time)",
)

notifications = Table(
    "notifications",
    metadata,
    Column("seq", Serial, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("user_id", String(64), nullable=False),
    Column("connection_id", String(36), nullable=True),
    # run_failed, connection_paused, credential_problem
    Column("kind", String(32), nullable=False),
    # At most 1000 characters, stored sealed (sealed.py): wider than that once sealed.
    Column("message", Text, nullable=False),
    Column("run_id", String(36), nullable=True),
    Column("credential_id", String(36), nullable=True),
    Column("create_time", Time, nullable=False, index=True),
    Column("read_time", Time, nullable=True),
    Index("ix_notifications_user_id_seq", "user_id", "seq"),
    # Unread ones (read_time IS NULL): listed and counted for the navigation's badge.
    Index("ix_notifications_user_id_read_time", "user_id", "read_time"),
)

# An Idempotency-Key seen on a connection: a repeat within 24 hours answers the first run.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("connection_id", String(36), primary_key=True),
    Column("key_sha256", String(64), primary_key=True),
    Column("run_id", String(36), nullable=False),
    Column("create_time", Time, nullable=False, index=True),
)

# A signed webhook accepted on a connection, remembered while its signature is within the replay
# window: the same signature again (a replay) answers the first run instead of making another.
webhook_signatures = Table(
    "webhook_signatures",
    metadata,
    Column("connection_id", String(36), primary_key=True),
    Column("signature_sha256", String(64), primary_key=True),
    Column("run_id", String(36), nullable=False),
    Column("expire_time", Time, nullable=False, index=True),
)

# Users whose account deletion was requested (SuspendUser, or reconciled from identity's record):
# nothing of theirs is accepted or delivered again. Ids only; kept until the user is erased.
suspended_users = Table(
    "suspended_users",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("suspend_time", Time, nullable=False),
)

# Failure e-mails gathered per connection: at most one per window (RUNNER_FAILURE_MAIL_WINDOW_
# SECONDS). The first failure after a quiet window is mailed at once; later ones are counted in
# `pending` and mailed together when the window ends. Ids, counts and our own error text only.
failure_mails = Table(
    "failure_mails",
    metadata,
    Column("connection_id", String(36), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("last_mail_time", Time, nullable=True),
    # Failed runs not mailed yet, and the latest one's message.
    Column("pending", Integer, nullable=False),
    Column("last_message", String(1000), nullable=True),
    Index("ix_failure_mails_pending_last_mail_time", "pending", "last_mail_time"),
    # Retention: erasure and export by user.
    Index("ix_failure_mails_user_id", "user_id"),
)


def postgresql_only(dialect: str) -> Callable[..., bool]:
    """An Alembic `include_object` for comparing this metadata with a database of `dialect`: on
    PostgreSQL, a partitioned table's `uq_<table>_id` is the plain index `ix_<table>_id`."""
    partitioned = dialect == "postgresql"

    def include(obj: Any, name: str | None, kind: str, reflected: bool, _compare_to: Any) -> bool:
        if not partitioned or getattr(obj, "table", None) is None:
            return True
        if obj.table.name not in PARTITIONED_BY:
            return True
        if kind == "unique_constraint" and not reflected:
            return name != f"uq_{obj.table.name}_id"
        if kind == "index" and reflected:
            return name != f"ix_{obj.table.name}_id"
        return True

    return include
