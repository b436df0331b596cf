"""The Seal RPC's batches: a sealed category's rows written before sealing existed, read oldest
first, sealed in memory with their owners' keys, and written back in one short transaction.

A stored value is sealed when it is the text `lmsealed:v1:…` (services/kit/sealing.py), in a
JSON column the JSON string `"lmsealed:v1:…"`: the predicate compares the stored text's first
characters, exactly (SQLite's LIKE ignores case), the same way on SQLite and PostgreSQL. A value
is written back only where its column still holds the value read, so a concurrent writer wins
and a row is never sealed twice; a batch is one transaction, so a call killed anywhere loses
nothing and the next one goes on. A row whose day key is destroyed is past its category's max
age: it is purged as a purge would (columns cleared and stamped, or the row deleted).

Never logs a value, and never writes one in plaintext that was read sealed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Text,
    and_,
    bindparam,
    cast,
    func,
    or_,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeDecorator, TypeEngine

from services.kit.clock import Clock
from services.kit.db import Database
from services.kit.errors import Unavailable
from services.kit.retention.batches import next_batch, pending
from services.kit.retention.categories import ColumnCategory, RowCategory
from services.kit.retention.counts import bounded_count
from services.kit.sealing import (
    PREFIX,
    ExecutionKeys,
    KeysUnavailable,
    Ref,
    SealedColumns,
    Unreadable,
)

Position = tuple[Any, ...]  # (time, *primary key) of the last row a batch read
_RAW = "raw_"
# How long a caller should wait before asking again while the vault cannot be reached.
KEYS_RETRY_SECONDS = 5.0


def keys_unavailable() -> Unavailable:
    """The error of a call that needs keys the vault cannot give now (HTTP 503)."""
    return Unavailable(
        "EXECUTION_KEYS_UNAVAILABLE",
        "the keys of sealed data cannot be had now; try again later",
        retry_after=KEYS_RETRY_SECONDS,
    )


class Passes:
    """One participant's sealing: where each category's next call goes on, and its batch size.

    Each call goes on from where the last one in this process stopped (a pass over the table,
    oldest first), and a pass that reaches the newest row starts again from the oldest, so a
    row a concurrent writer held back is sealed by the next pass; the count a call answers
    covers what the next call will see (from its position; the whole table once it is past
    everything)."""

    def __init__(
        self, database: Database, clock: Clock, first_rows: int, batch_seconds: float
    ) -> None:
        self.database = database
        self.clock = clock
        self.first_rows = first_rows
        self.batch_seconds = batch_seconds
        self._sqlite = database.engine.dialect.name == "sqlite"
        self._rows: dict[str, int] = {}
        self._from: dict[str, Position | None] = {}

    async def call(
        self, category: RowCategory, keys: ExecutionKeys, batch_size: int, seconds: float
    ) -> tuple[int, int]:
        """(rows sealed, rows still in plaintext up to COUNT_CAP): batches for about
        `seconds`; Unavailable EXECUTION_KEYS_UNAVAILABLE when the vault cannot be asked (the
        batches before stay sealed)."""
        name, started, total = category.name, time.monotonic(), 0
        rows = batch_size
        if self._sqlite:  # the service's writers wait for each batch: sized by its time
            rows = min(batch_size, self._rows.get(name, self.first_rows))
        after = self._from.get(name)
        while True:
            batch = await read_batch(self.database, category, after, rows)
            if batch:
                try:
                    done = await seal_batch(self.database, category, batch, keys, self.clock)
                except KeysUnavailable:
                    raise keys_unavailable() from None
                total += done.rows
                after = self._from[name] = position(category, batch[-1])
            if len(batch) < rows:
                after = self._from[name] = None  # the pass is over
                break
            if time.monotonic() - started > seconds:
                break
            if self._sqlite:
                rows = self._rows[name] = next_batch(
                    rows, done.took, batch_size, self.batch_seconds
                )
            await asyncio.sleep(0)  # let the service's other requests in between batches
        remaining = await count_plaintext(self.database, category, after)
        if not remaining and after is not None:
            # Nothing past this pass's position: what a writer held back before it is next.
            self._from[name] = None
            remaining = await count_plaintext(self.database, category, None)
        return total, remaining


def _is_json(kind: TypeEngine) -> bool:
    while isinstance(kind, TypeDecorator):
        kind = kind.impl_instance
    return isinstance(kind, JSON)


def _stored_text(category: RowCategory, name: str) -> ColumnElement[Any]:
    column = category.table.c[name]
    return cast(column, Text) if _is_json(column.type) else column


def plaintext(category: RowCategory) -> list[ColumnElement[bool]]:
    """Rows still holding a sealed column in plaintext (not NULL, not JSON null, not sealed);
    rows of no one are left (no owner key can seal them), cleared details too."""
    sealed = _sealed(category)
    table = category.table
    held = []
    for name in sealed.columns:
        stored = _stored_text(category, name)
        mark = f'"{PREFIX}' if _is_json(table.c[name].type) else PREFIX
        condition = and_(table.c[name].is_not(None), func.substr(stored, 1, len(mark)) != mark)
        if _is_json(table.c[name].type):
            condition = and_(condition, stored != "null")
        held.append(condition)
    conditions = [or_(*held), table.c[sealed.owner_column].is_not(None)]
    waiting = pending(category)
    if waiting is not None:
        conditions.append(waiting)
    return conditions


def _time(category: RowCategory) -> Column:
    """The column whose UTC day names a row's key: the batches go oldest first on it."""
    return category.table.c[_sealed(category).time_column]


