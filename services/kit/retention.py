"""A service's part in retention: its categories declared, and the `RetentionParticipant` servicer
that lists, purges, erases and exports them (`protos/leadmesh/retention/v1`).

Each place holding personal or execution data (a table, a column of one, a directory of files) is
in exactly one category; a service declares its categories once (`TableCategory`,
`ColumnCategory`, `FileCategory`), each max age a setting of its own, and `Participant` does the
rest the same way in every service:

- a purge deletes (or, for a column, clears) the rows older than the cutoff in batches of short
  transactions, each batch picked on the category's time index, so a purge costs what is expired,
  not what the table holds; the service keeps answering between batches;
- on SQLite, each purge and erasure ends with `incremental_vacuum` and a WAL checkpoint that
  truncates the log: with `secure_delete` on (kit.db), the bytes of a deleted row are gone from
  the database's files, not just unreachable;
- an erasure deletes every row of the user in declared order (children before parents) and
  detaches the rows a legal basis keeps (`keep_on_erase`): idempotent, a second one erases 0;
- an export streams the user's rows, section by section, never the columns marked secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from leadmesh.retention.v1 import retention_pb2 as pb
from leadmesh.retention.v1 import retention_pb2_grpc
from sqlalchemy import Column, ColumnElement, Table, and_, func, select, true, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit import callers
from services.kit.clock import Clock, as_utc
from services.kit.db import AUTOCHECKPOINT_PAGES as AUTOCHECKPOINT
from services.kit.db import Database
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.kit.partitions import DailyPartitions, purge_days
from services.kit.timestamps import put_timestamp

log = logging.getLogger("leadmesh.retention")

SERVICE = "leadmesh.retention.v1.RetentionParticipant"
# Who may call a participant: retention only, and the gateway for the acting user's export.
ALLOWED_CALLERS = {
    f"/{SERVICE}/ListPolicies": frozenset({"retention"}),
    f"/{SERVICE}/Purge": frozenset({"retention"}),
    f"/{SERVICE}/EraseSubject": frozenset({"retention"}),
    f"/{SERVICE}/ExportSubject": frozenset({"retention", "gateway"}),
}

DEFAULT_BATCH, MAX_BATCH = 1000, 10_000
# SQLite: a purge batch's rows follow its time: up to the caller's batch size, as many as take
# about this long in the writers' turn (the service's writers wait up to one batch; fewer, longer
# batches cost less per row: each touches about a page per row of every random-key index,
# whatever its size). A call's first batch is its category's last size (DEFAULT_BATCH at first).
# PostgreSQL's writers never wait for a purge batch: there it is the caller's size.
BATCH_SECONDS = 0.05
# Fewer rows a batch cost more each than they spare the writers' wait.
MIN_BATCH = 100
# A Purge call returns after about this long; the caller calls again while rows remain.
PURGE_CALL_SECONDS = 2.0
EXPORT_PAGE = 500
EXPORT_BATCH_RECORDS, EXPORT_BATCH_BYTES = 500, 256 * 1024
CHECKPOINT_TRIES = 5
# SQLite: a purge checkpoints the log (outside the writers' lock) after about this long of
# batches. Longer copies a page that many batches rewrite (random-key index pages) once instead of
# once each; shorter keeps each checkpoint's burst of writes to the disk, which the service's
# durable commits queue behind, and the log, short.
CHECKPOINT_SECONDS = 0.5
# Free pages given back per step at a purge's end (4 MiB of 4 KiB pages: a step holds the
# writers' lock for some tens of milliseconds, as a batch does).
VACUUM_PAGES = 1024
# SQLite: page cache of the connection a purge batch runs on, while it runs (KiB).
PURGE_CACHE_KIB = 32 * 1024

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
    `purge_time_column`, so the row says its details were purged, and when."""

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

    @property
    def kind(self) -> str:
        return "table"

    @property
    def places(self) -> tuple[str, ...]:
        return tuple(f"{self.table.name}.{c}" for c in self.columns)


@dataclass(frozen=True)
class FileCategory:
    """Files under a directory (mail outbox, trace files); their age is their modification time."""

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


def days(setting: int) -> timedelta:
    return timedelta(days=setting)


