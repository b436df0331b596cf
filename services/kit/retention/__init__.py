"""A service's part in retention: its categories declared, and the `RetentionParticipant` servicer
that lists, purges, erases, exports and seals them (`protos/leadmesh/retention/v1`).

Each place holding personal or execution data (a table, a column of one, a directory of files) is
in exactly one category; a service declares its categories once (`categories.py`), each max age
a setting of its own, and `Participant` (here) does the rest the same way in every service:

- a purge deletes (or, for a column, clears) the rows older than the cutoff in batches of short
  transactions, each batch picked on the category's time index (`batches.py`), so a purge costs
  what is expired, not what the table holds; the service keeps answering between batches; the
  counts it answers are bounded (`counts.py`), its oldest row exact;
- on SQLite, each purge and erasure ends with `incremental_vacuum` and a WAL checkpoint that
  truncates the log (`compaction.py`): with `secure_delete` on (kit.db), the bytes of a deleted
  row are gone from the database's files, not just unreachable;
- an erasure deletes every row of the user in declared order (children before parents) and
  detaches the rows a legal basis keeps (`keep_on_erase`): idempotent, a second one erases 0;
- an export streams the user's rows, section by section, never the columns marked secret, sealed
  columns opened (`export.py`);
- a sealed category's rows written before sealing are sealed in place by `Seal` (`seal.py`);
  after a purge or an erasure the keys of what left are forgotten (services/kit/sealing.py).

The servicer lives in the package's own module so that its tunables (PURGE_CALL_SECONDS …) are
read where a test or a benchmark sets them (`services.kit.retention.PURGE_CALL_SECONDS`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime

import grpc
from leadmesh.retention.v1 import retention_pb2 as pb
from leadmesh.retention.v1 import retention_pb2_grpc

from services.kit import callers
from services.kit.clock import Clock, as_utc
from services.kit.db import Database
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.kit.partitions import purge_days
from services.kit.retention import counts, files, seal
from services.kit.retention.batches import MIN_BATCH, Pace, erase_batch, purge_batch
from services.kit.retention.categories import (
    KEPT_UNTIL_ERASURE,
    Category,
    ColumnCategory,
    FileCategory,
    RowCategory,
    TableCategory,
    days,
)
from services.kit.retention.compaction import (
    Checkpoints,
    compact,
    purge_connection,
    purge_transaction,
)
from services.kit.retention.counts import COUNT_CAP
from services.kit.retention.export import (
    EXPORT_BATCH_BYTES,
    EXPORT_BATCH_RECORDS,
    EXPORT_PAGE,
    export_rows,
)
from services.kit.retention.export import json_text as _json_text
from services.kit.sealing import ExecutionKeys, SealedColumns, day_of
from services.kit.timestamps import put_timestamp

__all__ = [
    "ALLOWED_CALLERS",
    "BATCH_SECONDS",
    "CHECKPOINT_SECONDS",
    "COUNT_CAP",
    "DEFAULT_BATCH",
    "EXPORT_BATCH_BYTES",
    "EXPORT_BATCH_RECORDS",
    "EXPORT_PAGE",
    "KEPT_UNTIL_ERASURE",
    "MAX_BATCH",
    "MIN_BATCH",
    "PURGE_CALL_SECONDS",
    "SERVICE",
    "Category",
    "RowCategory",
    "ColumnCategory",
    "FileCategory",
    "Participant",
    "TableCategory",
    "_json_text",
    "days",
]

log = logging.getLogger("leadmesh.retention")

SERVICE = "leadmesh.retention.v1.RetentionParticipant"
# Who may call a participant: retention only, and the gateway for the acting user's export.
ALLOWED_CALLERS = {
    f"/{SERVICE}/ListPolicies": frozenset({"retention"}),
    f"/{SERVICE}/Purge": frozenset({"retention"}),
    f"/{SERVICE}/EraseSubject": frozenset({"retention"}),
    f"/{SERVICE}/ExportSubject": frozenset({"retention", "gateway"}),
    f"/{SERVICE}/Seal": frozenset({"retention"}),
}

DEFAULT_BATCH, MAX_BATCH = 1000, 10_000
# SQLite: a purge (or seal) batch's rows follow its time: up to the caller's batch size, as many
# as take about this long in the writers' turn (the service's writers wait up to one batch;
# fewer, longer batches cost less per row: each touches about a page per row of every random-key
# index, whatever its size). A call's first batch is its category's last size (DEFAULT_BATCH at
# first). PostgreSQL's writers never wait for a batch: there it is the caller's size.
BATCH_SECONDS = 0.05
# A Purge (or Seal) call returns after about this long; the caller calls again while rows remain.
PURGE_CALL_SECONDS = 2.0
# SQLite: a purge checkpoints the log (outside the writers' lock) after about this long of
# batches. Longer copies a page that many batches rewrite (random-key index pages) once instead of
# once each; shorter keeps each checkpoint's burst of writes to the disk, which the service's
# durable commits queue behind, and the log, short.
CHECKPOINT_SECONDS = 0.5
# SQLite: with none of the service's writers seen waiting for a batch (or a vacuum step) for
# BUSY_SECONDS, the next ones may take QUIET_BATCH_FACTOR times BATCH_SECONDS (`batches.Pace`).
BUSY_SECONDS = 1.0
QUIET_BATCH_FACTOR = 4.0


class Participant(retention_pb2_grpc.RetentionParticipantServicer):
    """The `RetentionParticipant` servicer over one service's database and categories.

    `before_erase(user_id)` runs first at each erasure (the vault destroys the user's data key,
    the runner drops the user's schedules); `after_erase(user_id)` last (forgetting caches).
    `keys`: the execution keys of the sealed categories (their `Seal`, their export, and what is
    forgotten after a purge or an erasure); None: nothing here is sealed.
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
        keys: ExecutionKeys | None = None,
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
        self.keys = keys
        self._sqlite = database.engine.dialect.name == "sqlite"
        self.batch_seconds = batch_seconds
        # Per category, the rows of its last purge (or seal) batch (`next_batch`), for the next.
        self._batch_rows: dict[str, int] = {}
        self._passes = seal.Passes(database, clock, DEFAULT_BATCH, batch_seconds)
        # One for every purge call and compaction: whether the service's writers were seen
        # waiting lately carries over from one call (and category) to the next.
        self._pace = Pace(batch_seconds, BUSY_SECONDS, QUIET_BATCH_FACTOR)

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
        cutoff = as_utc(request.cutoff.ToDatetime())
        deleted, remaining, batches = await self.purge(
            category, cutoff, _batch_size(request.batch_size), dry_run=request.dry_run
        )
        response = pb.PurgeResponse(
            rows_deleted=deleted, rows_still_expired=remaining, batches=batches
        )
        if (oldest := await self.oldest(category)) is not None:
            put_timestamp(response.oldest_time, oldest)
        return response

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

    async def Seal(  # noqa: N802 - gRPC method name
        self, request: pb.SealRequest, context: grpc.aio.ServicerContext
    ) -> pb.SealResponse:
        category = self.category(request.category)
        sealed, remaining = await self.seal(category, _batch_size(request.batch_size))
        return pb.SealResponse(rows_sealed=sealed, rows_plaintext=remaining)

    # --- the work, callable without gRPC (tests, benchmarks) ---------------------------------

    async def policy(self, category: Category, as_of: datetime) -> pb.Policy:
        policy = pb.Policy(
            category=category.name,
            description=category.description,
            legal_basis=category.legal_basis,
            kind=category.kind,
            places=list(category.places),
            sealed=category.sealed is not None,
        )
        if category.max_age is not None:
            policy.max_age.FromTimedelta(category.max_age)
        cutoff = as_of - category.max_age if category.max_age is not None else None
        if isinstance(category, FileCategory):
            oldest, rows, expired = files.file_counts(category, cutoff)
        else:
            async with self.database.read() as connection:
                oldest, rows, expired = await counts.table_counts(connection, category, cutoff)
        policy.rows, policy.expired_rows = rows, expired
        if oldest is not None:
            put_timestamp(policy.oldest_time, oldest)
        return policy

    async def oldest(self, category: Category) -> datetime | None:
        """The oldest row (or file) the category holds: one probe of its time index."""
        if isinstance(category, FileCategory):
            return files.file_counts(category, None)[0]
        async with self.database.read() as connection:
            return await counts.oldest(connection, category)

    async def purge(
        self, category: Category, cutoff: datetime, batch_size: int, *, dry_run: bool = False
    ) -> tuple[int, int, int]:
        """(rows deleted, rows still expired: up to COUNT_CAP, batches) of one call: batches
        until none is left or PURGE_CALL_SECONDS have passed. A dry run counts them all."""
        if isinstance(category, FileCategory):
            return files.purge_files(category, cutoff, batch_size, dry_run)
        if dry_run:
            async with self.database.read() as connection:
                return 0, await counts.expired(connection, category, cutoff, exact=True), 0
        try:
            if category.partitions is not None and not self._sqlite:
                # A call that drops whole days reports them alone; the next one batches the rest
                # (a day whose drop was deferred, its table busy, included: batches never wait).
                dropped = await purge_days(self.database, category, cutoff, self.clock.now())
                if dropped.partitions:
                    async with self.database.read() as connection:
                        remaining = await counts.expired(connection, category, cutoff)
                    return dropped.rows, remaining, dropped.partitions
            return await self._purge_batches(category, cutoff, batch_size)
        finally:
            self._forget_expired(category.sealed, cutoff)

    async def _purge_batches(
        self, category: RowCategory, cutoff: datetime, batch_size: int
    ) -> tuple[int, int, int]:
        deleted = batches = 0
        started = time.monotonic()
        rows = batch_size
        if self._sqlite:
            rows = min(batch_size, self._batch_rows.get(category.name, DEFAULT_BATCH))
        database, target = self.database, self.batch_seconds
        # SQLite: the batches leave checkpoints to the purge, which runs them alongside its
        # batches every CHECKPOINT_SECONDS, and at the call's end (`compaction.Checkpoints`).
        checkpoints = Checkpoints(database, CHECKPOINT_SECONDS, target)
        deleting = 0.0  # seconds of batches in the writers' turn, commits included
        pace = self._pace
        async with database.checkpoints_paused(), purge_connection(database) as held:
            try:
                while True:
                    async with purge_transaction(database, held, target) as connection:
                        began = time.monotonic()  # in the writers' turn
                        count = await purge_batch(connection, category, cutoff, rows, self.clock)
                    now = time.monotonic()
                    took, deleting = now - began, deleting + now - began
                    deleted += count
                    batches += 1
                    if count < rows or now - started > PURGE_CALL_SECONDS:
                        break
                    if held is not None:  # SQLite: the service's writers wait for each batch
                        waiting = database.writers_waiting()
                        rows = pace.next(rows, took, batch_size, waiting=waiting)
                        self._batch_rows[category.name] = rows
                        checkpoints.due()
                    await asyncio.sleep(0)  # let the service's other requests in between batches
            finally:
                await checkpoints.settle(final=False)
        async with database.read() as connection:
            remaining = await counts.expired(connection, category, cutoff)
        compacting = time.monotonic()  # the rest: the log checkpointed, space given back
        if deleted and remaining == 0 and self._sqlite:
            await self.compact()  # its own checkpoints, the log truncated
        elif deleted:
            await database.checkpoint(yielding=target)
        log.info(
            "purge call",
            extra={
                "participant": self.name,
                "category": category.name,
                "rows_deleted": deleted,
                "batches": batches,
                "seconds": round(time.monotonic() - started, 4),
                "seconds_batches": round(compacting - started, 4),
                "seconds_in_turn": round(deleting, 4),
                "seconds_compacting": round(time.monotonic() - compacting, 4),
            },
        )
        return deleted, remaining, batches

    def _forget_expired(self, sealed: SealedColumns | None, cutoff: datetime) -> None:
        """After a purge: the keys of the days before the cutoff's are (or are about to be)
        destroyed by retention; none of them stays in memory."""
        if sealed is not None and self.keys is not None:
            self.keys.forget_before(sealed.category, day_of(cutoff))

    async def seal(self, category: Category, batch_size: int) -> tuple[int, int]:
        """(rows sealed, rows still in plaintext: up to COUNT_CAP) of one call: batches of the
        oldest plaintext rows until none is left or about PURGE_CALL_SECONDS have passed
        (`seal.Passes`)."""
        if category.sealed is None or self.keys is None:
            raise FailedPrecondition(
                "CATEGORY_NOT_SEALED", f"{self.name} does not seal {category.name}"
            )
        assert not isinstance(category, FileCategory)  # files are never sealed
        sealed, remaining = await self._passes.call(
            category, self.keys, batch_size, PURGE_CALL_SECONDS
        )
        if sealed and not remaining:
            # The plaintext's old copies leave the files too (the WAL, the pages not yet
            # checkpointed): a copy of the files taken once the migration ends holds none.
            await self.compact()
        return sealed, remaining

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
                    done = await erase_batch(connection, category, user_id, DEFAULT_BATCH)
                count += done
                if done < DEFAULT_BATCH:
                    break
            if category.keep_on_erase:
                result[category.name] = (0, count, category.keep_on_erase)
            else:
                result[category.name] = (count, 0, "")
        await self.compact(rebuild=True)
        if self.keys is not None:
            self.keys.forget_user(user_id)  # the vault destroyed the user's owner key
        if self._after_erase is not None:
            await self._after_erase(user_id)
        return result

    async def export(self, user_id: str) -> AsyncIterator[tuple[str, dict]]:
        for category in self.categories.values():
            exported = isinstance(category, TableCategory) and category.export_section
            if not exported or category.user_column is None:
                continue
            sealed = self._sealed_columns(category.table.name)
            rows = export_rows(self.database, category, user_id, sealed, self.keys)
            async for record in rows:
                yield category.export_section, record

    def _sealed_columns(self, table: str) -> list[SealedColumns]:
        """The sealed columns of `table`, whichever category declares them."""
        found = [c.sealed for c in self.categories.values() if c.sealed is not None]
        return list(dict.fromkeys(s for s in found if s.table == table))

    async def compact(self, *, rebuild: bool = False, truncate: bool = True) -> None:
        """SQLite: free pages given back and the WAL truncated, so deleted bytes leave the files
        (`compaction.compact`; `rebuild` at an erasure). Between the calls of one long purge
        (`truncate` False) nothing more runs: each call ends with a checkpoint, outside the
        writers' lock."""
        if self._sqlite and truncate:
            await compact(
                self.database,
                self.name,
                self._pace,
                rebuild=rebuild,
                checkpoint_seconds=CHECKPOINT_SECONDS,
            )

    def category(self, name: str) -> Category:
        """A declared category by name; NotFound UNKNOWN_CATEGORY otherwise."""
        try:
            return self.categories[name]
        except KeyError:
            raise NotFound("UNKNOWN_CATEGORY", f"{self.name} has no category {name!r}") from None


def _batch_size(requested: int) -> int:
    if not 0 <= requested <= MAX_BATCH:
        raise InvalidArgument(
            "INVALID_BATCH_SIZE", f"batch_size is at most {MAX_BATCH}", field="batch_size"
        )
    return requested or DEFAULT_BATCH


def _time(message, name: str) -> datetime | None:
    return as_utc(getattr(message, name).ToDatetime()) if message.HasField(name) else None
