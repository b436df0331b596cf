"""The runner's daily partitions on PostgreSQL, over real sockets with mTLS: whole expired days
dropped (gone from pg_class), the straddling day and the DEFAULT partition purged in batches, a
run not ended keeping its day, days made ahead, a busy table deferring the drop instead of making
ingest wait, erasure and export across partitions, and migration 0007 moving existing rows."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from leadmesh.retention.v1 import retention_pb2 as pb
from sqlalchemy import insert, select, text

from services.kit.clock import SettableClock
from services.kit.config import MeshSettings
from services.kit.db import create_sync_engine, migrate
from services.runner.server import MIGRATIONS
from services.runner.tables import attempts, runs, webhook_log
from tests.integration.runner_support import RunnerMesh, runner_mesh
from tests.integration.test_runner_retention import exported, participant, purge_all, rows, seed

A, B = "user-a", "user-b"
# Noon: the day of a cutoff (now - 30 days) straddles it.
T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(T0)


@pytest.fixture
async def rm(tmp_path: Path, mesh: MeshSettings, postgres_url: str, clock):
    # No workers: a queued run stays queued.
    async with runner_mesh(tmp_path, mesh.pki_dir, postgres_url, clock=clock, workers=0) as built:
        yield built


async def partitions_of(rm: RunnerMesh, table: str) -> set[str]:
    """The table's partitions, as PostgreSQL's catalogue lists them."""
    async with rm.runner.parts.core.store.read() as tx:
        found = await tx.c.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = CAST(:table AS regclass)"
            ),
            {"table": table},
        )
        return set(found.scalars())


async def made_from(rm: RunnerMesh, clock: SettableClock, when: datetime) -> None:
    """Partitions of the week from `when`, as the runner made them then."""
    clock.set(when)
    await rm.runner.parts.retention.make_partitions()
    clock.set(T0)


async def where(rm: RunnerMesh, run_id: str) -> str:
    async with rm.runner.parts.core.store.read() as tx:
        found = await tx.c.execute(
            select(text("tableoid::regclass::text")).select_from(runs).where(runs.c.id == run_id)
        )
        return found.scalar_one()


def purge_request(category: str, cutoff: datetime) -> pb.PurgeRequest:
    request = pb.PurgeRequest(category=category)
    request.cutoff.FromDatetime(cutoff)
    return request


async def test_the_runner_makes_today_and_the_days_ahead_when_it_starts(rm, clock):
    # Before any purge has run: the first day's rows must find their partition, not DEFAULT.
    ahead = rm.runner.parts.core.settings.partition_days_ahead
    wanted = {(T0.date() + timedelta(days=n)).strftime("%Y%m%d") for n in range(ahead + 1)}
    for table in ("runs", "attempts", "webhook_log"):
        days = {name.rsplit("_p", 1)[1] for name in await partitions_of(rm, table) if "_p" in name}
        assert wanted <= days, table
        assert f"{table}_default" in await partitions_of(rm, table)


async def test_whole_expired_days_are_dropped_and_the_straddling_day_purged_in_batches(rm, clock):
    await made_from(rm, clock, T0 - timedelta(days=33))  # 2025-11-29 … 2025-12-06
    cutoff = T0 - timedelta(days=30)  # 2025-12-02 12:00
    minute = timedelta(minutes=1)
    ages = {"dropped": timedelta(days=32), "before": timedelta(days=30) + minute,
            "after": timedelta(days=30) - minute, "kept": timedelta(days=29)}  # fmt: skip
    for label, age in ages.items():
        await seed(rm, A, T0 - age, label)
    assert await where(rm, "run-dropped") == "partitions.runs_p20251130"
    stub = participant(rm, "retention")

    first = await stub.Purge(purge_request("activity", cutoff))
    # 29 and 30 November and 1 December, whole days before the cutoff, dropped: one row.
    assert (first.rows_deleted, first.rows_still_expired, first.batches) == (1, 1, 3)
    names = await partitions_of(rm, "runs")
    assert not {"runs_p20251129", "runs_p20251130", "runs_p20251201"} & names
    assert {"runs_p20251202", "runs_p20251203", "runs_default"} <= names
    second = await stub.Purge(purge_request("activity", cutoff))
    assert (second.rows_deleted, second.rows_still_expired) == (1, 0)
    assert {r["id"] for r in await rows(rm, runs)} == {"run-after", "run-kept"}

    deleted = await purge_all(stub, T0)
    # Attempts and webhook log (7 days): every seeded day dropped whole, rows counted.
    assert deleted["attempt_details"] == 4 and deleted["webhooks_log"] == 4
    assert await rows(rm, attempts) == [] and await rows(rm, webhook_log) == []
    assert not any(n.startswith("attempts_p202511") for n in await partitions_of(rm, "attempts"))
    assert "webhook_log_default" in await partitions_of(rm, "webhook_log")
    listed = (await stub.ListPolicies(pb.ListPoliciesRequest())).policies
    assert all(p.expired_rows == 0 for p in listed)


async def test_a_run_not_ended_keeps_its_day_and_the_rest_of_it_goes_in_batches(rm, clock):
    await made_from(rm, clock, T0 - timedelta(days=33))
    stuck = await seed(rm, A, T0 - timedelta(days=32), "stuck")
    await seed(rm, A, T0 - timedelta(days=32, hours=1), "done")
    async with rm.runner.parts.core.store.begin() as tx:
        await tx.c.execute(runs.update().where(runs.c.id == stuck).values(status="queued"))
    await purge_all(participant(rm, "retention"), T0)
    assert {r["id"] for r in await rows(rm, runs)} == {stuck}
    assert "runs_p20251130" in await partitions_of(rm, "runs")
    assert "runs_p20251129" not in await partitions_of(rm, "runs")


async def test_rows_outside_every_day_land_in_default_and_are_purged_in_batches(rm, clock):
    old = await seed(rm, B, T0 - timedelta(days=50), "old")
    young = await seed(rm, B, T0 - timedelta(days=10), "young")
    assert await where(rm, old) == await where(rm, young) == "partitions.runs_default"
    reply = await participant(rm, "retention").Purge(
        purge_request("activity", T0 - timedelta(days=30))
    )
    assert (reply.rows_deleted, reply.rows_still_expired, reply.batches) == (1, 0, 1)
    assert {r["id"] for r in await rows(rm, runs)} == {young}


async def test_the_days_ahead_are_made_by_every_purge_and_one_in_default_is_left(rm, clock):
    later = T0 + timedelta(days=100)
    stray = await seed(rm, A, later + timedelta(days=3), "stray")  # a day with no partition yet
    clock.set(later)
    await participant(rm, "retention").Purge(purge_request("activity", later - timedelta(days=30)))
    ahead = {f"runs_p{later + timedelta(days=n):%Y%m%d}" for n in range(8)}
    names = await partitions_of(rm, "runs")
    stray_day = f"runs_p{later + timedelta(days=3):%Y%m%d}"
    # Its day is in DEFAULT: not made (logged), the row left where it is; the others made.
    assert ahead - {stray_day} <= names and stray_day not in names
    assert await where(rm, stray) == "partitions.runs_default"
    # What the runner runs at start makes the other tables' days too.
    assert await rm.runner.parts.retention.make_partitions() == 2 * 7
    for table in ("attempts", "webhook_log"):
        days = {f"{table}_p{later + timedelta(days=n):%Y%m%d}" for n in range(8)}
        assert days - await partitions_of(rm, table) == {
            f"{table}_p{later + timedelta(days=3):%Y%m%d}"
        }
    # And a new row of a day made goes to its partition.
    fresh = await seed(rm, A, later + timedelta(hours=1), "fresh")
    assert await where(rm, fresh) == f"partitions.runs_p{later:%Y%m%d}"


async def test_a_busy_table_defers_the_drop_and_the_batches_go_on(rm, clock):
    await made_from(rm, clock, T0 - timedelta(days=33))
    await seed(rm, A, T0 - timedelta(days=32), "expired")
    stub = participant(rm, "retention")
    with psycopg.connect(rm.database_url) as blocker:
        # A writer's transaction still open on the table (as ingest's are, briefly).
        blocker.execute("LOCK TABLE runs IN ROW EXCLUSIVE MODE")
        reply = await asyncio.wait_for(
            stub.Purge(purge_request("activity", T0 - timedelta(days=30))), timeout=5
        )
        # The detach gave up (never queueing the writer behind it); the batches took the row.
        assert (reply.rows_deleted, reply.rows_still_expired) == (1, 0)
        assert "runs_p20251130" in await partitions_of(rm, "runs")
        blocker.rollback()
    reply = await stub.Purge(purge_request("activity", T0 - timedelta(days=30)))
    assert (reply.rows_deleted, reply.rows_still_expired, reply.batches) == (0, 0, 3)
    assert "runs_p20251130" not in await partitions_of(rm, "runs")


async def test_erasure_and_export_reach_every_partition(rm, clock):
    await made_from(rm, clock, T0 - timedelta(days=6))
    when = [T0 - timedelta(days=5), T0 - timedelta(days=2), T0 + timedelta(days=60)]
    mine = {await seed(rm, A, moment, f"a{i}") for i, moment in enumerate(when)}
    theirs = await seed(rm, B, T0 - timedelta(days=5), "b0")
    assert len({await where(rm, run_id) for run_id in mine}) == 3  # two days and DEFAULT
    stub = participant(rm, "retention")
    records = await exported(stub, A)
    assert {r["id"] for s, r in records if s == "runs"} == mine
    assert len([1 for s, _ in records if s == "attempts"]) == 3
    assert len([1 for s, _ in records if s == "webhook_log"]) == 3
    reply = await stub.EraseSubject(pb.EraseSubjectRequest(user_id=A, case_id="case-p"))
    erased = {c.category: c.rows_erased for c in reply.categories}
    assert erased["activity"] == erased["attempt_details"] == erased["webhooks_log"] == 3
    assert {r["id"] for r in await rows(rm, runs)} == {theirs}
    assert {r["user_id"] for r in await rows(rm, webhook_log)} == {B}


# --- migration 0007 ----------------------------------------------------------------------------


def upgrade(url: str, revision: str) -> None:
    engine = create_sync_engine(url)
    try:
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def test_the_migration_moves_every_existing_row_into_its_day(postgres_url: str):
    upgrade(postgres_url, "0006")
    now = datetime.now(UTC)
    moments = [now - timedelta(days=d, hours=h) for d in (0, 3, 40, 400) for h in (0, 5)]
    engine = create_sync_engine(postgres_url)
    try:
        with engine.begin() as connection:
            for i, moment in enumerate(moments):
                connection.execute(
                    insert(runs).values(
                        id=f"run-{i}", user_id=A, connection_id="c", trigger="webhook",
                        status="succeeded", attempts=1, max_attempts=1, event={"n": i},
                        create_time=moment, next_attempt_time=moment,
                    )
                )  # fmt: skip
                connection.execute(
                    insert(attempts).values(
                        run_id=f"run-{i}", user_id=A, number=1, start_time=moment,
                        finish_time=moment, request={"n": i}, response_truncated=False,
                    )
                )  # fmt: skip
                connection.execute(
                    insert(webhook_log).values(
                        id=f"hook-{i}", user_id=A, connection_id="c", run_id=f"run-{i}",
                        receive_time=moment, source_ip="203.0.113.9", method="POST",
                        headers=[], query="", body_encoding="text", body=f"body-{i}",
                    )
                )  # fmt: skip
            before = {t.name: connection.execute(select(t).order_by(t.c.seq)).all()
                      for t in (runs, attempts, webhook_log)}  # fmt: skip
    finally:
        engine.dispose()

    migrate(postgres_url, MIGRATIONS)
    engine = create_sync_engine(postgres_url)
    try:
        with engine.begin() as connection:
            for table in (runs, attempts, webhook_log):
                after = connection.execute(select(table).order_by(table.c.seq)).all()
                assert after == before[table.name], table.name
                kind = connection.execute(
                    text("SELECT relkind FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                    {"t": table.name},
                ).scalar_one()
                assert kind == "p", table.name  # partitioned
                placed = connection.execute(
                    text(f"SELECT DISTINCT tableoid::regclass::text FROM {table.name}")  # noqa: S608
                ).scalars()
                key = table.c[{"runs": "create_time", "attempts": "start_time",
                               "webhook_log": "receive_time"}[table.name]]  # fmt: skip
                days = {f"partitions.{table.name}_p{m:%Y%m%d}" for m in
                        connection.execute(select(key)).scalars()}  # fmt: skip
                assert set(placed) == days, table.name  # each row in its day, none in DEFAULT
            # The sequences go on where they were.
            connection.execute(
                insert(runs).values(
                    id=str(uuid.uuid4()), user_id=B, connection_id="c", trigger="webhook",
                    status="queued", attempts=0, max_attempts=1, create_time=now,
                    next_attempt_time=now,
                )
            )  # fmt: skip
            top = connection.execute(select(runs.c.seq).where(runs.c.user_id == B)).scalar_one()
            assert top == max(r.seq for r in before["runs"]) + 1
    finally:
        engine.dispose()


async def test_days_a_crash_left_detached_are_settled_at_the_next_purge(rm, clock):
    await made_from(rm, clock, T0 - timedelta(days=33))
    await seed(rm, A, T0 - timedelta(days=32), "ended")
    stuck = await seed(rm, A, T0 - timedelta(days=31), "stuck")
    async with rm.runner.parts.core.store.begin() as tx:
        await tx.c.execute(runs.update().where(runs.c.id == stuck).values(status="queued"))
        # As a purge would have left them, stopped between its detach and its drop.
        for day in ("20251130", "20251201"):
            await tx.c.execute(text(f"ALTER TABLE runs DETACH PARTITION partitions.runs_p{day}"))
    reply = await participant(rm, "retention").Purge(
        purge_request("activity", T0 - timedelta(days=30))
    )
    # The ended run's day dropped and counted; the queued run's day attached again, kept.
    assert reply.rows_deleted == 1
    names = await partitions_of(rm, "runs")
    assert "runs_p20251201" in names and "runs_p20251130" not in names
    assert {r["id"] for r in await rows(rm, runs)} == {stuck}
    async with rm.runner.parts.core.store.read() as tx:
        left = await tx.c.execute(
            text("SELECT count(*) FROM pg_tables WHERE schemaname = 'partitions'"
                 " AND tablename = 'runs_p20251130'")
        )  # fmt: skip
        assert left.scalar_one() == 0
