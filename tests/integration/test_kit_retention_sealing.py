"""The kit's participant over sealed categories, keys from a real vault over mTLS: Seal seals what
was written in plaintext (Text and JSON columns), once, a concurrent writer winning, rows of a
destroyed day purged; killed mid-way it goes on; an export opens what it can and marks the rest
purged; a purge answers its oldest row and forgets the keys before its cutoff, an erasure the
user's."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from leadmesh.retention.v1 import retention_pb2 as pb
from leadmesh.vault.v1 import vault_pb2, vault_pb2_grpc
from sqlalchemy import select

from services.kit.clock import SettableClock, as_utc
from services.kit.config import MeshSettings
from services.kit.errors import FailedPrecondition, Unavailable
from services.kit.grpcclient import open_channel
from services.kit.retention import Participant, seal
from services.kit.sealing import ExecutionKeys, SealedColumns, Unreadable, day_of, is_sealed
from services.kit.timestamps import put_timestamp
from services.vault.server import migrate_database, start
from tests.conftest import free_port
from tests.integration.retention_support import (
    DETAILS,
    HOOKS,
    execution_keys,
    executions,
    hooks,
    private_var,
    sealed_participant,
)
from tests.integration.vault_support import vault_settings

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class World:
    participant: Participant
    keys: ExecutionKeys
    vault: vault_pb2_grpc.VaultServiceStub  # as retention: destroys keys
    mesh: MeshSettings
    clock: SettableClock


@pytest.fixture
async def vault_mesh(tmp_path: Path, mesh: MeshSettings) -> AsyncIterator[MeshSettings]:
    """A real vault (its own SQLite file) and the mesh settings that dial it."""
    var = private_var(tmp_path, mesh)
    settings = vault_settings(var, f"sqlite:///{tmp_path / 'vault.db'}")
    migrate_database(settings)
    running = await start(settings, clock=SettableClock(NOW), port=0)
    yield MeshSettings(var_dir=var, vault_addr=f"127.0.0.1:{running.port}", _env_file=None)
    await running.stop(grace=1)


@pytest.fixture
async def world(vault_mesh: MeshSettings, database_url: str) -> AsyncIterator[World]:
    clock = SettableClock(NOW)
    channel, keys = execution_keys(vault_mesh, clock)
    participant = await sealed_participant(database_url, keys, clock)
    admin = open_channel(vault_mesh, "vault", caller="retention")
    yield World(participant, keys, vault_pb2_grpc.VaultServiceStub(admin), vault_mesh, clock)
    await participant.database.dispose()
    await channel.close()
    await admin.close()


def _execution(i: int, age: timedelta, user: str = "u1") -> dict:
    return {
        "id": str(uuid.uuid4()), "user_id": user, "create_time": NOW - age,
        "event": {"body": {"email": f"lead-{i}@example.com"}, "n": i}, "note": f"note {i} ü",
    }  # fmt: skip


def _hook(i: int, age: timedelta, user: str = "u1") -> dict:
    time = NOW - age
    return {"id": str(uuid.uuid4()), "user_id": user, "receive_time": time, "payload": f"p{i}"}


async def _add(participant: Participant, table, rows: list[dict]) -> None:
    async with participant.database.write() as connection:
        await connection.execute(table.insert(), rows)


async def _stored(participant: Participant, table) -> dict[str, dict]:
    async with participant.database.read() as connection:
        rows = (await connection.execute(select(table))).all()
    return {row.id: dict(row._mapping) for row in rows}


async def _opened(keys: ExecutionKeys, columns: SealedColumns, row: dict) -> dict:
    mine = await keys.for_user(row[columns.owner_column], [columns.ref(row)])
    return columns.open_row(mine, row)


async def _seal_all(participant: Participant, name: str, batch: int) -> int:
    category, total = participant.categories[name], 0
    while True:
        sealed, remaining = await participant.seal(category, batch)
        total += sealed
        if not remaining:
            return total


async def _destroy_before(world: World, category: str, day: str) -> None:
    request = vault_pb2.DestroyExpiredEpochKeysRequest(
        participant="runner", category=category, before=day
    )
    await world.vault.DestroyExpiredEpochKeys(request, timeout=10)


async def test_seal_seals_each_plaintext_value_once_and_each_opens_to_what_it_was(world: World):
    participant = world.participant
    rows = [_execution(i, timedelta(days=i % 4, minutes=i), f"u{i % 3}") for i in range(30)]
    rows[3]["event"], rows[4]["note"] = None, None
    await _add(participant, executions, rows)
    await _add(participant, hooks, [_hook(i, timedelta(hours=i)) for i in range(5)])
    assert await _seal_all(participant, "execution_details", 7) == 30
    assert await _seal_all(participant, "webhooks_log", 1000) == 5
    stored = await _stored(participant, executions)
    for row in rows:
        kept = stored[row["id"]]
        assert all(is_sealed(kept[c]) for c in ("event", "note") if row[c] is not None)
        assert await _opened(world.keys, DETAILS, kept) == {
            c: row[c] for c in ("event", "note") if row[c] is not None
        }
    assert stored[rows[3]["id"]]["event"] is None and stored[rows[4]["id"]]["note"] is None
    for kept in (await _stored(participant, hooks)).values():
        assert (await _opened(world.keys, HOOKS, kept))["payload"].startswith("p")
    again = await participant.Seal(pb.SealRequest(category="execution_details"), None)
    assert (again.rows_sealed, again.rows_plaintext) == (0, 0)
    listed = await participant.ListPolicies(pb.ListPoliciesRequest(), None)
    assert {p.category: p.sealed for p in listed.policies} == {
        "webhooks_log": True, "execution_details": True, "executions": False
    }  # fmt: skip


async def test_a_writer_between_the_read_and_the_write_back_wins(world: World):
    participant = world.participant
    rows = [_execution(i, timedelta(hours=i)) for i in range(3)]
    await _add(participant, executions, rows)
    category = participant.categories["execution_details"]
    read = await seal.read_batch(participant.database, category, None, 10)
    async with participant.database.write() as connection:
        changed = executions.update().where(executions.c.id == rows[1]["id"])
        await connection.execute(changed.values(note="written meanwhile"))
    done = await seal.seal_batch(participant.database, category, read, world.keys, world.clock)
    assert done.rows == 2
    stored = await _stored(participant, executions)
    assert stored[rows[1]["id"]]["note"] == "written meanwhile"
    assert (await participant.seal(category, 10)) == (1, 0)  # the next pass takes it
    opened = await _opened(
        world.keys, DETAILS, (await _stored(participant, executions))[rows[1]["id"]]
    )
    assert opened["note"] == "written meanwhile"


async def test_seal_purges_the_rows_whose_day_key_is_destroyed(world: World):
    participant = world.participant
    old, young = timedelta(days=10), timedelta(days=1)
    await _add(participant, executions, [_execution(0, old), _execution(1, young)])
    await _add(participant, hooks, [_hook(0, old), _hook(1, young)])
    horizon = day_of(NOW - timedelta(days=8))
    for category in ("execution_details", "webhooks_log"):
        await _destroy_before(world, category, horizon)
    assert await _seal_all(participant, "execution_details", 10) == 1
    assert await _seal_all(participant, "webhooks_log", 10) == 1
    stored = await _stored(participant, executions)
    purged, kept = sorted(stored.values(), key=lambda r: r["create_time"])
    assert (purged["event"], purged["note"]) == (None, None)
    assert as_utc(purged["details_purge_time"]) == NOW
    assert kept["details_purge_time"] is None and is_sealed(kept["note"])
    [hook] = (await _stored(participant, hooks)).values()  # the old one went, as purged
    assert as_utc(hook["receive_time"]) == NOW - young and is_sealed(hook["payload"])


async def test_an_export_opens_sealed_columns_and_marks_what_no_longer_opens(
    world: World, database_url: str
):
    participant = world.participant
    rows = [_execution(0, timedelta(days=1)), _execution(1, timedelta(days=10))]
    await _add(participant, executions, rows + [_execution(2, timedelta(days=1), "u2")])
    await _add(participant, hooks, [_hook(0, timedelta(days=1))])
    await _seal_all(participant, "execution_details", 10)
    await _seal_all(participant, "webhooks_log", 10)
    await _destroy_before(world, "execution_details", day_of(NOW - timedelta(days=8)))
    # A process that starts afresh: nothing in memory (the one above still holds the day's key).
    channel, keys = execution_keys(world.mesh, SettableClock(NOW))
    try:
        fresh = await sealed_participant(database_url, keys, SettableClock(NOW))
        exported = [item async for item in fresh.export("u1")]
        await fresh.database.dispose()
    finally:
        await channel.close()
    records = {r.get("id"): (section, r) for section, r in exported}
    section, young = records[rows[0]["id"]]
    assert section == "executions" and young["event"] == rows[0]["event"]
    assert young["note"] == rows[0]["note"] and "note_purged" not in young
    _, old = records[rows[1]["id"]]
    assert (old["event"], old["note"], old["event_purged"], old["note_purged"]) == (
        None, None, True, True
    )  # fmt: skip
    assert [r["payload"] for s, r in exported if s == "hooks"] == ["p0"]
    assert not any(is_sealed(v) for _, r in exported for v in r.values())


async def test_a_purge_answers_its_oldest_row_and_forgets_the_keys_before_its_cutoff(world: World):
    participant = world.participant
    rows = [_execution(i, timedelta(days=age)) for i, age in enumerate((10, 9, 2))]
    await _add(participant, executions, rows)
    await _seal_all(participant, "execution_details", 10)
    before = (await _stored(participant, executions))[rows[0]["id"]]
    cutoff = NOW - timedelta(days=7)
    await _destroy_before(world, "execution_details", day_of(cutoff))  # as retention does
    request = pb.PurgeRequest(category="execution_details")
    put_timestamp(request.cutoff, cutoff)
    purged = await participant.Purge(request, None)
    assert purged.rows_deleted == 2
    assert purged.oldest_time.ToDatetime(UTC) == rows[2]["create_time"]  # not cleared yet
    with pytest.raises(Unreadable):
        await _opened(world.keys, DETAILS, before)
    await _add(participant, hooks, [_hook(0, timedelta(days=9)), _hook(1, timedelta(days=3))])
    request = pb.PurgeRequest(category="webhooks_log")
    put_timestamp(request.cutoff, cutoff)
    assert (await participant.Purge(request, None)).oldest_time.ToDatetime(UTC) == NOW - timedelta(
        days=3
    )
    put_timestamp(request.cutoff, NOW)
    assert not (await participant.Purge(request, None)).HasField("oldest_time")


async def test_an_erasure_forgets_the_users_keys(world: World):
    participant = world.participant
    rows = [_execution(0, timedelta(days=1)), _execution(1, timedelta(days=1), "u2")]
    await _add(participant, executions, rows)
    await _seal_all(participant, "execution_details", 10)
    stored = await _stored(participant, executions)
    await world.vault.ShredUserKey(vault_pb2.ShredUserKeyRequest(user_id="u1"), timeout=10)
    await participant.erase("u1")
    with pytest.raises(Unreadable):
        await _opened(world.keys, DETAILS, stored[rows[0]["id"]])
    assert (await _opened(world.keys, DETAILS, stored[rows[1]["id"]]))["note"] == rows[1]["note"]


async def test_seal_refuses_a_category_not_sealed_and_is_unavailable_without_the_vault(
    database_url: str, mesh: MeshSettings
):
    down = mesh.model_copy(update={"vault_addr": f"127.0.0.1:{free_port()}"})
    channel, keys = execution_keys(down, SettableClock(NOW))
    participant = await sealed_participant(database_url, keys, SettableClock(NOW))
    keyless = await sealed_participant(database_url, None, SettableClock(NOW))
    try:
        await _add(participant, executions, [_execution(0, timedelta(days=1))])
        with pytest.raises(Unavailable) as down_error:
            await participant.seal(participant.categories["execution_details"], 10)
        assert down_error.value.reason == "EXECUTION_KEYS_UNAVAILABLE"
        for who, name in ((participant, "executions"), (keyless, "execution_details")):
            with pytest.raises(FailedPrecondition) as refused:
                await who.seal(who.categories[name], 10)
            assert refused.value.reason == "CATEGORY_NOT_SEALED"
        sealed_before = {**_execution(1, timedelta(days=2)), "note": "lmsealed:v1:AAAA"}
        await _add(participant, executions, [sealed_before])
        exported = participant.export("u1")
        with pytest.raises(Unavailable):  # a sealed value is never exported as it is stored
            [item async for item in exported]
    finally:
        await participant.database.dispose()
        await keyless.database.dispose()
        await channel.close()


async def test_seal_killed_mid_way_goes_on_and_seals_each_row_once(world: World, tmp_path: Path):
    if world.participant.database.engine.dialect.name != "sqlite":
        pytest.skip("one backend is enough: the file is sealed by another process")
    participant, count = world.participant, 1500
    rows = [_execution(i, timedelta(days=i % 3, seconds=i), f"u{i % 4}") for i in range(count)]
    await _add(participant, executions, rows)
    url = str(participant.database.engine.url).replace("sqlite+aiosqlite", "sqlite")
    command = [
        sys.executable, "-m", "tests.integration.retention_support",
        url, str(world.mesh.var_dir), world.mesh.vault_addr, "10",
    ]  # fmt: skip
    # The vault serves on this test's event loop: the sealer runs as an asyncio subprocess.
    sealer = await asyncio.create_subprocess_exec(*command, cwd=ROOT)
    try:
        while await _sealed_count(participant) < 100:
            assert sealer.returncode is None, "the sealer ended before it was killed"
            await asyncio.sleep(0.01)
        sealer.send_signal(signal.SIGKILL)  # mid-call, no chance to clean up
    finally:
        if sealer.returncode is None:
            sealer.kill()
        killed = await sealer.wait()
    assert killed == -signal.SIGKILL
    already = await _sealed_count(participant)
    assert 100 <= already < count
    assert await _seal_all(participant, "execution_details", 200) == count - already
    stored = await _stored(participant, executions)
    for row in rows:
        opened = await _opened(world.keys, DETAILS, stored[row["id"]])
        assert opened == {"event": row["event"], "note": row["note"]}


async def _sealed_count(participant: Participant) -> int:
    async with participant.database.read() as connection:
        notes = (await connection.execute(select(executions.c.note))).scalars().all()
    return sum(1 for note in notes if is_sealed(note))