def _after(category: RowCategory, position: Position | None) -> list[ColumnElement[bool]]:
    if position is None:
        return []
    age, keys = _time(category), list(category.table.primary_key.columns)
    # `age >= …` narrows the time index's range; the row comparison breaks ties by key.
    return [age >= position[0], tuple_(age, *keys) > tuple_(*position)]


def _sealed(category: RowCategory) -> SealedColumns:
    assert category.sealed is not None
    return category.sealed


async def count_plaintext(database: Database, category: RowCategory, after: Position | None) -> int:
    """Rows left in plaintext from `after` on (the whole table: None), up to COUNT_CAP."""
    async with database.read() as connection:
        return await bounded_count(
            connection, category.table, plaintext(category) + _after(category, after)
        )


async def read_batch(
    database: Database, category: RowCategory, after: Position | None, rows: int
) -> list[dict[str, Any]]:
    """The oldest `rows` rows in plaintext after `after`, with each sealed column's stored text
    (`raw_<column>`: what the write back compares)."""
    sealed, table = _sealed(category), category.table
    age, keys = _time(category), list(table.primary_key.columns)
    names = {*sealed.columns, sealed.time_column, sealed.owner_column, *sealed.id_columns}
    wanted = [table.c[n] for n in sorted(names | {age.name} | {k.name for k in keys})]
    raw = [_stored_text(category, n).label(f"{_RAW}{n}") for n in sealed.columns]
    query = (
        select(*wanted, *raw)
        .where(*plaintext(category), *_after(category, after))
        .order_by(age, *keys)
        .limit(rows)
    )
    async with database.read() as connection:
        return [dict(row._mapping) for row in (await connection.execute(query)).all()]


def position(category: RowCategory, row: Mapping[str, Any]) -> Position:
    keys = category.table.primary_key.columns
    return (row[_time(category).name], *(row[k.name] for k in keys))


@dataclass
class Sealed:
    """One batch's outcome: rows sealed, rows purged (day key destroyed), seconds it held the
    writers' turn."""

    rows: int = 0
    purged: int = 0
    took: float = 0.0


async def seal_batch(
    database: Database,
    category: RowCategory,
    rows: list[dict[str, Any]],
    keys: ExecutionKeys,
    clock: Clock,
) -> Sealed:
    """`rows` (from `read_batch`) sealed and written back; KeysUnavailable when the vault
    cannot be asked (nothing of this batch is written then)."""
    sealed = _sealed(category)
    refs: dict[str, set[Ref]] = {}
    for row in rows:
        refs.setdefault(row[sealed.owner_column], set()).add(sealed.ref(row))
    owners = {
        owner: await keys.for_user(owner, wanted, create=True) for owner, wanted in refs.items()
    }
    updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    gone: list[dict[str, Any]] = []
    for row in rows:
        try:
            values = sealed.seal_row(owners[row[sealed.owner_column]], row)
        except Unreadable:
            gone.append(_key_params(category, row))
            continue
        if values:
            names = tuple(sorted(values))
            params = _key_params(category, row)
            for name in names:
                params[f"old_{name}"] = row[f"{_RAW}{name}"]
                params[f"new_{name}"] = values[name]
            updates.setdefault(names, []).append(params)
    outcome = Sealed()
    if not updates and not gone:
        return outcome
    async with database.write() as connection:
        began = time.monotonic()  # in the writers' turn
        for names, params in updates.items():
            outcome.rows += await _write_sealed(connection, category, names, params)
        if gone:
            outcome.purged = await _purge_rows(connection, category, gone, clock)
        outcome.took = time.monotonic() - began
    return outcome


def _key_params(category: RowCategory, row: Mapping[str, Any]) -> dict[str, Any]:
    keys = category.table.primary_key.columns
    return {f"key_{i}": row[k.name] for i, k in enumerate(keys)}


def _by_key(category: RowCategory) -> list[ColumnElement[bool]]:
    keys = category.table.primary_key.columns
    return [k == bindparam(f"key_{i}", type_=k.type) for i, k in enumerate(keys)]


async def _write_sealed(
    connection: AsyncConnection,
    category: RowCategory,
    names: tuple[str, ...],
    params: list[dict[str, Any]],
) -> int:
    """One executemany: each row's columns set to their sealed values where they still hold
    the text read (a writer in between wins; the row is read again by a later batch)."""
    table = category.table
    still = [_stored_text(category, n) == bindparam(f"old_{n}", type_=Text) for n in names]
    values = {n: bindparam(f"new_{n}", type_=table.c[n].type) for n in names}
    statement = table.update().where(*_by_key(category), *still).values(values)
    return (await connection.execute(statement, params)).rowcount


async def _purge_rows(
    connection: AsyncConnection, category: RowCategory, params: list[dict[str, Any]], clock: Clock
) -> int:
    """Rows whose day key is destroyed, purged as a purge would: a column category's columns
    cleared and stamped (only where not cleared yet), other rows deleted."""
    table = category.table
    if isinstance(category, ColumnCategory):
        values = {c: category.cleared.get(c) for c in category.columns}
        values[category.purge_time_column] = clock.now()
        waiting = table.c[category.purge_time_column].is_(None)
        statement = table.update().where(*_by_key(category), waiting).values(values)
    else:
        statement = table.delete().where(*_by_key(category))
    return (await connection.execute(statement, params)).rowcount
