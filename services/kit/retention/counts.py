"""What a category holds, counted cheaply enough to ask after every purge call and in every
ListPolicies: counts bounded by `COUNT_CAP`, and the oldest row from the time index.

A count stops at COUNT_CAP: the proto's counts are exact below it and mean "at least COUNT_CAP"
at it (`SELECT count(*) FROM (SELECT 1 … LIMIT COUNT_CAP)`). Why a bound and not an estimate
(PostgreSQL's reltuples, a range of the time index): an exact full count reads the whole index
(2M rows: most of a second per category, after every two-second purge call), an estimate is
per-dialect, stale until ANALYZE (SQLite has none without it) and may say 0 while rows are
there, which would end a purge or a sealing run early. A bounded count is exact where a caller
decides (0 or not), costs at most COUNT_CAP index entries, and compliance never rests on it:
retention judges a category by its oldest row (`oldest`, one probe of the time index).

Never changes a row.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Table, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.clock import as_utc
from services.kit.retention.batches import age_column, expired_rows, pending
from services.kit.retention.categories import RowCategory

# Counts stop here (about 10-30 ms of index entries on SQLite or PostgreSQL).
COUNT_CAP = 100_000


async def bounded_count(
    connection: AsyncConnection,
    table: Table,
    conditions: list[ColumnElement[bool]],
    cap: int | None = None,
) -> int:
    """Rows matching `conditions`, counted up to `cap` (default COUNT_CAP)."""
    limit = COUNT_CAP if cap is None else cap
    picked = select(literal(1)).select_from(table).where(*conditions).limit(limit).subquery()
    return (await connection.execute(select(func.count()).select_from(picked))).scalar_one()


async def exact_count(
    connection: AsyncConnection, table: Table, conditions: list[ColumnElement[bool]]
) -> int:
    query = select(func.count()).select_from(table).where(*conditions)
    return (await connection.execute(query)).scalar_one()


async def oldest(connection: AsyncConnection, category: RowCategory) -> datetime | None:
    """The oldest row the category holds (a column category: whose columns are not cleared)."""
    if category.time_column is None:
        return None
    query = select(func.min(age_column(category))).select_from(category.table)
    waiting = pending(category)
    if waiting is not None:
        query = query.where(waiting)
    found = (await connection.execute(query)).scalar_one()
    return as_utc(found) if found is not None else None


async def expired(
    connection: AsyncConnection, category: RowCategory, cutoff: datetime, *, exact: bool = False
) -> int:
    """Rows a purge at `cutoff` would take, up to COUNT_CAP (`exact`: all of them)."""
    conditions = expired_rows(category, cutoff, sqlite=connection.dialect.name == "sqlite")
    if exact:
        return await exact_count(connection, category.table, conditions)
    return await bounded_count(connection, category.table, conditions)


async def table_counts(
    connection: AsyncConnection, category: RowCategory, cutoff: datetime | None
) -> tuple[datetime | None, int, int]:
    """(oldest row, rows, expired rows) of a ListPolicies answer, counts up to COUNT_CAP."""
    waiting = pending(category)
    held = [] if waiting is None else [waiting]
    rows = await bounded_count(connection, category.table, held)
    if category.time_column is None:
        return None, rows, 0
    found = await oldest(connection, category)
    stale = await expired(connection, category, cutoff) if cutoff is not None else 0
    return found, rows, stale
