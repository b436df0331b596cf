"""Tables range-partitioned by UTC day on PostgreSQL: the days ahead made, and the purge of whole
expired days as a DETACH and DROP of their partitions instead of a bulk DELETE (PostgreSQL's
documentation, "Table Partitioning": removing a partition is far cheaper than deleting its rows,
and leaves no dead tuples for VACUUM).

A partitioned table (made by its service's migration) has one partition per day in the schema
`partitions`, named `<table>_pYYYYMMDD` and holding [day, day + 1) UTC, and a DEFAULT partition
(`<table>_default`) for rows dated outside every day: no insert ever fails for want of a
partition. What lands in DEFAULT, and the day that straddles a cutoff, `Participant` purges in its
usual batches.

Never makes ingest queue behind it: every DDL here runs with a short `lock_timeout`, and gives up
(to be tried again at the next call) rather than wait. Expired days are detached in short
transactions (the parent's lock held a few milliseconds), counted once detached (no one can
write into them then, so the count is exact and locks no one), then dropped together: a DROP
commits with an fsync of its own. Never drops a partition holding a row a purge may not take (a
category's `only`: a run still queued keeps its row): such a day is left to the batches, which
skip that row.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Column, Table, TableClause, column, func, literal, select, text, union_all
from sqlalchemy import table as table_clause
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.visitors import replacement_traverse

from services.kit.clock import as_utc
from services.kit.db import Database

if TYPE_CHECKING:
    from services.kit.retention.categories import TableCategory

log = logging.getLogger("leadmesh.retention")

SCHEMA = "partitions"
DAY = timedelta(days=1)
# How long a DDL here may wait for a lock: ingest queues behind a waiting ACCESS EXCLUSIVE
# request, so this bounds the stall it can see from a purge (ingest p99 during purge <= 3x idle).
LOCK_TIMEOUT_MS = 50
LOCK_NOT_AVAILABLE, CHECK_VIOLATION = "55P03", "23514"
# Days detached in one transaction (a month): fewer commits and invalidations, against a longer
# hold of the parent's lock (a DETACH takes a millisecond or two).
DAYS_PER_DETACH = 31
# A busy table (its lock not had within LOCK_TIMEOUT_MS) is tried this many times per call,
# pausing a little longer each time, before the rest is left to the next call.
DETACH_TRIES, DETACH_PAUSE_SECONDS = 5, 0.02


@dataclass(frozen=True)
class DailyPartitions:
    """A `TableCategory`'s table is partitioned by UTC day on its time column (PostgreSQL; on
    SQLite the declaration changes nothing). `days_ahead`: partitions made past today."""

    days_ahead: int = 7


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _bound(day: date) -> str:
    # An explicit offset: the bound means the same whatever the session's TimeZone.
    return f"'{day.isoformat()} 00:00:00+00'"


@dataclass(frozen=True)
class Catalogue:
    """A table's day partitions: {day: name} attached, and names left detached (a crash)."""

    days: dict[date, str]
    detached: list[str]


async def catalogue(database: Database, table: str) -> Catalogue:
    pattern = re.compile(rf"^{re.escape(table)}_p(\d{{8}})$")
    query = text(
        "SELECT c.relname, c.relispartition FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = :schema AND c.relkind = 'r' AND c.relname LIKE :prefix"
    )
    async with database.read() as connection:
        found = (await connection.execute(query, {"schema": SCHEMA, "prefix": f"{table}_p%"})).all()
    days, detached = {}, []
    for name, attached in found:
        if not (match := pattern.match(name)):
            continue
        if attached:
            days[datetime.strptime(match.group(1), "%Y%m%d").date()] = name  # noqa: DTZ007
        else:
            detached.append(name)
    return Catalogue(days, sorted(detached))


async def days_of(database: Database, table: str) -> dict[date, str]:
    """{day: partition name} of the table's daily partitions (DEFAULT not among them)."""
    return (await catalogue(database, table)).days


