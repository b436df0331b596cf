"""The kit's retention participant over a real database: exact cutoffs, batches, nested columns,
erasure that keeps what a legal basis keeps, exports, files, and the bytes of an erased row gone
from a SQLite database's files. Served over gRPC with mTLS, its caller table holds."""

from __future__ import annotations

import json
import os
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from leadmesh.retention.v1 import retention_pb2 as pb
from leadmesh.retention.v1 import retention_pb2_grpc
from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, Text, event, select

from services.kit import callers, retention
from services.kit.clock import SettableClock
from services.kit.config import MeshSettings
from services.kit.db import READ_ONLY, Database, Time, create_service_engine
from services.kit.grpcclient import open_channel
from services.kit.grpcserver import start_server
from services.kit.retention import (
    ALLOWED_CALLERS,
    SERVICE,
    ColumnCategory,
    FileCategory,
    Participant,
    TableCategory,
    counts,
)
from services.kit.timestamps import put_timestamp
from tests.integration.grpc_support import call, refused

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
metadata = MetaData()
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(64), nullable=True),
    Column("create_time", Time, nullable=False, index=True),
    Column("body", Text, nullable=True),
    Column("token", String(64), nullable=True),
    Column("details_purge_time", Time, nullable=True),
)
ledger = Table(
    "bills",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(64), nullable=True),
    Column("record_time", Time, nullable=False, index=True),
    Column("amount", Integer, nullable=False),
    Column("data", JSON, nullable=True),
)


def categories(outbox: Path) -> list:
    return [
        ColumnCategory(
            "event_bodies", "bodies", "contract", events, timedelta(days=7),
            time_column="create_time", columns=("body",), purge_time_column="details_purge_time",
        ),
        TableCategory(
            "events", "activity", "contract", events, timedelta(days=30),
            time_column="create_time", user_column="user_id", export_section="events",
            secret_columns=("token",),
        ),
        TableCategory(
            "bills", "accounting", "law", ledger, timedelta(days=3650),
            time_column="record_time", user_column="user_id", keep_on_erase="commercial law",
            export_section="bills",
        ),
        FileCategory("outbox", "mail", "contract", outbox, timedelta(days=7), "*.eml"),
    ]  # fmt: skip


@pytest.fixture
async def participant(database_url: str, tmp_path: Path):
    engine = create_service_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    clock = SettableClock(NOW)
    yield Participant("runner", Database(engine), categories(tmp_path / "outbox"), clock)
    await engine.dispose()


async def _add(participant: Participant, table: Table, rows: list[dict]) -> None:
    async with participant.database.write() as connection:
        await connection.execute(table.insert(), rows)


def _aged(days: float, user: str = "u1", **values) -> dict:
    return {"user_id": user, "create_time": NOW - timedelta(days=days), **values}


async def test_rows_on_both_sides_of_the_limit_are_kept_or_purged_exactly(participant):
    second = timedelta(seconds=1)
    await _add(participant, events, [
        {"user_id": "u1", "create_time": NOW - timedelta(days=30) - second, "body": "old"},
        {"user_id": "u1", "create_time": NOW - timedelta(days=30), "body": "edge"},
        {"user_id": "u1", "create_time": NOW - timedelta(days=30) + second, "body": "young"},
    ])  # fmt: skip
    category = participant.categories["events"]
    cutoff = NOW - timedelta(days=30)
    policy = await participant.policy(category, NOW)
    assert (policy.rows, policy.expired_rows) == (3, 1)
    assert policy.oldest_time.ToDatetime(UTC) == NOW - timedelta(days=30) - second
    assert await participant.purge(category, cutoff, 100, dry_run=True) == (0, 1, 0)
    deleted, remaining, _ = await participant.purge(category, cutoff, 100)
    assert (deleted, remaining) == (1, 0)
    async with participant.database.read() as connection:
        kept = (await connection.execute(select(events.c.body))).scalars().all()
    assert sorted(kept) == ["edge", "young"]


