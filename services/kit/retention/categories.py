"""The categories a service declares: what holds personal or execution data, how long it lives,
and how it leaves (`TableCategory`, `ColumnCategory`, `FileCategory`).

Plain frozen values: nothing here touches a database or a file. Every kind has every attribute
the participant reads (`partitions`, `sealed`: None where the kind has none), so the participant
never asks a category what it is before reading one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, Table

from services.kit.partitions import DailyPartitions
from services.kit.sealing import SealedColumns

KEPT_UNTIL_ERASURE = "kept while the account exists; erased with it"


@dataclass(frozen=True)
class TableCategory:
    """Whole rows of one table. Their age runs from `time_column`; without a max age they live
    as long as the account and leave with it (`user_column`)."""

    name: str
    description: str
    legal_basis: str
    table: Table
    max_age: timedelta | None
    time_column: str | None = None
    # Whose rows they are (erasure and export); None: rows of no one in particular.
    user_column: str | None = None
    # Erasure keeps these rows, detached (user_column set to NULL), for this legal basis.
    keep_on_erase: str | None = None
    # Section name in the export (None: not exported, e.g. rows that say nothing of the user).
    export_section: str | None = None
    # Columns never exported (secrets, token hashes, key material).
    secret_columns: tuple[str, ...] = ()
    # Which expired rows a purge may take (e.g. runs that have ended: a run still queued keeps
    # its row until it ends; it shows as LATE meanwhile). None: every expired row.
    only: ColumnElement[bool] | None = None
    # Range-partitioned by UTC day on `time_column` (PostgreSQL): whole expired days are dropped
    # (services/kit/partitions.py) before the batches take the rest.
    partitions: DailyPartitions | None = None
    # Columns sealed under the vault's day keys of this category (services/kit/sealing.py).
    sealed: SealedColumns | None = None

    @property
    def kind(self) -> str:
        return "table"

    @property
    def places(self) -> tuple[str, ...]:
        return (self.table.name,)


@dataclass(frozen=True)
class ColumnCategory:
    """Columns of another category's rows with a shorter life (a run's event, inside the 30-day
    activity stream, is a 7-day execution detail): purging sets them to `cleared` and stamps
    `purge_time_column`, so the row says its details were purged, and when.

    Its oldest row still held (`PurgeResponse.oldest_time`) is the oldest whose columns are not
    cleared: cheap with an index on (`purge_time_column`, `time_column`), as the runner's runs
    have."""

    # Never partitioned: dropping a day's partition would take the rows, not just the columns.
    partitions: ClassVar[None] = None

    name: str
    description: str
    legal_basis: str
    table: Table
    max_age: timedelta
    time_column: str
    columns: tuple[str, ...]
    purge_time_column: str
    cleared: Mapping[str, Any] = field(default_factory=dict)
    only: ColumnElement[bool] | None = None
    # Columns sealed under the vault's day keys of this category (services/kit/sealing.py).
    sealed: SealedColumns | None = None

    @property
    def kind(self) -> str:
        return "table"

    @property
    def places(self) -> tuple[str, ...]:
        return tuple(f"{self.table.name}.{c}" for c in self.columns)


@dataclass(frozen=True)
class FileCategory:
    """Files under a directory (mail outbox, trace files); their age is their modification time."""

    # Files are neither partitioned nor sealed (a file is deleted whole).
    partitions: ClassVar[None] = None
    sealed: ClassVar[None] = None

    name: str
    description: str
    legal_basis: str
    directory: Path
    max_age: timedelta
    pattern: str = "*"

    @property
    def kind(self) -> str:
        return "files"

    @property
    def places(self) -> tuple[str, ...]:
        return (f"{self.directory}/{self.pattern}",)


Category = TableCategory | ColumnCategory | FileCategory
RowCategory = TableCategory | ColumnCategory


def days(setting: int) -> timedelta:
    return timedelta(days=setting)