async def make_ahead(
    database: Database,
    table: Table,
    key: str,
    today: date,
    days: int,
    existing: dict[date, str] | None = None,
) -> int:
    """Today's partition and the next `days`, those missing made; how many were made. A day the
    DEFAULT partition already holds rows of is left (logged): those rows stay in DEFAULT, purged
    by batches; a lock not had at once is left to the next call."""
    if existing is None:
        existing = await days_of(database, table.name)
    made = 0
    for offset in range(days + 1):
        day = today + offset * DAY
        if day not in existing and await _make(database, table, key, day):
            made += 1
    return made


async def _make(database: Database, table: Table, key: str, day: date) -> bool:
    name = partition_name(table.name, day)
    default = f"{SCHEMA}.{table.name}_default"
    start = _midnight(day)
    end = start + DAY
    try:
        async with database.write() as connection:
            await connection.execute(text(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"))
            # Checked first on the time index: PostgreSQL would scan all of DEFAULT to refuse.
            probe = f"SELECT 1 FROM {default} WHERE {key} >= :start AND {key} < :end LIMIT 1"  # noqa: S608
            held = await connection.execute(text(probe), {"start": start, "end": end})
            if held.first() is not None:
                log.warning(
                    "partition not made: its day is in the default partition",
                    extra={"table": table.name, "day": day.isoformat()},
                )
                return False
            await connection.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{name} PARTITION OF {table.name}"
                    f" FOR VALUES FROM ({_bound(day)}) TO ({_bound(day + DAY)})"
                )
            )
        return True
    except DBAPIError as error:
        if _sqlstate(error) not in (LOCK_NOT_AVAILABLE, CHECK_VIOLATION):
            raise
        log.warning(
            "partition not made, tried again later",
            extra={"table": table.name, "day": day.isoformat(), "sqlstate": _sqlstate(error)},
        )
        return False


async def purge_days(
    database: Database, category: TableCategory, cutoff: datetime, now: datetime
) -> Dropped:
    """At each purge of a partitioned category: the days ahead made (so a runner whose purges
    run keeps its partitions ahead of its rows), then the expired days dropped."""
    assert category.partitions is not None and category.time_column is not None
    today = as_utc(now).date()
    days = category.partitions.days_ahead
    found = await catalogue(database, category.table.name)
    await make_ahead(database, category.table, category.time_column, today, days, found.days)
    return await drop_expired(database, category, cutoff, found)


@dataclass(frozen=True)
class Dropped:
    rows: int
    partitions: int
    # A lock was not had soon enough: the drop is tried again at the next call (the batches
    # take the rows meanwhile).
    deferred: bool


async def drop_expired(
    database: Database, category: TableCategory, cutoff: datetime, found: Catalogue | None = None
) -> Dropped:
    """Every daily partition whose whole day is before `cutoff`, oldest first: detached, its rows
    counted once no one can write into it, then all dropped together. A day holding a row a purge
    may not take (`only`) is left attached (or attached again, if that row came meanwhile)."""
    table = category.table
    found = found or await catalogue(database, table.name)
    expired = [(d, name) for d, name in sorted(found.days.items()) if _midnight(d + DAY) <= cutoff]
    # Days a crash left detached, never dropped, are settled with the others.
    detached, deferred = list(found.detached), False
    purgeable = await _purgeable(database, category, expired) if expired else []
    for start in range(0, len(purgeable), DAYS_PER_DETACH):
        group = purgeable[start : start + DAYS_PER_DETACH]
        if not await _detach_soon(database, table.name, group):
            log.info("partition detach deferred: its table is busy", extra={"table": table.name})
            deferred = True
            break
        detached += group
    counted, blocked = await _count_and_drop(database, category, detached)
    for name in blocked:  # practically never: a row not to be purged came before the detach
        deferred = not await _attach_again(database, table.name, name) or deferred
    if counted:
        log.info("partitions dropped", extra={"table": table.name, "partitions": len(counted)})
    return Dropped(sum(rows for _, rows in counted), len(counted), deferred)


async def _purgeable(
    database: Database, category: TableCategory, days: list[tuple[date, str]]
) -> list[str]:
    """The days whose every row a purge may take (a read: nothing waits for it); all of them
    when the category takes every expired row."""
    if category.only is None:
        return [name for _, name in days]
    async with database.read() as connection:
        counts = {
            day: (rows, taken) for day, rows, taken in await _counts(connection, category, days)
        }
    names = []
    for day, name in days:
        rows, allowed = counts.get(day, (0, 0))
        if rows == allowed:
            names.append(name)
        else:
            log.info(
                "partition kept: it holds rows a purge may not take",
                extra={"table": category.table.name, "day": day.isoformat()},
            )
    return names


