"""Rows appended in batches on a thread of their own, straight through the database driver.

For append-only tables written in large batches (the vault's audit events), where SQLAlchemy's
per-row work for an executemany costs ten times SQLite's own: the INSERT is compiled by
SQLAlchemy from the table, once, and each value converted by its column type's own bind
processor, so rows are stored exactly as through the engine; the driver then inserts the batch
in one executemany (PostgreSQL) or a few multi-row INSERTs (SQLite: its driver gives up and
retakes the GIL for each row of an executemany, a handoff with the busy event loop each). The
batch runs on a thread of its own, so the event loop never waits for the commit (an fsync on
SQLite); it is one transaction.

A row is a mapping of column names, or — for the busiest writers, which need no dict per row — a
tuple of its values in the order of `Appender.columns(table)`.

Only for inserts that need nothing back (no generated ids): anything that reads goes through the
service's `Store`. Appends take their turn among the process's writers (`Database.writing`).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Table, insert

from services.kit.db import Database, create_sync_engine

# SQLite's own default limit on a statement's parameters (SQLITE_MAX_VARIABLE_NUMBER, 3.32+), and
# rows per statement (few distinct statement texts, each cached by the driver).
_SQLITE_VARIABLES = 32766
_SQLITE_ROWS = 512


class _Statement:
    """One table's INSERT, compiled for the engine's dialect, and how to bind a row to it."""

    def __init__(self, table: Table, dialect) -> None:
        columns = [c for c in table.columns if not (c.primary_key and c.autoincrement is True)]
        self._table, self._dialect = table, dialect
        self._empty_row = {c.name: None for c in columns}
        compiled = self._compile(1)
        self.sql = compiled.string
        self._names = [c.name for c in columns]
        # Multi-row INSERTs by their row count (positional paramstyles: rows' values in order).
        self._multirow: dict[int, str] = {}
        positions = compiled.positiontup  # None for named paramstyles (psycopg)
        # Each column's bind processor, by the column's index in a row.
        self._convert_at = [
            (index, convert)
            for index, c in enumerate(columns)
            if (convert := c.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        # Where a positional statement takes each value (column order, as a rule: no reordering).
        self._order = None if positions is None else [self._names.index(p) for p in positions]
        self._in_order = self._order == list(range(len(self._names)))

    @property
    def columns(self) -> list[str]:
        return list(self._names)

    def bind(self, row: Mapping[str, Any] | tuple) -> tuple | dict:
        """A mapping row, or a tuple row in `columns` order, as the driver takes it."""
        if type(row) is not tuple:
            row = tuple(row.get(name) for name in self._names)
        elif len(row) != len(self._names):
            raise ValueError(f"a row of {self._table.name} has {len(self._names)} values")
        values = list(row)
        for index, convert in self._convert_at:
            values[index] = convert(values[index])
        if self._in_order:
            return tuple(values)
        if self._order is None:
            return dict(zip(self._names, values, strict=True))
        return tuple(values[index] for index in self._order)

    def _compile(self, rows: int):
        values = self._empty_row if rows == 1 else [self._empty_row] * rows
        return insert(self._table).inline().values(values).compile(dialect=self._dialect)

    def insert_multirow(self, cursor, rows: list[tuple]) -> None:
        """The bound rows in multi-row INSERTs (positional paramstyles): sqlite3 steps each
        statement once — and gives up and retakes the GIL once, a handoff with the busy event
        loop's thread — where an executemany does so for every row. Chunks have power-of-two
        sizes, so that few statement texts exist (the driver caches its prepared statements)."""
        most = max(1, min(_SQLITE_ROWS, _SQLITE_VARIABLES // len(self._names)))
        start = 0
        while start < len(rows):
            size = 1 << (min(most, len(rows) - start).bit_length() - 1)
            sql = self._multirow.get(size)
            if sql is None:
                sql = self._multirow[size] = self._compile(size).string
            cursor.execute(sql, [v for row in rows[start : start + size] for v in row])
            start += size


class Appender:
    def __init__(self, database: Database, tables: Sequence[Table], name: str) -> None:
        self._database = database
        self._engine = create_sync_engine(database.engine.url.render_as_string(hide_password=False))
        dialect = self._engine.dialect
        self._sqlite = dialect.name == "sqlite"
        self._statements = {table.name: _Statement(table, dialect) for table in tables}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        # The thread's own connection, kept between batches (only the thread touches it).
        self._connection: Any = None

    def columns(self, table: Table) -> list[str]:
        """The order of a tuple row's values for `table`."""
        return self._statements[table.name].columns

    async def append(self, rows: Mapping[str, Sequence[Mapping[str, Any] | tuple]]) -> None:
        """Appends `{table name: rows}` in one transaction; returns once it is committed."""
        bound = {
            name: [self._statements[name].bind(row) for row in items]
            for name, items in rows.items()
            if items
        }
        if not bound:
            return
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        async with self._database.writing():
            await loop.run_in_executor(self._thread, context.run, self._write, bound)

    def _write(self, bound: dict[str, list]) -> None:
        if self._connection is None:
            self._connection = self._engine.raw_connection()
        connection = self._connection
        cursor = connection.cursor()
        try:
            if self._sqlite:  # the driver is in autocommit mode (services.kit.db)
                cursor.execute("BEGIN IMMEDIATE")
            for name, rows in bound.items():
                statement = self._statements[name]
                if self._sqlite:
                    statement.insert_multirow(cursor, rows)
                else:
                    cursor.executemany(statement.sql, rows)
            connection.commit()
        except BaseException:
            # Rolled back here and now: a traceback kept by whoever reports the error keeps this
            # frame, and a connection closed with a live statement keeps SQLite's write lock.
            self._connection = None
            try:
                connection.rollback()
            finally:
                cursor.close()
                connection.invalidate()  # a fresh connection next time
            raise
        cursor.close()

    def close(self) -> None:
        """Waits for the batch under way, then lets the thread and the connection go."""
        self._thread.shutdown(wait=True)
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._engine.dispose()
