"""Retention and sealed categories, over real sockets with mTLS: a real vault keeping the day keys,
a participant (the kit's, under the runner's name) whose category is sealed under them, and the
retention service. A purge destroys the day keys wholly purged (its own ledger entry, which a
vault down makes a failed one without hiding the purge's); the status shows each sealed
category's oldest day key and calls a key that outlives its rows LATE; `RunSealing` seals the rows
written in plaintext, with progress after each call, reporting a participant that does not
answer and going on with the others. Retention's own store runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from leadmesh.retention.v1 import retention_pb2 as pb
from leadmesh.retention.v1 import retention_pb2_grpc
from leadmesh.vault.v1 import vault_pb2_grpc
from sqlalchemy import Column, MetaData, String, Table, Text, delete, select

from services.kit.clock import SettableClock
from services.kit.config import MeshSettings
from services.kit.db import Database, Time, create_service_engine, create_sync_engine
from services.kit.grpcclient import open_channel
from services.kit.retention import Participant, TableCategory
from services.kit.sealing import ExecutionKeys, SealedColumns, day_of, is_sealed
from services.kit.timestamps import put_timestamp
from services.retention.server import RunningRetention, migrate_database, start
from services.vault.server import RunningVault
from services.vault.server import migrate_database as migrate_vault
from services.vault.server import start as start_vault
from tests.integration.retention_support import Served, private_var, retention_settings
from tests.integration.vault_support import vault_settings

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAYS = 7
CATEGORY = "payloads"
MARK = "lead-sealing@example.com"

metadata = MetaData()
payloads = Table(
    "payloads",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(64), nullable=False, index=True),
    Column("create_time", Time, nullable=False, index=True),
    Column("body", Text, nullable=True),
)
SEALED = SealedColumns(
    category=CATEGORY,
    table="payloads",
    columns=("body",),
    time_column="create_time",
    owner_column="user_id",
)


class Counting(Participant):
    """The kit's participant, noting how many Seal calls are in flight at once (each waits
    `seal_delay`, so overlapping calls would be seen)."""

    seal_delay = 0.0
    in_flight = most_in_flight = seal_calls = 0

    async def Seal(self, request, context):  # noqa: N802 - gRPC method name
        self.in_flight += 1
        self.seal_calls += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.seal_delay)
            return await super().Seal(request, context)
        finally:
            self.in_flight -= 1


async def until(check: Callable[[], Awaitable[object]], within: float = 15.0, what: str = ""):
    deadline = time.monotonic() + within
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)
    return result


class World:
    """A real vault, the sealed participant "runner" and retention replicas of one test."""

    def __init__(self, tmp_path: Path, mesh: MeshSettings, url: str) -> None:
        self.var = private_var(tmp_path, mesh)
        self.url = url
        self.clock = SettableClock(T0)
        self.vault: RunningVault | None = None
        self.vault_port = 0
        self.runner: Served | None = None
        self.keys: ExecutionKeys | None = None
        self.replicas: list[RunningRetention] = []
        self.channels: list[grpc.aio.Channel] = []

    def mesh(self, **addrs: str) -> MeshSettings:
        return MeshSettings(var_dir=self.var, _env_file=None, **addrs)

    async def start_vault(self) -> None:
        settings = vault_settings(self.var, f"sqlite:///{self.var / 'vault.db'}")
        if self.vault is None and not self.vault_port:
            migrate_vault(settings)
        self.vault = await start_vault(settings, clock=self.clock, port=self.vault_port)
        self.vault_port = self.vault.port

    async def stop_vault(self) -> None:
        assert self.vault is not None
        await self.vault.stop(grace=0.5)
        self.vault = None

    def _channel(self, service: str, caller: str, port: int) -> grpc.aio.Channel:
        channel = open_channel(
            self.mesh(**{f"{service}_addr": f"127.0.0.1:{port}"}), service, caller=caller
        )
        self.channels.append(channel)
        return channel

    async def start_runner(self) -> Served:
        """The kit's participant over `payloads` (sealed), its keys the runner's from the vault."""
        url = f"sqlite:///{self.var / 'runner-payloads.db'}"
        engine = create_sync_engine(url)
        metadata.create_all(engine)
        engine.dispose()
        vault = vault_pb2_grpc.VaultServiceStub(self._channel("vault", "runner", self.vault_port))
        self.keys = ExecutionKeys(vault, self.clock)
        category = TableCategory(
            name=CATEGORY,
            description="test payloads",
            legal_basis="test",
            table=payloads,
            max_age=timedelta(days=DAYS),
            time_column="create_time",
            user_column="user_id",
            sealed=SEALED,
        )
        database = Database(create_service_engine(url))
        participant = Counting("runner", database, [category], self.clock, keys=self.keys)
        self.runner = Served("runner", self.mesh(), participant)  # type: ignore[arg-type]
        await self.runner.start()
        return self.runner

    async def add(self, times: list[datetime], *, sealed: bool, user: str = "u1") -> list[str]:
        """Rows of `user` at `times`, their body holding the marked e-mail (sealed or not)."""
        assert self.runner is not None and self.keys is not None
        rows = [
            {"id": str(uuid.uuid4()), "user_id": user, "create_time": t, "body": f"{MARK} #{i}"}
            for i, t in enumerate(times)
        ]
        if sealed:
            refs = [SEALED.ref(row) for row in rows]
            keys = await self.keys.for_user(user, refs, create=True)
            rows = [{**row, **SEALED.seal_row(keys, row)} for row in rows]
        async with self.runner.participant.database.write() as connection:
            await connection.execute(payloads.insert(), rows)
        return [row["id"] for row in rows]

    async def bodies(self) -> dict[str, str]:
        assert self.runner is not None
        async with self.runner.participant.database.read() as connection:
            rows = await connection.execute(select(payloads.c.id, payloads.c.body))
            return {row.id: row.body for row in rows}

    async def retention(self, participants=("runner",), **overrides) -> RunningRetention:
        runner = self.runner.addr if self.runner is not None else "127.0.0.1:1"
        addrs = {"vault": f"127.0.0.1:{self.vault_port}", "runner": runner}
        settings = retention_settings(
            self.var, self.url, addrs, participants=list(participants), **overrides
        )
        if not self.replicas:
            migrate_database(settings)
        running = await start(settings, clock=self.clock, port=0)
        self.replicas.append(running)
        return running

    def operator(self, running: RunningRetention) -> retention_pb2_grpc.RetentionServiceStub:
        channel = self._channel("retention", "operator", running.port)
        return retention_pb2_grpc.RetentionServiceStub(channel)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        for running in self.replicas:
            await running.stop(grace=0.5)
        if self.runner is not None:
            await self.runner.close()
        if self.vault is not None:
            await self.vault.stop(grace=0.5)


@pytest.fixture
async def world(tmp_path: Path, mesh: MeshSettings, database_url: str):
    built = World(tmp_path, mesh, database_url)
    await built.start_vault()
    await built.start_runner()
    yield built
    await built.close()


async def ledger(stub, participant: str) -> list[pb.LedgerEntry]:
    request = pb.ListLedgerRequest(participant=participant, page_size=1000)
    return list((await stub.ListLedger(request, timeout=10)).entries)


def day(when: datetime) -> str:
    return day_of(when)


# --- day keys after a purge --------------------------------------------------------------------


async def test_a_purge_destroys_the_day_keys_wholly_purged_in_an_entry_of_its_own(world: World):
    expired = [T0 - timedelta(days=10), T0 - timedelta(days=9)]
    await world.add(expired, sealed=True)
    kept = await world.add([T0 - timedelta(days=1)], sealed=True)
    running = await world.retention()
    stub = world.operator(running)

    [destroyed] = await until(lambda: ledger(stub, "vault"), what="the day keys' entry")
    assert set(await world.bodies()) == set(kept)
    [purge] = await ledger(stub, "runner")
    assert (purge.category, purge.outcome, purge.rows_deleted) == (CATEGORY, "ok", 2)
    assert destroyed.category == f"day_keys.runner.{CATEGORY}"
    assert (destroyed.outcome, destroyed.error, destroyed.trigger) == ("ok", "", "scheduled")
    assert destroyed.rows_deleted == 2  # the keys of the two expired days
    # The horizon: the cutoff's day (the oldest row kept is younger), at its midnight.
    assert destroyed.cutoff.ToDatetime(tzinfo=UTC).date().isoformat() == day(T0 - timedelta(DAYS))
    assert destroyed.cutoff.ToDatetime(tzinfo=UTC).hour == 0
    # The kept row's key is alive: it still opens; the purged days' are gone for good.
    [category] = [c for c in (await stub.GetStatus(pb.GetStatusRequest(), timeout=30)).categories
                  if c.participant == "runner"]  # fmt: skip
    assert category.policy.sealed and category.oldest_epoch_day == day(T0 - timedelta(days=1))
    assert category.state == "OK"


async def test_a_dry_run_asks_the_vault_to_count_and_a_vault_down_fails_only_its_entry(
    world: World,
):
    await world.add([T0 - timedelta(days=3)], sealed=True)
    running = await world.retention()
    stub = world.operator(running)
    await until(lambda: ledger(stub, "vault"), what="the scheduled run's day keys entry")
    world.clock.advance(days=5)

    request = pb.RunPurgesRequest(participant="runner", category=CATEGORY, dry_run=True)
    [done] = [p async for p in stub.RunPurges(request, timeout=30) if p.done]
    assert (done.outcome, done.rows_still_expired) == ("dry_run", 1)
    counted = (await ledger(stub, "vault"))[0]
    assert (counted.outcome, counted.rows_deleted) == ("dry_run", 1)
    assert len(await world.bodies()) == 1  # nothing purged, no key destroyed
    status = await stub.GetStatus(pb.GetStatusRequest(), timeout=30)
    [category] = [c for c in status.categories if c.participant == "runner"]
    assert category.oldest_epoch_day == day(T0 - timedelta(days=3))

    await world.stop_vault()
    request.dry_run = False
    [done] = [p async for p in stub.RunPurges(request, timeout=30) if p.done]
    assert (done.outcome, done.rows_deleted) == ("ok", 1)  # the purge itself went through
    newest = (await ledger(stub, "runner"))[0]
    assert (newest.outcome, newest.rows_deleted, newest.trigger) == ("ok", 1, "operator")
    failed = (await ledger(stub, "vault"))[0]
    assert failed.outcome == "failed" and failed.error.startswith("UNAVAILABLE")
    # The status still answers, the day keys unknown while the vault is down.
    status = await stub.GetStatus(pb.GetStatusRequest(), timeout=30)
    [category] = [c for c in status.categories if c.participant == "runner"]
    assert category.oldest_epoch_day == ""

    await world.start_vault()  # a run once retention reconnected destroys what was left

    async def destroyed_again():
        [p async for p in stub.RunPurges(request, timeout=30)]
        newest = (await ledger(stub, "vault"))[0]
        return newest if newest.outcome == "ok" else None

    again = await until(destroyed_again, what="the day key destroyed once the vault is back")
    assert again.rows_deleted == 1


async def test_a_day_key_that_outlives_its_rows_is_late(world: World):
    old = T0 - timedelta(days=1)
    await world.add([old], sealed=True)
    running = await world.retention(sealing_interval_seconds=0)
    stub = world.operator(running)
    async with world.runner.participant.database.write() as connection:  # type: ignore[union-attr]
        await connection.execute(delete(payloads))  # the rows gone, their day's key not

    def runner_state(reply):
        [category] = [c for c in reply.categories if c.participant == "runner"]
        return category.state, category.oldest_epoch_day

    request = pb.GetStatusRequest()
    # The day's rows expire by its end + 7 days; a purge within the hour destroys its key.
    put_timestamp(request.as_of, T0 + timedelta(days=6))
    assert runner_state(await stub.GetStatus(request, timeout=30)) == ("OK", day(old))
    put_timestamp(request.as_of, T0 + timedelta(days=8))
    assert runner_state(await stub.GetStatus(request, timeout=30)) == ("LATE", day(old))


# --- the sealing migration ---------------------------------------------------------------------


@pytest.fixture
def one_batch_per_seal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Seal call returns after one batch, so a run is many calls long."""
    from services.kit import retention

    for name in ("SEAL_CALL_SECONDS", "PURGE_CALL_SECONDS"):
        if hasattr(retention, name):
            monkeypatch.setattr(retention, name, 0.0)