async def test_a_purge_goes_in_batches_and_a_nested_column_is_cleared_not_deleted(participant):
    await _add(participant, events, [_aged(8 + i / 100, body=f"b{i}") for i in range(25)])
    await _add(participant, events, [_aged(1, body="fresh")])
    bodies = participant.categories["event_bodies"]
    deleted, remaining, batches = await participant.purge(bodies, NOW - timedelta(days=7), 10)
    assert (deleted, remaining, batches) == (25, 0, 3)
    async with participant.database.read() as connection:
        rows = (await connection.execute(select(events))).all()
    assert len(rows) == 26  # the runs stay (30 days); only their 7-day details went
    purged = [r for r in rows if r.details_purge_time is not None]
    assert len(purged) == 25 and all(r.body is None for r in purged)
    assert [r.body for r in rows if r.details_purge_time is None] == ["fresh"]
    # Already purged rows no longer count as expired.
    assert (await participant.policy(bodies, NOW)).expired_rows == 0


async def test_erasure_removes_the_user_keeps_accounting_detached_and_is_idempotent(participant):
    await _add(participant, events, [_aged(1, "u1", body="mine"), _aged(1, "u2", body="theirs")])
    await _add(participant, ledger, [
        {"user_id": "u1", "record_time": NOW, "amount": 10},
        {"user_id": "u2", "record_time": NOW, "amount": 20},
    ])  # fmt: skip
    result = await participant.erase("u1")
    assert result["events"] == (1, 0, "")
    assert result["bills"] == (0, 1, "commercial law")
    async with participant.database.read() as connection:
        assert (await connection.execute(select(events.c.user_id))).scalars().all() == ["u2"]
        bills = (await connection.execute(select(ledger.c.user_id, ledger.c.amount))).all()
    assert sorted(bills, key=lambda b: b.amount) == [(None, 10), ("u2", 20)]
    again = await participant.erase("u1")
    assert again["events"] == (0, 0, "") and again["bills"] == (0, 0, "commercial law")


async def test_an_export_is_the_users_rows_without_secret_columns(participant):
    await _add(
        participant, events, [_aged(i, "u1", body=f"m{i}", token="s3cret") for i in range(3)]
    )
    await _add(participant, events, [_aged(1, "u2", body="theirs")])
    records = [item async for item in participant.export("u1")]
    assert [section for section, _ in records] == ["events"] * 3
    assert {r["body"] for _, r in records} == {"m0", "m1", "m2"}
    assert all("token" not in r for _, r in records)
    assert "theirs" not in json.dumps([r for _, r in records])


async def test_counts_stop_at_their_cap_and_the_oldest_row_stays_exact(participant, monkeypatch):
    """ListPolicies and every Purge call count what they answer: bounded, so at 2M rows neither
    reads the whole index (a dry run, which an operator asks for, counts them all)."""
    monkeypatch.setattr(counts, "COUNT_CAP", 5)
    await _add(participant, events, [_aged(40 + i) for i in range(8)] + [_aged(1), _aged(2)])
    category, cutoff = participant.categories["events"], NOW - timedelta(days=30)
    policy = await participant.policy(category, NOW)
    assert (policy.rows, policy.expired_rows) == (5, 5)  # "at least COUNT_CAP"
    assert policy.oldest_time.ToDatetime(UTC) == NOW - timedelta(days=47)
    assert await participant.purge(category, cutoff, 100, dry_run=True) == (0, 8, 0)
    monkeypatch.setattr(retention, "PURGE_CALL_SECONDS", 0.0)  # one batch per call
    assert await participant.purge(category, cutoff, 2) == (2, 5, 1)


async def test_files_are_purged_by_their_age(participant, tmp_path: Path):
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    for name, age in (("old.eml", 8), ("new.eml", 6), ("other.txt", 30)):
        path = outbox / name
        path.write_text("To: someone@example.com")
        stamp = (NOW - timedelta(days=age)).timestamp()
        os.utime(path, (stamp, stamp))
    category = participant.categories["outbox"]
    policy = await participant.policy(category, NOW)
    assert (policy.rows, policy.expired_rows) == (2, 1)
    assert await participant.purge(category, NOW - timedelta(days=7), 100) == (1, 0, 1)
    assert sorted(p.name for p in outbox.iterdir()) == ["new.eml", "other.txt"]


async def _sqlite_participant(tmp_path: Path):
    path = tmp_path / "svc" / "svc.db"
    engine = create_service_engine(f"sqlite:///{path}")
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    return path, Participant("runner", Database(engine), categories(tmp_path), SettableClock(NOW))


