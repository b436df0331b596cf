"""SQLite only: the connection a purge's batches run on, its checkpoints, and the compaction after a
purge or an erasure that makes deleted bytes leave the database's files.

With `secure_delete` on (kit.db), a deleted row is zeroed where it lies; `incremental_vacuum`
gives the free pages back and a WAL checkpoint that truncates the log drops its older copies.
Never holds the service's writers' lock for more than about one batch at a time (a VACUUM, at an
erasure, excepted: it says so), and lets them go first (`Database.writing(yielding=…)`). Every
pooled connection leaves here with the settings `Database.write` expects (durable commits,
SQLite's own checkpoints and cache).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.db import AUTOCHECKPOINT_PAGES as AUTOCHECKPOINT
from services.kit.db import Database
from services.kit.retention.batches import Pace

log = logging.getLogger("leadmesh.retention")

CHECKPOINT_TRIES = 5
# Free pages given back by a compaction's first step (4 MiB of 4 KiB pages); the next steps are
# sized by their time (`batches.Pace`, as a batch is), up to MAX_VACUUM_PAGES. Moving a page
# costs what its place in the file costs (a live page near the end is copied into a hole, its
# parent rewritten): a step of fixed pages may take 10 ms or 200 ms.
VACUUM_PAGES = 1024
MAX_VACUUM_PAGES = 65_536
# ... aimed at this share of a batch's time: a step's time varies more than a batch's with what
# its pages are (live ones moved, free ones dropped), so that its longest stays about one batch.
# bench/purge.py at 1M rows: 0.5 gave ingest a p99 of 3.08 × idle during the purge, 0.3 2.37 ×,
# and the purge with nobody waiting as fast (57.1 s, 56.8 s; its steps are 4 × longer then).
VACUUM_SHARE = 0.3
# SQLite: page cache of the connection a purge batch runs on, while it runs (KiB).
PURGE_CACHE_KIB = 32 * 1024


class Checkpoints:
    """A purge's checkpoints of the log (`Database.checkpoint`), each run alongside the batches
    (or vacuum steps) that follow, one at a time, the next `every` seconds after the last ended:
    the log stays short (a page read looks it up in the log's index first, longer as the log
    grows), and the copy into the database file and its fsyncs overlap the next batches instead
    of adding to them."""

    def __init__(self, database: Database, every: float, yielding: float) -> None:
        self.database, self.every, self.yielding = database, every, yielding
        self._running: asyncio.Task | None = None
        self._ended = time.monotonic()

    def due(self) -> None:
        """Starts one if it is time and none runs (an error of the last one raised here)."""
        if self._running is not None:
            if not self._running.done():
                return
            self._running.result()
            self._running = None
        if time.monotonic() - self._ended > self.every:
            self._running = asyncio.create_task(self._one())

    async def _one(self) -> None:
        try:
            await self.database.checkpoint(yielding=self.yielding)
        finally:
            self._ended = time.monotonic()

    async def settle(self, *, final: bool) -> None:
        """The running one awaited; `final`: then one more, for everything written since."""
        if self._running is not None:
            running, self._running = self._running, None
            await running
        if final:
            await self.database.checkpoint(yielding=self.yielding)


@asynccontextmanager
async def purge_transaction(
    database: Database, held: AsyncConnection | None, yielding: float = 0.0
) -> AsyncIterator[AsyncConnection]:
    """A write transaction for one batch: on SQLite on the call's `held` connection, in the
    writers' turn (after the service's writers, waiting up to `yielding` seconds for them);
    elsewhere a plain one."""
    if held is None:
        async with database.write() as connection:
            yield connection
        return
    async with database.writing(yielding=yielding), held.begin():
        yield held


@asynccontextmanager
async def purge_connection(database: Database) -> AsyncIterator[AsyncConnection | None]:
    """SQLite: one pooled connection for a call's batches (each batch then waits for the
    writers' turn only, not for a connection to be set up in it), set for them while it is held:

    - commits without an fsync (synchronous NORMAL: in WAL mode a commit may be lost to a power
      cut, never corrupted): a batch lost is simply done again, and the service's own writers,
      which queue behind each batch, wait a commit instead of a commit and an fsync;
    - no checkpoint inside its commits (the purge runs them outside the writers' lock:
      `Database.checkpoint`);
    - a page cache that holds a batch's pages: a batch of random-key index entries dirties
      about a page per row, which SQLite's 2 MiB default spills to the log mid-batch.

    None elsewhere."""
    if database.engine.dialect.name != "sqlite":
        yield None
        return
    async with database.engine.connect() as connection:
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


async def compact(
    database: Database,
    participant: str,
    pace: Pace,
    *,
    rebuild: bool = False,
    checkpoint_seconds: float = 0.5,
) -> None:
    """Free pages given back and the WAL truncated, so deleted bytes leave the files.

    B-tree rebalancing can leave stale copies of a row that was moved before it was deleted in
    the unused space of a live page: an erasure therefore rebuilds the file (`rebuild`, a
    VACUUM: writes wait meanwhile), so none of the user's bytes survive; a purge does not (its
    payloads are what sealing makes unreadable).

    The free pages go back in steps sized by their time (`pace`), each its own turn of the
    writers' lock (after the service's writers), the log checkpointed alongside them every
    `checkpoint_seconds`; then a last checkpoint outside the lock, then the log is truncated; a
    reader still open elsewhere holds that back: it is tried again briefly, then left to the
    next purge (and SQLite's own checkpoints) with a warning."""
    if rebuild:
        await _script(database, "VACUUM;")
    step_seconds = pace.target
    checkpoints = Checkpoints(database, checkpoint_seconds, step_seconds)
    async with database.checkpoints_paused(), purge_connection(database) as held:
        sqlite = (await held.get_raw_connection()).driver_connection  # type: ignore[union-attr]
        pages = VACUUM_PAGES
        try:
            # The count read on the held connection, outside the writers' turn: a read.
            while await _first(sqlite, "PRAGMA freelist_count"):
                async with database.writing(yielding=step_seconds):
                    began = time.monotonic()
                    await sqlite.executescript(f"PRAGMA incremental_vacuum({pages});")
                    took = time.monotonic() - began
                waiting = database.writers_waiting()
                pages = pace.next(
                    pages, took, MAX_VACUUM_PAGES, waiting=waiting, share=VACUUM_SHARE
                )
                checkpoints.due()
                await asyncio.sleep(0)  # the service's writers go between the steps
        finally:
            # So that truncating the log copies next to nothing.
            await checkpoints.settle(final=True)
    for attempt in range(CHECKPOINT_TRIES):
        if not await _pragma(database, "wal_checkpoint(TRUNCATE)", yielding=step_seconds):
            return
        await asyncio.sleep(0.05 * (attempt + 1))
    log.warning("wal checkpoint held back by a reader", extra={"participant": participant})


async def _script(database: Database, script: str) -> None:
    """Straight through the driver, outside any transaction (as a script: stepped to its end; a
    plain execute of incremental_vacuum frees one page per call)."""
    async with database.writing(), database.engine.connect() as connection:
        sqlite = (await connection.get_raw_connection()).driver_connection
        await sqlite.executescript(script)


async def _pragma(database: Database, pragma: str, *, yielding: float = 0.0) -> int:
    """The first column of a pragma's first row (a checkpoint's busy flag), in the writers'
    turn."""
    async with database.writing(yielding=yielding), database.engine.connect() as connection:
        sqlite = (await connection.get_raw_connection()).driver_connection
        return await _first(sqlite, f"PRAGMA {pragma}")


async def _first(sqlite, statement: str) -> int:
    """The first column of a statement's first row, straight through the driver."""
    cursor = await sqlite.execute(statement)
    value = (await cursor.fetchone())[0]
    await cursor.close()
    return value