async def _detach_soon(database: Database, table: str, names: list[str]) -> bool:
    """The days detached in one transaction, tried again a few times while the table is busy."""
    # The parent's ACCESS EXCLUSIVE is held from the first DETACH to the commit: a few ms. The
    # commit does not wait for the disk: a detach lost to a crash leaves its day attached, to be
    # detached again.
    script = (
        f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}; SET LOCAL synchronous_commit = off; "
        + "; ".join(f"ALTER TABLE {table} DETACH PARTITION {SCHEMA}.{name}" for name in names)
    )
    for attempt in range(DETACH_TRIES):
        try:
            async with database.write() as connection:
                await connection.exec_driver_sql(script)
            return True
        except DBAPIError as error:
            if _sqlstate(error) != LOCK_NOT_AVAILABLE:
                raise
        await asyncio.sleep(DETACH_PAUSE_SECONDS * (attempt + 1))  # ingest goes meanwhile
    return False


async def _counts(
    connection: AsyncConnection, category: TableCategory, days: list[tuple[date, str]]
) -> list[tuple[date, int, int]]:
    """(day, rows, rows a purge may take) of each day that has rows, in one query."""
    age = category.table.c[category.time_column]  # type: ignore[index]
    day = func.date_trunc("day", func.timezone("UTC", age))
    query = (
        select(day, func.count(), _allowed(category))
        .where(age >= _midnight(days[0][0]), age < _midnight(days[-1][0] + DAY))
        .group_by(day)
    )
    return [(when.date(), rows, taken) for when, rows, taken in await connection.execute(query)]


def _allowed(category: TableCategory, table: TableClause | None = None):
    """count(*) of the rows a purge may take; on `table` (a detached day) if given."""
    if category.only is None:
        return func.count()
    only = category.only
    if table is not None:
        only = replacement_traverse(only, {}, lambda e: _on(e, category.table, table))
    return func.count().filter(only)


def _on(element, parent: Table, table: TableClause):
    if isinstance(element, Column) and element.table is parent:
        return table.c[element.name]
    return None


async def _count_and_drop(
    database: Database, category: TableCategory, names: list[str]
) -> tuple[list[tuple[str, int]], list[str]]:
    """The detached days counted in one query and dropped in one transaction (one commit):
    ([(name, rows) dropped], [names kept: they hold a row a purge may not take]). No one writes
    into a detached day any more, so each count is what its DROP removes; a detached table locks
    no one."""
    if not names:
        return [], []
    counts = []
    for name in names:
        day = table_clause(name, *(column(c.name) for c in category.table.c), schema=SCHEMA)
        counts.append(select(literal(name), func.count(), _allowed(category, day)).select_from(day))
    async with database.write() as connection:
        found = (await connection.execute(union_all(*counts))).all()
        dropped = [(name, rows) for name, rows, allowed in found if rows == allowed]
        if dropped:
            listed = ", ".join(f"{SCHEMA}.{name}" for name, _ in dropped)
            await connection.exec_driver_sql(f"DROP TABLE IF EXISTS {listed}")
    return dropped, [name for name, rows, allowed in found if rows != allowed]


async def _attach_again(database: Database, table: str, name: str) -> bool:
    """A detached day put back (SHARE UPDATE EXCLUSIVE on the parent: ingest goes on)."""
    day = datetime.strptime(name.rsplit("_p", 1)[1], "%Y%m%d").date()  # noqa: DTZ007
    try:
        async with database.write() as connection:
            await connection.exec_driver_sql(
                f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}; ALTER TABLE {table} ATTACH PARTITION"
                f" {SCHEMA}.{name} FOR VALUES FROM ({_bound(day)}) TO ({_bound(day + DAY)})"
            )
    except DBAPIError as error:
        if _sqlstate(error) != LOCK_NOT_AVAILABLE:
            raise
        return False  # still detached: settled again at the next call
    log.info("partition attached again: it holds rows a purge may not take", extra={"table": table})
    return True


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def _sqlstate(error: DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None)
