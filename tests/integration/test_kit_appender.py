"""The kit's Appender on a real SQLite file and a real PostgreSQL: rows stored exactly as the
engine stores them, one transaction per batch, and a failed batch that leaves nothing behind —
not even SQLite's write lock."""

from __future__ import annotations

import gc
from datetime import UTC, datetime

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text

from services.kit.appender import Appender
from services.kit.db import Database, Serial, Time, create_service_engine

metadata = MetaData()
entries = Table(
    "appended_entries",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("at", Time, nullable=False),
    Column("name", String(40), nullable=False),
    Column("count", Integer, nullable=True),
)


@pytest.fixture
async def database(database_url: str):
    engine = create_service_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
        await connection.run_sync(metadata.create_all)
    database = Database(engine)
    yield database
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
    await engine.dispose()


async def _rows(database: Database) -> list[dict]:
    async with database.read() as connection:
        result = await connection.execute(select(entries).order_by(entries.c.id))
        return [dict(row._mapping) for row in result]


async def test_appended_rows_read_back_as_rows_the_engine_wrote(database: Database):
    when = datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=UTC)
    async with database.write() as connection:
        await connection.execute(insert(entries), [{"at": when, "name": "engine", "count": 1}])
    appender = Appender(database, [entries], "test-appender")
    try:
        await appender.append(
            {
                "appended_entries": [
                    {"at": when, "name": "appender", "count": 2},
                    {"at": when, "name": "no count"},
                ]
            }  # fmt: skip
        )
    finally:
        appender.close()
    rows = await _rows(database)
    assert [(r["name"], r["count"]) for r in rows] == [
        ("engine", 1), ("appender", 2), ("no count", None)
    ]  # fmt: skip
    assert len({r["at"].replace(tzinfo=UTC) for r in rows}) == 1  # stored in the same form


async def test_tuple_rows_are_stored_as_mapping_rows_are(database: Database):
    when = datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=UTC)
    appender = Appender(database, [entries], "test-appender")
    try:
        assert appender.columns(entries) == ["at", "name", "count"]
        await appender.append({"appended_entries": [{"at": when, "name": "mapping", "count": 1}]})
        await appender.append({"appended_entries": [(when, "tuple", 2), (when, "none", None)]})
        with pytest.raises(ValueError, match="3 values"):
            await appender.append({"appended_entries": [(when, "short")]})
    finally:
        appender.close()
    rows = await _rows(database)
    assert [(r["name"], r["count"]) for r in rows] == [
        ("mapping", 1), ("tuple", 2), ("none", None)
    ]  # fmt: skip
    assert {r["at"].replace(tzinfo=UTC) for r in rows} == {when}  # converted as the engine does


async def test_a_large_batch_keeps_every_row_and_its_order(database: Database):
    """More rows than one multi-row statement takes on SQLite, in a count no power of two is."""
    when = datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC)
    appender = Appender(database, [entries], "test-appender")
    try:
        batch = [{"at": when, "name": f"row-{n}", "count": n} for n in range(1037)]
        await appender.append({"appended_entries": batch})
        await appender.append({"appended_entries": batch[:3]})
    finally:
        appender.close()
    rows = await _rows(database)
    assert [(r["name"], r["count"]) for r in rows] == [
        (f"row-{n}", n) for n in [*range(1037), 0, 1, 2]
    ]
    assert {r["at"].replace(tzinfo=None) for r in rows} == {when.replace(tzinfo=None)}


async def test_a_failed_batch_writes_nothing_and_holds_no_lock(database: Database):
    appender = Appender(database, [entries], "test-appender")
    when = datetime.now(UTC)
    try:
        errors = []
        try:  # the second row breaks NOT NULL: the first must not stay behind
            await appender.append({"appended_entries": [{"at": when, "name": "a"}, {"at": when}]})
        except Exception as error:
            errors.append(error)  # kept, traceback and all, as a caller reporting it would
        assert errors
        gc.collect()
        assert await _rows(database) == []
        # Another writer gets in at once (a live statement of the failed batch would keep
        # SQLite's write lock until the traceback above was gone).
        async with database.write() as connection:
            await connection.execute(text("SELECT 1"))
            await connection.execute(insert(entries), [{"at": when, "name": "after"}])
        await appender.append({"appended_entries": [{"at": when, "name": "again"}]})
        assert [r["name"] for r in await _rows(database)] == ["after", "again"]
    finally:
        appender.close()