class Participant(retention_pb2_grpc.RetentionParticipantServicer):
    """The `RetentionParticipant` servicer over one service's database and categories.

    `before_erase(user_id)` runs first at each erasure (the vault destroys the user's data key,
    the runner drops the user's schedules); `after_erase(user_id)` last (forgetting caches).
    """

    def __init__(
        self,
        name: str,
        database: Database,
        categories: Sequence[Category],
        clock: Clock,
        *,
        before_erase: Callable[[str], Awaitable[None]] | None = None,
        after_erase: Callable[[str], Awaitable[None]] | None = None,
        batch_seconds: float = BATCH_SECONDS,
    ) -> None:
        names = [c.name for c in categories]
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: a category is declared twice")
        self.name = name
        self.database = database
        self.categories = {c.name: c for c in categories}
        self.clock = clock
        self._before_erase = before_erase
        self._after_erase = after_erase
        self._sqlite = database.engine.dialect.name == "sqlite"
        self.batch_seconds = batch_seconds
        # Per category, the rows of its last purge batch (`_next_batch`), for the next call.
        self._batch_rows: dict[str, int] = {}

    # --- RPCs ------------------------------------------------------------------------------

    async def ListPolicies(  # noqa: N802 - gRPC method name
        self, request: pb.ListPoliciesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPoliciesResponse:
        as_of = _time(request, "as_of") or self.clock.now()
        response = pb.ListPoliciesResponse(participant=self.name)
        for category in self.categories.values():
            response.policies.append(await self.policy(category, as_of))
        return response

    async def Purge(  # noqa: N802 - gRPC method name
        self, request: pb.PurgeRequest, context: grpc.aio.ServicerContext
    ) -> pb.PurgeResponse:
        category = self.category(request.category)
        if category.max_age is None:
            raise FailedPrecondition(
                "NOT_PURGEABLE", f"{category.name} is kept until erasure, not by age"
            )
        if not request.HasField("cutoff"):
            raise InvalidArgument("CUTOFF_MISSING", "a purge needs a cutoff", field="cutoff")
        if not 0 <= request.batch_size <= MAX_BATCH:
            raise InvalidArgument(
                "INVALID_BATCH_SIZE", f"batch_size is at most {MAX_BATCH}", field="batch_size"
            )
        cutoff = as_utc(request.cutoff.ToDatetime())
        deleted, remaining, batches = await self.purge(
            category, cutoff, request.batch_size or DEFAULT_BATCH, dry_run=request.dry_run
        )
        return pb.PurgeResponse(rows_deleted=deleted, rows_still_expired=remaining, batches=batches)

    async def EraseSubject(  # noqa: N802 - gRPC method name
        self, request: pb.EraseSubjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.EraseSubjectResponse:
        if not request.user_id:
            raise InvalidArgument("USER_ID_MISSING", "name the user to erase", field="user_id")
        response = pb.EraseSubjectResponse(participant=self.name)
        for name, (erased, kept, reason) in (await self.erase(request.user_id)).items():
            response.categories.append(
                pb.ErasedCategory(
                    category=name, rows_erased=erased, rows_kept=kept, kept_reason=reason
                )
            )
        log.info(
            "subject erased",
            extra={"participant": self.name, "case_id": request.case_id},
        )
        return response

    async def ExportSubject(  # noqa: N802 - gRPC method name
        self, request: pb.ExportSubjectRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportBatch]:
        user_id = request.user_id
        if callers.vetted_caller() == callers.GATEWAY:
            acting = callers.acting_user(context)
            if user_id and user_id != acting:
                raise NotFound("USER_NOT_FOUND", "the gateway exports the acting user only")
            user_id = acting
        if not user_id:
            raise InvalidArgument("USER_ID_MISSING", "name the user to export", field="user_id")
        batch, size = pb.ExportBatch(), 0
        async for section, record in self.export(user_id):
            text = _json_text(record)
            batch.records.append(pb.ExportRecord(section=section, json=text))
            size += len(text)
            if len(batch.records) >= EXPORT_BATCH_RECORDS or size >= EXPORT_BATCH_BYTES:
                yield batch
                batch, size = pb.ExportBatch(), 0
        if batch.records:
            yield batch

    # --- the work, callable without gRPC (tests, benchmarks) ---------------------------------

    async def policy(self, category: Category, as_of: datetime) -> pb.Policy:
        policy = pb.Policy(
            category=category.name,
            description=category.description,
            legal_basis=category.legal_basis,
            kind=category.kind,
            places=list(category.places),
        )
        if category.max_age is not None:
            policy.max_age.FromTimedelta(category.max_age)
        cutoff = as_of - category.max_age if category.max_age is not None else None
        if isinstance(category, FileCategory):
            oldest, rows, expired = _file_counts(category, cutoff)
        else:
            async with self.database.read() as connection:
                oldest, rows, expired = await _table_counts(connection, category, cutoff)
        policy.rows, policy.expired_rows = rows, expired
        if oldest is not None:
            put_timestamp(policy.oldest_time, oldest)
        return policy

    async def purge(
        self, category: Category, cutoff: datetime, batch_size: int, *, dry_run: bool = False
    ) -> tuple[int, int, int]:
        """(rows deleted, rows still expired, batches) of one call: batches until none is left
        or PURGE_CALL_SECONDS have passed."""
        if isinstance(category, FileCategory):
            return _purge_files(category, cutoff, batch_size, dry_run)
        if getattr(category, "partitions", None) and not dry_run and not self._sqlite:
            # A call that drops whole days reports them alone; the next one batches the rest (a
            # day whose drop was deferred, its table busy, included: the batches never wait).
            days = await purge_days(self.database, category, cutoff, self.clock.now())
            if days.partitions:
                async with self.database.read() as connection:
                    return days.rows, await _expired(connection, category, cutoff), days.partitions
        if dry_run:
            async with self.database.read() as connection:
                return 0, await _expired(connection, category, cutoff), 0
        deleted = batches = 0
        started = time.monotonic()
        rows = batch_size
        if self._sqlite:
            rows = min(batch_size, self._batch_rows.get(category.name, DEFAULT_BATCH))
        # SQLite: the batches leave checkpoints to the purge, which runs them every
        # CHECKPOINT_SECONDS and at the call's end, outside the writers' lock.
        checkpointed = started
        async with self.database.checkpoints_paused(), self._purge_connection() as held:
            while True:
                async with self._purge_transaction(held) as connection:
                    began = time.monotonic()  # in the writers' turn
                    count = await _purge_batch(connection, category, cutoff, rows, self.clock)
                took = time.monotonic() - began
                deleted += count
                batches += 1
                if count < rows or time.monotonic() - started > PURGE_CALL_SECONDS:
                    break
                if held is not None:  # SQLite: the service's writers wait for each batch
                    rows = _next_batch(rows, took, batch_size, self.batch_seconds)
                    self._batch_rows[category.name] = rows
                if time.monotonic() - checkpointed > CHECKPOINT_SECONDS:
                    await self.database.checkpoint()
                    checkpointed = time.monotonic()
                await asyncio.sleep(0)  # let the service's other requests in between batches
        if deleted:
            await self.database.checkpoint()
        async with self.database.read() as connection:
            remaining = await _expired(connection, category, cutoff)
        if deleted:
            await self.compact(truncate=remaining == 0)
        return deleted, remaining, batches

    @asynccontextmanager
    async def _purge_transaction(
        self, held: AsyncConnection | None
    ) -> AsyncIterator[AsyncConnection]:
        """A write transaction for one purge batch: on SQLite on the call's `held` connection, in
        the writers' turn; elsewhere a plain one."""
        if held is None:
            async with self.database.write() as connection:
                yield connection
            return
        async with self.database.writing(), held.begin():
            yield held

    @asynccontextmanager
    async def _purge_connection(self) -> AsyncIterator[AsyncConnection | None]:
        """SQLite: one pooled connection for a purge call's batches (each batch then waits for
        the writers' turn only, not for a connection to be set up in it), set for them while it
        is held:

        - commits without an fsync (synchronous NORMAL: in WAL mode a commit may be lost to a
          power cut, never corrupted): a batch lost is simply purged again, and the service's
          own writers, which queue behind each batch, wait a commit instead of a commit and an
          fsync;
        - no checkpoint inside its commits (the purge runs them outside the writers' lock:
          `Database.checkpoint`);
        - a page cache that holds a batch's pages: a batch of random-key index entries dirties
          about a page per row, which SQLite's 2 MiB default spills to the log mid-batch.

        None elsewhere."""
        if not self._sqlite:
            yield None
            return
        async with self.database.engine.connect() as connection:
            sqlite = (await connection.get_raw_connection()).driver_connection
            await sqlite.executescript(
                "PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0;"
                f" PRAGMA cache_size=-{PURGE_CACHE_KIB};"
            )
            try:
                yield connection
            finally:
                # As `Database.write` left it, and SQLite's default cache (-2000: 2 MiB).
                pages = connection.info.get("autocheckpoint", AUTOCHECKPOINT)
                await sqlite.executescript(
                    "PRAGMA synchronous=FULL;"
                    f" PRAGMA wal_autocheckpoint={pages}; PRAGMA cache_size=-2000;"
                )

    async def erase(self, user_id: str) -> dict[str, tuple[int, int, str]]:
        """{category: (rows erased, rows kept, why kept)} for one user, every category that is
        the user's; files and columns go with their rows."""
        if self._before_erase is not None:
            await self._before_erase(user_id)
        result: dict[str, tuple[int, int, str]] = {}
        for category in self.categories.values():
            if not isinstance(category, TableCategory) or category.user_column is None:
                continue
            count = 0
            while True:  # in batches: a user with 100 000 runs never holds one long transaction
                async with self.database.write() as connection:
                    done = await _erase_batch(connection, category, user_id, DEFAULT_BATCH)
                count += done
                if done < DEFAULT_BATCH:
                    break
            if category.keep_on_erase:
                result[category.name] = (0, count, category.keep_on_erase)
            else:
                result[category.name] = (count, 0, "")
        await self.compact(rebuild=True)
        if self._after_erase is not None:
            await self._after_erase(user_id)
        return result

    async def export(self, user_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        for category in self.categories.values():
            exported = isinstance(category, TableCategory) and category.export_section
            if not exported or category.user_column is None:
                continue
            async for record in self._export_rows(category, user_id):
                yield category.export_section, record

    async def _export_rows(
        self, category: TableCategory, user_id: str
    ) -> AsyncIterator[dict[str, Any]]:
        table = category.table
        keys = list(table.primary_key.columns)
        shown = [c for c in table.columns if c.name not in category.secret_columns]
        after: tuple | None = None
        while True:
            query = select(*shown, *keys).where(table.c[category.user_column] == user_id)
            if after is not None:
                query = query.where(tuple_(*keys) > tuple_(*after))
            query = query.order_by(*keys).limit(EXPORT_PAGE)
            async with self.database.read() as connection:
                rows = (await connection.execute(query)).all()
            for row in rows:
                mapping = row._mapping
                yield {c.name: _plain(mapping[c.name]) for c in shown}
            if len(rows) < EXPORT_PAGE:
                return
            after = tuple(rows[-1]._mapping[k.name] for k in keys)

    async def compact(self, *, rebuild: bool = False, truncate: bool = True) -> None:
        """SQLite: free pages given back and the WAL truncated, so deleted bytes leave the files
        (secure_delete zeroes a deleted row where it lies; the checkpoint drops the log's older
        copies). B-tree rebalancing can leave stale copies of a row that was moved before it was
        deleted in the unused space of a live page: an erasure therefore rebuilds the file
        (`rebuild`, a VACUUM: writes wait meanwhile), so none of the user's bytes survive; a purge
        does not (its payloads are what sealing makes unreadable).

        Between the calls of one long purge (`truncate` False) nothing more runs: each call ends
        with a checkpoint, outside the writers' lock. At a purge's end the free pages go back
        VACUUM_PAGES at a time, each step its own turn of the writers' lock, then a checkpoint
        outside it, then the log is truncated; a reader still open elsewhere holds that back: it
        is tried again briefly, then left to the next purge (and SQLite's own checkpoints) with
        a warning."""
        if not self._sqlite:
            return
        if not truncate:
            return  # each call ends with a checkpoint (purge)
        if rebuild:
            await self._sqlite_script("VACUUM;")
        async with self.database.checkpoints_paused(), self._purge_connection() as held:
            sqlite = (await held.get_raw_connection()).driver_connection  # type: ignore[union-attr]
            while await self._sqlite_pragma("freelist_count"):
                async with self.database.writing():
                    await sqlite.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
                await asyncio.sleep(0)  # the service's writers go between the steps
            await self.database.checkpoint()  # so that truncating the log copies next to nothing
        for attempt in range(CHECKPOINT_TRIES):
            if not await self._sqlite_pragma("wal_checkpoint(TRUNCATE)"):
                return
            await asyncio.sleep(0.05 * (attempt + 1))
        log.warning("wal checkpoint held back by a reader", extra={"participant": self.name})

    async def _sqlite_script(self, script: str) -> None:
        """Straight through the driver, outside any transaction (as a script: stepped to its
        end; a plain execute of incremental_vacuum frees one page per call)."""
        async with self.database.writing(), self.database.engine.connect() as connection:
            sqlite = (await connection.get_raw_connection()).driver_connection
            await sqlite.executescript(script)

    async def _sqlite_pragma(self, pragma: str) -> int:
        """The first column of a pragma's first row (freelist_count; a checkpoint's busy flag)."""
        async with self.database.writing(), self.database.engine.connect() as connection:
            sqlite = (await connection.get_raw_connection()).driver_connection
            cursor = await sqlite.execute(f"PRAGMA {pragma}")
            value = (await cursor.fetchone())[0]
            await cursor.close()
            return value

    def category(self, name: str) -> Category:
        """A declared category by name; NotFound UNKNOWN_CATEGORY otherwise."""
        try:
            return self.categories[name]
        except KeyError:
            raise NotFound("UNKNOWN_CATEGORY", f"{self.name} has no category {name!r}") from None


# --- tables ------------------------------------------------------------------------------------


def _next_batch(rows: int, took: float, most: int, target: float) -> int:
    """The next batch's rows after `rows` took `took` seconds: at most doubled while well under
    `target`, cut in proportion when over it; MIN_BATCH (or `most`, if fewer) to `most`."""
    if took > target:
        return max(min(most, MIN_BATCH), min(most, int(rows * target / took)))
    if took < target / 2:
        return min(most, rows * 2)
    return min(most, rows)


def _age_column(category: TableCategory | ColumnCategory) -> Column:
    return category.table.c[category.time_column]  # type: ignore[index]


def _pending(category: TableCategory | ColumnCategory) -> ColumnElement[bool] | None:
    """A column category's rows whose columns are not cleared yet."""
    if isinstance(category, ColumnCategory):
        return category.table.c[category.purge_time_column].is_(None)
    return None


def _expired_rows(
    category: TableCategory | ColumnCategory, cutoff: datetime, *, sqlite: bool
) -> list[ColumnElement[bool]]:
    """What a purge at this cutoff takes: expired, not cleared yet, and allowed (`only`)."""
    conditions = [_age_column(category) < cutoff]
    pending = _pending(category)
    if pending is not None:
        conditions.append(pending)
    if category.only is not None:
        # `(…) IS 1` on SQLite: a condition no index can serve, so the batch is picked on the
        # time index. Without statistics SQLite prefers an index on `only`'s column (the runs'
        # status index: every ended run), reading and sorting the whole table for each batch.
        conditions.append(category.only.is_(true()) if sqlite else category.only)
    return conditions


async def _table_counts(
    connection: AsyncConnection, category: TableCategory | ColumnCategory, cutoff: datetime | None
) -> tuple[datetime | None, int, int]:
    table = category.table
    pending = _pending(category)
    if category.time_column is None:
        rows = (await connection.execute(select(func.count()).select_from(table))).scalar_one()
        return None, rows, 0
    age = _age_column(category)
    counted = select(func.count(), func.min(age)).select_from(table)
    if pending is not None:
        counted = counted.where(pending)
    rows, oldest = (await connection.execute(counted)).one()
    expired = await _expired(connection, category, cutoff) if cutoff is not None else 0
    return (as_utc(oldest) if oldest is not None else None), rows, expired


async def _expired(
    connection: AsyncConnection, category: TableCategory | ColumnCategory, cutoff: datetime
) -> int:
    expired = _expired_rows(category, cutoff, sqlite=connection.dialect.name == "sqlite")
    query = select(func.count()).select_from(category.table).where(*expired)
    return (await connection.execute(query)).scalar_one()


async def _purge_batch(
    connection: AsyncConnection,
    category: TableCategory | ColumnCategory,
    cutoff: datetime,
    batch_size: int,
    clock: Clock,
) -> int:
    """One batch: the oldest expired rows, a range on the time index up to the batch's last row
    (found first; ties at its time broken by the key, so a batch never outgrows its size). A
    range with literal bounds, not `key IN (SELECT … LIMIT n)`: PostgreSQL plans that as a join
    (over the whole table for composite keys), ten times slower per batch."""
    age, table = _age_column(category), category.table
    keys = list(table.primary_key.columns)
    sqlite = connection.dialect.name == "sqlite"
    expired = _expired_rows(category, cutoff, sqlite=sqlite)
    if sqlite:
        # SQLite runs `key IN (SELECT … LIMIT n)` on the time index as it is written (twice the
        # rows per second of the range below, which costs it a second statement per batch).
        oldest = select(*keys).where(*expired).order_by(age).limit(batch_size)
        chosen = tuple_(*keys).in_(oldest) if len(keys) > 1 else keys[0].in_(oldest)
        return await _clear_or_delete(connection, category, chosen, clock)
    last = (
        await connection.execute(
            select(age, *keys).where(*expired).order_by(age, *keys).offset(batch_size - 1).limit(1)
        )
    ).first()
    chosen = and_(*expired)
    if last is not None:
        # `age <= last` narrows the index range; the row comparison breaks ties at that time.
        chosen = and_(chosen, age <= last[0], tuple_(age, *keys) <= tuple_(*last))
    return await _clear_or_delete(connection, category, chosen, clock)


async def _clear_or_delete(
    connection: AsyncConnection,
    category: TableCategory | ColumnCategory,
    chosen: ColumnElement[bool],
    clock: Clock,
) -> int:
    table = category.table
    if isinstance(category, ColumnCategory):
        values = {c: category.cleared.get(c) for c in category.columns}
        values[category.purge_time_column] = clock.now()
        statement = table.update().where(chosen).values(values)
    else:
        statement = table.delete().where(chosen)
    return (await connection.execute(statement)).rowcount


async def _erase_batch(
    connection: AsyncConnection, category: TableCategory, user_id: str, batch_size: int
) -> int:
    """One batch of the user's rows deleted, or detached when a legal basis keeps them."""
    table = category.table
    keys = list(table.primary_key.columns)
    owner = table.c[category.user_column]  # type: ignore[index]
    picked = select(*keys).where(owner == user_id).limit(batch_size)
    chosen = tuple_(*keys).in_(picked) if len(keys) > 1 else keys[0].in_(picked)
    if category.keep_on_erase:
        statement = table.update().where(chosen).values({category.user_column: None})
    else:
        statement = table.delete().where(chosen)
    return (await connection.execute(statement)).rowcount


# --- files -------------------------------------------------------------------------------------


def _files(category: FileCategory) -> list[tuple[Path, datetime]]:
    if not category.directory.is_dir():
        return []
    found = []
    for path in category.directory.rglob(category.pattern):
        try:
            if path.is_file():
                found.append((path, datetime.fromtimestamp(path.stat().st_mtime, UTC)))
        except FileNotFoundError:
            continue  # removed meanwhile (rotated, purged by another call)
    return found


def _file_counts(
    category: FileCategory, cutoff: datetime | None
) -> tuple[datetime | None, int, int]:
    files = _files(category)
    oldest = min((when for _, when in files), default=None)
    expired = sum(1 for _, when in files if cutoff is not None and when < cutoff)
    return oldest, len(files), expired


def _purge_files(
    category: FileCategory, cutoff: datetime, batch_size: int, dry_run: bool
) -> tuple[int, int, int]:
    expired = sorted((when, path) for path, when in _files(category) if when < cutoff)
    if dry_run:
        return 0, len(expired), 0
    deleted = 0
    for _, path in expired[:batch_size]:
        try:
            path.unlink()
            deleted += 1
        except FileNotFoundError:
            pass
    return deleted, len(expired) - deleted, 1 if expired else 0


# --- values --------------------------------------------------------------------------------


def _time(message, name: str) -> datetime | None:
    return as_utc(getattr(message, name).ToDatetime()) if message.HasField(name) else None


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return value


def _json_default(value: Any) -> Any:
    plain = _plain(value)
    if plain is value:
        return str(value)
    return plain


def _json_text(record: dict[str, Any]) -> str:
    """One record as compact, strict JSON, spliced as it is into the gateway's export: NaN and
    infinities (which JSON has not) written as strings."""
    try:
        return json.dumps(record, default=_json_default, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(record), default=_json_default, separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # "NaN", "Infinity", "-Infinity"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
