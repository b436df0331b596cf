"""The SQL of a purge and an erasure, one batch (one short transaction) at a time, and the sizes
of the next batch.

Each purge batch is picked on the category's time index, so it costs what is expired, not what
the table holds. Never commits: the caller's transaction holds each batch.
"""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import Column, ColumnElement, and_, select, true, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.clock import Clock
from services.kit.retention.categories import ColumnCategory, RowCategory, TableCategory

# Fewer rows a batch cost more each than they spare the writers' wait.
MIN_BATCH = 100


def next_batch(rows: int, took: float, most: int, target: float) -> int:
    """The next batch's rows after `rows` took `took` seconds: at most doubled while well under
    `target`, cut in proportion when over it; MIN_BATCH (or `most`, if fewer) to `most`."""
    if took > target:
        return max(min(most, MIN_BATCH), min(most, int(rows * target / took)))
    if took < target / 2:
        return min(most, rows * 2)
    return min(most, rows)


class Pace:
    """The sizes of a background writer's steps (a purge's batches, a compaction's vacuum
    steps) by their time: about `target` seconds each while the service's writers were seen
    waiting for one in the last `busy_seconds`, `quiet_factor` times that otherwise (longer
    steps cost less per row; a writer that comes then waits one such step, once)."""

    def __init__(self, target: float, busy_seconds: float, quiet_factor: float) -> None:
        self.target, self.busy_seconds, self.quiet_factor = target, busy_seconds, quiet_factor
        self._busy_until = 0.0

    def next(self, size: int, took: float, most: int, *, waiting: bool, share: float = 1.0) -> int:
        """The next step's size after `size` took `took` seconds (`waiting`: a writer is
        queued now), aimed at `share` of the step's time."""
        now = time.monotonic()
        if waiting:
            self._busy_until = now + self.busy_seconds
        wanted = self.target if now <= self._busy_until else self.target * self.quiet_factor
        return next_batch(size, took, most, wanted * share)


def age_column(category: RowCategory) -> Column:
    return category.table.c[category.time_column]  # type: ignore[index]


def pending(category: RowCategory) -> ColumnElement[bool] | None:
    """A column category's rows whose columns are not cleared yet."""
    if isinstance(category, ColumnCategory):
        return category.table.c[category.purge_time_column].is_(None)
    return None


def expired_rows(
    category: RowCategory, cutoff: datetime, *, sqlite: bool
) -> list[ColumnElement[bool]]:
    """What a purge at this cutoff takes: expired, not cleared yet, and allowed (`only`)."""
    conditions = [age_column(category) < cutoff]
    waiting = pending(category)
    if waiting is not None:
        conditions.append(waiting)
    if category.only is not None:
        # `(…) IS 1` on SQLite: a condition no index can serve, so the batch is picked on the
        # time index. Without statistics SQLite prefers an index on `only`'s column (the runs'
        # status index: every ended run), reading and sorting the whole table for each batch.
        conditions.append(category.only.is_(true()) if sqlite else category.only)
    return conditions


async def purge_batch(
    connection: AsyncConnection,
    category: RowCategory,
    cutoff: datetime,
    batch_size: int,
    clock: Clock,
) -> int:
    """One batch: the oldest expired rows, a range on the time index up to the batch's last row
    (found first; ties at its time broken by the key, so a batch never outgrows its size). A
    range with literal bounds, not `key IN (SELECT … LIMIT n)`: PostgreSQL plans that as a join
    (over the whole table for composite keys), ten times slower per batch."""
    age, table = age_column(category), category.table
    keys = list(table.primary_key.columns)
    sqlite = connection.dialect.name == "sqlite"
    expired = expired_rows(category, cutoff, sqlite=sqlite)
    if sqlite:
        # SQLite runs `key IN (SELECT … LIMIT n)` on the time index as it is written (twice the
        # rows per second of the range below, which costs it a second statement per batch).
        oldest = select(*keys).where(*expired).order_by(age).limit(batch_size)
        chosen = tuple_(*keys).in_(oldest) if len(keys) > 1 else keys[0].in_(oldest)
        return await clear_or_delete(connection, category, chosen, clock)
    last = (
        await connection.execute(
            select(age, *keys).where(*expired).order_by(age, *keys).offset(batch_size - 1).limit(1)
        )
    ).first()
    chosen = and_(*expired)
    if last is not None:
        # `age <= last` narrows the index range; the row comparison breaks ties at that time.
        chosen = and_(chosen, age <= last[0], tuple_(age, *keys) <= tuple_(*last))
    return await clear_or_delete(connection, category, chosen, clock)


async def clear_or_delete(
    connection: AsyncConnection,
    category: RowCategory,
    chosen: ColumnElement[bool],
    clock: Clock,
) -> int:
    """The chosen rows purged: a column category's columns cleared and stamped, other rows
    deleted."""
    table = category.table
    if isinstance(category, ColumnCategory):
        values = {c: category.cleared.get(c) for c in category.columns}
        values[category.purge_time_column] = clock.now()
        statement = table.update().where(chosen).values(values)
    else:
        statement = table.delete().where(chosen)
    return (await connection.execute(statement)).rowcount


async def erase_batch(
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
