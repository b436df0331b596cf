"""Retention's tables.

Categories (participants.own_categories): the purge ledger (1 year, by start time) and the erasure
cases with their certificates (3 years after a case ends; an open case never ages out). A case
holds the user's id only while it is open or executing: a completed or cancelled case keeps the
pseudonymous subject reference alone. Exempt, holding no personal data: the schedule state (one
row per purge job) and the leases (which replica purges which category).
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Index, String, Table, Text

from services.kit.db import Time, service_metadata

metadata = service_metadata()

purge_ledger = Table(
    "purge_ledger",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("participant", String(64), nullable=False),
    Column("category", String(100), nullable=False),
    Column("cutoff", Time, nullable=False),
    Column("rows_deleted", BigInteger, nullable=False),
    Column("start_time", Time, nullable=False, index=True),
    Column("end_time", Time, nullable=False),
    # ok, failed, dry_run
    Column("outcome", String(16), nullable=False),
    Column("error", Text, nullable=False),
    # scheduled, operator
    Column("trigger", String(16), nullable=False),
    Index("ix_purge_ledger_participant_category_start", "participant", "category", "start_time"),
)

erasure_cases = Table(
    "erasure_cases",
    metadata,
    Column("id", String(36), primary_key=True),
    # Only while the case is open or executing; NULL once it ends.
    Column("user_id", String(64), nullable=True, unique=True),
    Column("subject_ref", String(64), nullable=False, index=True),
    Column("request_time", Time, nullable=False),
    Column("deadline", Time, nullable=False),
    Column("execute_after", Time, nullable=False),
    # open, executing, completed, cancelled
    Column("state", String(16), nullable=False, index=True),
    Column("open_time", Time, nullable=False, index=True),
    # When it completed or was cancelled: the certificates' category counts from here.
    Column("end_time", Time, nullable=True, index=True),
    # {participant: {state, tries, done_time, error, categories: [...]}} and the certificate step.
    Column("steps", JSON, nullable=False),
    Column("certificate", Text, nullable=True),
)

# Exempt (no personal data): when each purge job last ran, so a restart keeps the schedule.
schedule_state = Table(
    "schedule_state",
    metadata,
    Column("job", String(200), primary_key=True),
    Column("last_run_time", Time, nullable=False),
)

# Exempt (no personal data): without Redis, which replica purges which category.
leases = Table(
    "leases",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("expire_time", Time, nullable=False),
)

# Tables no category covers, and why (tests/unit/test_retention_categories.py reads this).
EXEMPT = {
    "schedule_state": "job names and times: no personal data",
    "leases": "replica ids and times: no personal data",
}