async def _pragma(participant: Participant, name: str) -> int:
    async with participant.database.engine.connect() as connection:
        return (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()


def _file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


async def test_erased_bytes_leave_the_sqlite_files(tmp_path: Path):
    """Read while the service still has the database open (as a copy or backup would be). The
    user's rows shared pages with others', and another user's erasure moved them (rebalancing
    leaves stale copies in the unused space of live pages): only the erasure's rebuild removes
    those."""
    path, participant = await _sqlite_participant(tmp_path)
    erased = f"erased-{uuid.uuid4().hex}"
    try:
        for i in range(60):
            await _add(participant, events, [
                _aged(1, "u3", body=f"big-{i}" * 40),
                _aged(1, "u1", body=f"{erased}-{i}"),
                _aged(1, "u2", body=f"kept-{i}"),
            ])  # fmt: skip
        await participant.erase("u3")
        await participant.erase("u1")
        content = _file_bytes(path)
    finally:
        await participant.database.dispose()
    assert b"kept-59" in content
    assert erased.encode() not in content


async def test_a_purge_gives_pages_back_and_empties_the_log(tmp_path: Path):
    path, participant = await _sqlite_participant(tmp_path)
    try:
        for _ in range(60):
            await _add(
                participant, events, [_aged(40, "u2", body="x" * 4000), _aged(1, "u2", body="y")]
            )
        pages = await _pragma(participant, "page_count")
        deleted, _, _ = await participant.purge(
            participant.categories["events"], NOW - timedelta(days=30), 10
        )
        free_pages = await _pragma(participant, "freelist_count")
        after = await _pragma(participant, "page_count")
        # Purge batches commit without an fsync; nothing else may inherit that.
        async with AsyncExitStack() as stack:
            pooled = [
                await stack.enter_async_context(participant.database.engine.connect())
                for _ in range(8)
            ]
            for c in pooled:  # deferred transactions: eight may be open at once
                await c.execution_options(**{READ_ONLY: True})
            settings = [
                [(await c.exec_driver_sql(f"PRAGMA {name}")).scalar() for name in SETTINGS]
                for c in pooled
            ]
        wal = os.path.getsize(f"{path}-wal")  # noqa: ASYNC240 - a test reading its own file
    finally:
        await participant.database.dispose()
    assert deleted == 60
    assert free_pages == 0 and after < pages / 2
    # Every pooled connection commits durably again (FULL), checkpoints as SQLite does by
    # default, and has its default cache.
    assert settings == [[2, 1000, -2000]] * 8
    assert wal == 0  # truncated: no older page images of the deleted rows


SETTINGS = ("synchronous", "wal_autocheckpoint", "cache_size")

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("status", String(16), nullable=False, index=True),
    Column("create_time", Time, nullable=False, index=True),
)