@pytest.mark.usefixtures("one_batch_per_seal")
async def test_run_sealing_streams_progress_until_nothing_is_left_in_plaintext(world: World):
    ids = await world.add([T0 - timedelta(hours=h) for h in range(25)], sealed=False)
    await world.add([T0], sealed=True)
    running = await world.retention(
        participants=("identity", "runner"), sealing_interval_seconds=0, seal_batch_size=10
    )
    stub = world.operator(running)

    progress = [p async for p in stub.RunSealing(pb.RunSealingRequest(), timeout=60)]
    # identity is not served: reported, and the runner's category is sealed all the same.
    [identity] = [p for p in progress if p.participant == "identity"]
    assert identity.done and identity.error.startswith("UNAVAILABLE")
    runner = [p for p in progress if p.participant == "runner"]
    assert [p.category for p in runner] == [CATEGORY] * len(runner)
    assert len(runner) >= 3, runner  # ten rows a call at most
    assert [p.rows_sealed for p in runner] == sorted(p.rows_sealed for p in runner)
    assert [p.rows_plaintext for p in runner] == sorted(
        (p.rows_plaintext for p in runner), reverse=True
    )
    assert all(not p.done for p in runner[:-1])
    last = runner[-1]
    assert (last.done, last.error, last.rows_sealed, last.rows_plaintext) == (True, "", 25, 0)
    bodies = await world.bodies()
    assert all(is_sealed(body) for body in bodies.values()) and len(bodies) == 26
    # Each opens to what it was, under its owner's and its day's keys.
    async with world.runner.participant.database.read() as connection:  # type: ignore[union-attr]
        rows = [dict(r._mapping) for r in await connection.execute(select(payloads))]
    keys = await world.keys.for_user("u1", {SEALED.ref(r) for r in rows})  # type: ignore[union-attr]
    opened = {r["id"]: SEALED.open_row(keys, r)["body"] for r in rows}
    assert {opened[i] for i in ids} == {f"{MARK} #{i}" for i in range(25)}

    # Again: nothing to do, said at once.
    request = pb.RunSealingRequest(participant="runner")
    [again] = [p async for p in stub.RunSealing(request, timeout=60)]
    assert (again.done, again.rows_sealed, again.rows_plaintext) == (True, 0, 0)
    unknown = pb.RunSealingRequest(participant="runner", category="nope")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        [p async for p in stub.RunSealing(unknown, timeout=10)]
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.usefixtures("one_batch_per_seal")
async def test_two_replicas_and_their_jobs_never_seal_a_category_at_once(world: World):
    await world.add([T0 - timedelta(minutes=m) for m in range(60)], sealed=False)
    world.runner.participant.seal_delay = 0.02  # type: ignore[union-attr]
    options = dict(seal_batch_size=5, sealing_interval_seconds=0.2)
    first, second = await world.retention(**options), await world.retention(**options)

    async def run(stub):
        return [p async for p in stub.RunSealing(pb.RunSealingRequest(), timeout=60)]

    runs = await asyncio.gather(run(world.operator(first)), run(world.operator(second)))
    assert all(r[-1].done and not r[-1].error for r in runs), runs
    assert sum(r[-1].rows_sealed for r in runs) <= 60  # each row sealed once
    assert all(is_sealed(body) for body in (await world.bodies()).values())
    runner = world.runner.participant  # type: ignore[union-attr]
    assert runner.most_in_flight == 1 and runner.seal_calls >= 12  # type: ignore[attr-defined]


async def test_the_service_seals_by_itself_at_start(world: World):
    await world.add([T0 - timedelta(hours=h) for h in range(5)], sealed=False)
    await world.retention()

    async def all_sealed():
        return all(is_sealed(body) for body in (await world.bodies()).values())

    await until(all_sealed, what="the rows sealed by the job at start")
