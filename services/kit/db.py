"""Each service's database: an async engine for the service, Alembic for its schema.

SQLite (the embedded default) gets WAL, `synchronous=FULL` (a commit survives power loss), a busy
timeout, `BEGIN IMMEDIATE` so concurrent writers queue instead of failing, and `secure_delete`
with incremental auto-vacuum so that what retention deletes leaves the file; any SQLAlchemy URL
(PostgreSQL in production) works the same. Engines never render bound parameters into errors or
logs (`hide_parameters`): they may hold secrets.

A SQLite database is private to the user running the mesh (it holds webhook bodies, signing
secrets, sealed credentials): its directory is made 0700 and the file 0600 before SQLite opens it.
SQLite creates `-wal` and `-shm` with the mode of their database file, so they follow; processes
also start with `private_umask()`, so nothing they create later is readable by other users either.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import BigInteger, DateTime, Integer, MetaData, create_engine, event, make_url
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.kit.clock import as_utc

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}
_SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}


def _with_driver(url: str, drivers: dict[str, str]) -> URL:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    return parsed.set(drivername=drivers.get(backend, parsed.drivername))


def create_service_engine(url: str) -> AsyncEngine:
    parsed = _with_driver(url, _ASYNC_DRIVERS)
    if parsed.get_backend_name() == "sqlite":
        _ensure_parent(parsed)
        # A steady pool: each aiosqlite connection is a thread, and overflow connections made and
        # dropped under load cost more than waiting for one (SQLite writes one at a time anyway).
        engine = create_async_engine(
            parsed, hide_parameters=True, pool_size=8, max_overflow=0, pool_timeout=30
        )
        _tune_sqlite(engine.sync_engine)
        return engine
    return create_async_engine(parsed, hide_parameters=True, pool_pre_ping=True, pool_size=10)


def create_sync_engine(url: str) -> Engine:
    parsed = _with_driver(url, _SYNC_DRIVERS)
    if parsed.get_backend_name() == "sqlite":
        _ensure_parent(parsed)
        engine = create_engine(parsed, hide_parameters=True)
        _tune_sqlite(engine)
        return engine
    return create_engine(parsed, hide_parameters=True)


PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def private_umask() -> None:
    """At a process's start: files and directories it creates are its user's alone."""
    os.umask(0o077)


def private_dir(path: Path) -> None:
    """`path` (and missing parents) made, and `path` itself made 0700 even if it existed."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)


def _ensure_parent(url: URL) -> None:
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        return
    database = Path(url.database)
    private_dir(database.parent)
    # Made 0600 before SQLite makes it 0644 (0666 less a usual umask). Only ever a new file: this
    # process closing a descriptor of a database it has open would drop SQLite's POSIX locks.
    try:
        os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE))
    except FileExistsError:
        pass
    # An existing file (made by an older version) is tightened, with its journal files.
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        try:
            if path.stat().st_mode & 0o777 != PRIVATE_FILE:
                os.chmod(path, PRIVATE_FILE)
        except FileNotFoundError:
            pass


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the driver, open transactions (the driver's would be DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # A new, empty file: incremental auto-vacuum, set before anything is written to it (on
        # an existing file the pragma would write its header on every connect; `migrate`
        # converts those once).
        cursor.execute("PRAGMA page_count")
        if cursor.fetchone()[0] == 0:
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Accepted means durable: a commit is on disk before the caller is answered, power loss
        # included (NORMAL, WAL's usual companion, may roll back the last commits on power loss).
        # Group commit keeps this to one fsync per batch where traffic is heavy.
        cursor.execute("PRAGMA synchronous=FULL")
        # Deleted means gone from the file: freed content is overwritten with zeros, and free
        # pages go back to the file system after purges (retention: incremental_vacuum; a new
        # file takes auto_vacuum above, `migrate` converts an existing one).
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        # A deferred transaction that reads then writes fails with SQLITE_BUSY when another
        # writer got in between; taking the write lock up front makes writers wait instead.
        # Read-only transactions (Database.read) stay deferred: in WAL mode they never wait.
        # Straight through the driver: no statement events, so no span for a BEGIN per transaction.
        statement = (
            "BEGIN" if connection.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
        )
        cursor = connection.connection.dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()


TxT = TypeVar("TxT")


def row_dict(row) -> dict[str, Any] | None:
    """A result row as a dict, its datetimes aware (UTC); None for no row."""
    if row is None:
        return None
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row._mapping.items()}