async def test_a_sqlite_purge_picks_its_batches_on_the_time_index_not_on_its_condition(
    tmp_path: Path,
):
    """Without statistics SQLite would serve `status IN (…)` from the status index (every ended
    job): the whole table read and sorted for each batch, whatever is expired."""
    path, participant = await _sqlite_participant(tmp_path)
    ended = TableCategory(
        "jobs", "jobs", "contract", jobs, timedelta(days=30), time_column="create_time",
        only=jobs.c.status.in_(("succeeded", "failed")),
    )  # fmt: skip
    statements: list[tuple[str, tuple]] = []

    def seen(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if statement.startswith(("DELETE", "SELECT count")):
            statements.append((statement, parameters))

    engine = participant.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        await _add(participant, jobs, [
            {"status": status, "create_time": NOW - timedelta(days=age)}
            for age in (40, 35, 1) for status in ("succeeded", "queued")
        ])  # fmt: skip
        assert (await participant.purge(ended, NOW - timedelta(days=30), 10))[:2] == (2, 0)
        plans = []
        async with participant.database.read() as connection:
            for statement, parameters in statements:
                rows = await connection.exec_driver_sql(
                    f"EXPLAIN QUERY PLAN {statement}", parameters
                )
                plans.append(" / ".join(row[3] for row in rows))
    finally:
        event.remove(engine, "before_cursor_execute", seen)
        await participant.database.dispose()
    assert plans and all("ix_jobs_create_time" in plan for plan in plans), plans
    assert not any("ix_jobs_status" in plan for plan in plans), plans


async def test_sqlite_purge_batches_follow_their_time_up_to_the_batch_size(tmp_path: Path):
    path, participant = await _sqlite_participant(tmp_path)
    category = participant.categories["events"]
    cutoff = NOW - timedelta(days=30)
    hasty = Participant(
        "runner", participant.database, list(participant.categories.values()),
        SettableClock(NOW), batch_seconds=0.0,
    )  # fmt: skip
    patient = Participant(
        "runner", participant.database, list(participant.categories.values()),
        SettableClock(NOW), batch_seconds=60.0,
    )  # fmt: skip
    try:
        await _add(participant, events, [_aged(40) for _ in range(1000)])
        # Each batch over its time: the next one smaller (500, then MIN_BATCH rows at a time,
        # then one that finds none).
        assert await hasty.purge(category, cutoff, 500) == (1000, 0, 7)
        await _add(participant, events, [_aged(40) for _ in range(2500)])
        # Well within it: doubled from the first (1000) up to the caller's batch size.
        assert await patient.purge(category, cutoff, 10_000) == (2500, 0, 2)
        await _add(participant, events, [_aged(40) for _ in range(2500)])
        assert await patient.purge(category, cutoff, 1500) == (2500, 0, 2)
    finally:
        await participant.database.dispose()


async def test_served_over_grpc_only_retention_purges_and_the_gateway_exports_its_user(
    participant, mesh: MeshSettings
):
    await _add(participant, events, [_aged(1, "u1", body="mine"), _aged(40, "u2", body="old")])

    def register(server: grpc.aio.Server) -> None:
        retention_pb2_grpc.add_RetentionParticipantServicer_to_server(participant, server)

    running = await start_server(
        name="runner", mesh=mesh, port=0, register=register, service_names=[SERVICE],
        allowed=ALLOWED_CALLERS,
    )  # fmt: skip
    there = mesh.model_copy(update={"runner_addr": f"127.0.0.1:{running.port}"})
    service = pb.DESCRIPTOR.services_by_name["RetentionParticipant"]
    try:
        for caller in ("gateway", "identity", "vault", "operator"):
            async with open_channel(there, "runner", caller=caller) as channel:
                stub = retention_pb2_grpc.RetentionParticipantStub(channel)
                for method in ("ListPolicies", "Purge", "EraseSubject", "Seal"):
                    outcome = await call(stub, service, method)
                    assert refused(outcome, grpc.StatusCode.PERMISSION_DENIED), (caller, method)
        async with open_channel(there, "runner", caller="retention") as channel:
            stub = retention_pb2_grpc.RetentionParticipantStub(channel)
            listed = await stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10)
            assert [p.category for p in listed.policies] == [
                "event_bodies", "events", "bills", "outbox"
            ]  # fmt: skip
            request = pb.PurgeRequest(category="events")
            put_timestamp(request.cutoff, NOW - timedelta(days=30))
            purged = await stub.Purge(request, timeout=10)
            assert (purged.rows_deleted, purged.rows_still_expired) == (1, 0)
            assert purged.oldest_time.ToDatetime(UTC) == NOW - timedelta(days=1)
            unsealed = await call(stub, service, "Seal", pb.SealRequest(category="events"))
            assert refused(unsealed, grpc.StatusCode.FAILED_PRECONDITION)
            unknown = await call(stub, service, "Purge", pb.PurgeRequest(category="nope"))
            assert refused(unknown, grpc.StatusCode.NOT_FOUND)
            forever = pb.PurgeRequest(category="outbox", batch_size=10**6)
            assert refused(
                await call(stub, service, "Purge", forever), grpc.StatusCode.INVALID_ARGUMENT
            )
        async with open_channel(there, "runner", caller="gateway") as channel:
            stub = retention_pb2_grpc.RetentionParticipantStub(channel)
            metadata_ = callers.user_metadata("u1")
            # The gateway exports its acting user, whatever the request names.
            stream = stub.ExportSubject(pb.ExportSubjectRequest(), metadata=metadata_, timeout=10)
            records = [json.loads(r.json) async for b in stream for r in b.records]
            assert [r["body"] for r in records] == ["mine"]
            other = stub.ExportSubject(
                pb.ExportSubjectRequest(user_id="u2"), metadata=metadata_, timeout=10
            )
            with pytest.raises(grpc.aio.AioRpcError) as error:
                [r async for r in other]
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await running.stop(grace=0.5)