class RowTx:
    """A transaction's queries answering dicts: the base of a service's `Tx`."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.c = connection

    async def _one(self, query) -> dict[str, Any] | None:
        return row_dict((await self.c.execute(query)).first())

    async def _all(self, query) -> list[dict[str, Any]]:
        return [row_dict(r) for r in await self.c.execute(query)]  # type: ignore[misc]


READ_ONLY = "leadmesh_read_only"

# Column types every service's tables use: aware timestamps, and an autoincrementing key that is
# INTEGER PRIMARY KEY on SQLite and BIGINT on PostgreSQL.
Time = DateTime(timezone=True)
Serial = BigInteger().with_variant(Integer(), "sqlite")


def service_metadata() -> MetaData:
    """Table metadata with the naming convention every migration history relies on."""
    return MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


# SQLite's own default: a commit that leaves the log this long (in pages) checkpoints it.
AUTOCHECKPOINT_PAGES = 1000
# A deferring writer (`Database.writing(yielding=…)`) lets this many turns of the service's
# writers go first: a group commit that waited for it, and the next one, which gathered the
# requests that came meanwhile.
DEFER_TURNS = 2
# A checkpoint copies the log outside the writers' turn until a pass copies at most this many
# pages (or CHECKPOINT_PASSES passes), then the rest in their turn: that turn stays short while a
# purge writes alongside.
CHECKPOINT_LEFT_PAGES = 1000
CHECKPOINT_PASSES = 3


class Database:
    """A service's engine with its two kinds of transaction: `write()` and `read()`.

    On SQLite, writers of one process queue on an asyncio lock rather than on the file lock, whose
    busy handler sleeps in growing steps (tens of milliseconds under contention); readers take no
    lock at all (WAL). Elsewhere both are plain transactions.

    SQLite checkpoints its log inside the commit that makes it pass AUTOCHECKPOINT_PAGES: that
    caller waits for the copy into the database file and its fsyncs. A retention purge writes
    thousands of pages a batch; while it runs (`checkpoints_paused`) the service's `write()`
    commits leave checkpoints to it, and it runs them (`checkpoint`) outside the writers' lock,
    alongside them. (The vault's audit appender, which never writes during a purge of its own
    tables' size, keeps SQLite's default.)
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._writers = asyncio.Lock()
        self._paused = 0
        # Writers in the queue or holding the turn (`writing`), deferring ones (`yielding`) not
        # counted; `_released` is set at each turn's end, for the deferring ones.
        self._queued = 0
        self._released = asyncio.Event()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        async with self.writing(), self.engine.begin() as connection:
            if self._sqlite:
                await self._autocheckpoint(connection, 0 if self._paused else AUTOCHECKPOINT_PAGES)
            yield connection

    @staticmethod
    async def _autocheckpoint(connection: AsyncConnection, pages: int) -> None:
        """The connection's autocheckpoint set, straight through the driver (no span), only when
        it changes (`info` lives with the pooled connection)."""
        if connection.info.get("autocheckpoint", AUTOCHECKPOINT_PAGES) == pages:
            return
        sqlite = (await connection.get_raw_connection()).driver_connection
        await (await sqlite.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")).close()
        connection.info["autocheckpoint"] = pages

    @asynccontextmanager
    async def checkpoints_paused(self) -> AsyncIterator[None]:
        """SQLite: this process's `write()` commits do not checkpoint meanwhile; the caller
        runs `checkpoint()` often enough to keep the log short."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    async def checkpoint(self, *, yielding: float = 0.0) -> tuple[int, int]:
        """SQLite: a PASSIVE checkpoint outside the writers' lock (writers go on meanwhile), then
        one in their turn for what they committed during it, so that the next writer starts the
        log again from its beginning (`yielding`: that turn as `writing` takes it). (pages in
        the log, pages checkpointed)."""
        if not self._sqlite:
            return 0, 0
        before = None
        for _ in range(CHECKPOINT_PASSES):
            # A pass copies what the log held at its start: what it copied is about what was
            # written during the last one, about what the next one (in the writers' turn) has.
            _, _, done = await self._pragma_row("wal_checkpoint(PASSIVE)")
            if before is not None and done - before <= CHECKPOINT_LEFT_PAGES:
                break
            before = done
        async with self.writing(yielding=yielding):
            _, log, done = await self._pragma_row("wal_checkpoint(PASSIVE)")
        return log, done

    async def _pragma_row(self, pragma: str) -> tuple:
        async with self.engine.connect() as connection:
            sqlite = (await connection.get_raw_connection()).driver_connection
            cursor = await sqlite.execute(f"PRAGMA {pragma}")
            row = await cursor.fetchone()
            await cursor.close()
            return tuple(row)

    @asynccontextmanager
    async def writing(self, *, yielding: float = 0.0) -> AsyncIterator[None]:
        """This process's turn to write (SQLite: the writers' queue; elsewhere: no wait).

        `yielding` (seconds): a background writer (a purge's batch, a vacuum step) lets the
        service's writers go first, waiting up to that long for nobody to be queued, then queues
        as they do (so it is never starved). Without it a request's group commit waits for a
        batch twice: once with its turn taken, once more for the next commit, which gathered the
        requests that came meanwhile."""
        if not self._sqlite:
            yield
            return
        if yielding > 0:
            await self._defer(yielding)
        else:
            self._queued += 1
        try:
            async with self._writers:
                yield
        finally:
            if yielding <= 0:
                self._queued -= 1
            self._released.set()

    async def _defer(self, most: float) -> None:
        """Until no writer is queued or writing, DEFER_TURNS of theirs have ended, or `most`
        seconds have passed: under steady traffic the service's writers never leave the turn
        free, and a background writer must still get on."""
        deadline, turns = time.monotonic() + most, 0
        while self._queued and turns < DEFER_TURNS:
            self._released.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(self._released.wait(), left)
            except TimeoutError:
                return
            turns += 1
            # A group commit whose turn just ended takes the next one at once, in the same
            # step of the event loop: let it.
            await asyncio.sleep(0)

    def writers_waiting(self) -> bool:
        """SQLite: a writer (not a deferring one) is queued for the turn or holds it."""
        return self._queued > 0

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as connection:
            await connection.execution_options(**{READ_ONLY: True})
            async with connection.begin():
                yield connection

    async def dispose(self) -> None:
        await self.engine.dispose()


class Store(Generic[TxT]):
    """A service's store: `begin()` for a transaction that may write, `read()` for one that only
    reads; each hands out the service's `Tx` (its queries) over the connection."""

    tx_class: type[TxT]

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.database = Database(engine)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[TxT]:
        async with self.database.write() as connection:
            yield self.tx_class(connection)  # type: ignore[call-arg]

    @asynccontextmanager
    async def read(self) -> AsyncIterator[TxT]:
        async with self.database.read() as connection:
            yield self.tx_class(connection)  # type: ignore[call-arg]

    async def close(self) -> None:
        await self.engine.dispose()


def migrate(url: str, migrations: Path) -> None:
    """`alembic upgrade head` for one service's history."""
    engine = create_sync_engine(url)
    try:
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(migrations))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        if engine.dialect.name == "sqlite":
            _incremental_vacuum_on(engine)
    finally:
        engine.dispose()


INCREMENTAL = 2


def _incremental_vacuum_on(engine: Engine) -> None:
    """A SQLite file made before retention (auto_vacuum NONE) converted once: the mode takes
    effect only through a VACUUM, which must run outside any transaction."""
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        if raw.execute("PRAGMA auto_vacuum").fetchone()[0] == INCREMENTAL:
            return
        raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
        raw.execute("VACUUM")


def run_alembic_env(target_metadata: MetaData) -> None:
    """The body of every service's `migrations/env.py` (online mode, connection given)."""
    from alembic import context

    connection = context.config.attributes.get("connection")
    if connection is None:
        url = context.config.get_main_option("sqlalchemy.url")
        if not url:
            raise SystemExit("set sqlalchemy.url or run through services.kit.db.migrate")
        engine = create_sync_engine(url)
        with engine.begin() as connection:
            _configure_and_run(context, connection, target_metadata)
        return
    _configure_and_run(context, connection, target_metadata)


def _configure_and_run(context, connection, target_metadata: MetaData) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
