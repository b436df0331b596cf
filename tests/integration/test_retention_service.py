"""The retention service over real sockets with mTLS, its participants real gRPC servers: the
scheduled purge and its ledger, two replicas never purging one category at once (database and
Redis leases), the schedule across restarts, compliance states, erasure cases from identity's
deletion requests to the certificate (a participant stopped mid-way), cancellation, and the
caller matrix. Retention's own store runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from leadmesh.retention.v1 import retention_pb2 as pb
from leadmesh.retention.v1 import retention_pb2_grpc

from services.kit.clock import SettableClock
from services.kit.config import MeshSettings
from services.kit.grpcclient import open_channel
from services.kit.timestamps import put_timestamp
from services.retention.server import RunningRetention, migrate_database, start
from tests.conftest import free_port
from tests.integration.grpc_support import call, refused
from tests.integration.identity_support import PASSWORD, identity_settings
from tests.integration.retention_support import (
    EVENT_DAYS,
    Served,
    private_var,
    retention_settings,
    serve_identity,
    serve_participant,
)

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CALLERS = ("gateway", "identity", "vault", "runner", "retention", "operator")


async def until(check: Callable[[], Awaitable[object]], within: float = 15.0, what: str = ""):
    """The first truthy result of `check`, polled."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


class World:
    """Participants and retention replicas of one test, all stopped at its end."""

    def __init__(self, tmp_path: Path, mesh: MeshSettings, url: str) -> None:
        self.var = private_var(tmp_path, mesh)
        self.mesh = MeshSettings(var_dir=self.var, _env_file=None)
        self.url = url
        self.clock = SettableClock(T0)
        self.served: dict[str, Served] = {}
        self.replicas: list[RunningRetention] = []
        self.channels: list[grpc.aio.Channel] = []
        self.migrated = False

    async def participant(self, name: str, **kwargs) -> Served:
        served = await serve_participant(name, self.mesh, self.var / "data", self.clock, **kwargs)
        self.served[name] = served
        return served

    def addrs(self, names) -> dict[str, str]:
        # A participant not served is dialled at a port nobody listens on: unreachable.
        return {
            n: self.served[n].addr if n in self.served else f"127.0.0.1:{free_port()}"
            for n in names
        }

    async def retention(self, participants=("vault",), redis_url=None, **overrides):
        settings = retention_settings(
            self.var,
            self.url,
            self.addrs(["identity", "vault", "runner"]),
            redis_url=redis_url,
            participants=list(participants),
            **overrides,
        )
        if not self.migrated:
            migrate_database(settings)
            self.migrated = True
        running = await start(settings, clock=self.clock, port=0)
        self.replicas.append(running)
        return running

    def operator(self, running: RunningRetention, caller: str = "operator"):
        there = MeshSettings(
            var_dir=self.var, retention_addr=f"127.0.0.1:{running.port}", _env_file=None
        )
        channel = open_channel(there, "retention", caller=caller)
        self.channels.append(channel)
        return retention_pb2_grpc.RetentionServiceStub(channel)

    async def stop(self, running: RunningRetention) -> None:
        self.replicas.remove(running)
        await running.stop(grace=0.5)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        for running in list(self.replicas):
            await self.stop(running)
        for served in self.served.values():
            await served.close()


@pytest.fixture
async def world(tmp_path: Path, mesh: MeshSettings, database_url: str):
    built = World(tmp_path, mesh, database_url)
    yield built
    await built.close()


@pytest.fixture
async def sqlite_world(tmp_path: Path, mesh: MeshSettings):
    built = World(tmp_path, mesh, f"sqlite:///{tmp_path / 'retention.db'}")
    yield built
    await built.close()


async def ledger(stub, participant: str = "vault") -> list[pb.LedgerEntry]:
    request = pb.ListLedgerRequest(participant=participant, page_size=1000)
    reply = await stub.ListLedger(request, timeout=10)
    return list(reply.entries)


# --- purges ----------------------------------------------------------------------------------


async def test_the_purge_job_deletes_what_is_expired_and_writes_the_ledger(world: World):
    vault = await world.participant("vault")
    limit = timedelta(days=EVENT_DAYS)
    kept = await vault.add_events("u1", [T0 - limit + timedelta(minutes=1), T0])
    await vault.add_events("u1", [T0 - limit - timedelta(minutes=1), T0 - timedelta(days=30)])
    running = await world.retention(batch_size=1)
    stub = world.operator(running)

    entries = await until(lambda: ledger(stub), what="a ledger entry of vault/events")
    assert await vault.event_ids() == set(kept)
    [entry] = entries
    assert (entry.participant, entry.category, entry.outcome) == ("vault", "events", "ok")
    assert (entry.rows_deleted, entry.trigger, entry.error) == (2, "scheduled", "")
    assert entry.cutoff.ToDatetime(tzinfo=UTC) == T0 - limit
    assert entry.start_time.ToDatetime(tzinfo=UTC) == T0
    # Retention's own categories run on the same schedule.
    own = await until(lambda: _categories_run(stub, 3), what="retention's own purges")
    assert own == {"purge_ledger", "erasure_certificates", "traces"}


async def _categories_run(stub, count: int) -> set[str] | None:
    found = {e.category for e in await ledger(stub, "retention")}
    return found if len(found) >= count else None


async def test_an_operator_run_as_of_a_later_time_purges_with_progress(world: World):
    vault = await world.participant("vault")
    await vault.add_events("u1", [T0 - timedelta(days=1)] * 5)
    running = await world.retention(batch_size=2)
    stub = world.operator(running)
    await until(lambda: ledger(stub), what="the first scheduled purge")
    world.clock.advance(seconds=1)

    request = pb.RunPurgesRequest(participant="vault", category="events", dry_run=True)
    put_timestamp(request.as_of, T0 + timedelta(days=8))
    [dry] = [p async for p in stub.RunPurges(request, timeout=30) if p.done]
    assert (dry.outcome, dry.rows_still_expired, dry.rows_deleted) == ("dry_run", 5, 0)
    assert len(await vault.event_ids()) == 5

    request.dry_run = False
    progress = [p async for p in stub.RunPurges(request, timeout=30)]
    assert progress[-1].done and progress[-1].outcome == "ok"
    assert progress[-1].rows_deleted == 5
    assert await vault.event_ids() == set()
    newest = (await ledger(stub))[0]
    assert (newest.trigger, newest.outcome, newest.rows_deleted) == ("operator", "ok", 5)
    assert newest.cutoff.ToDatetime(tzinfo=UTC) == T0 + timedelta(days=8 - EVENT_DAYS)

    unknown = await _outcome(stub, SERVICE, "RunPurges", pb.RunPurgesRequest(participant="x"))
    assert refused(unknown, grpc.StatusCode.INVALID_ARGUMENT)


async def _two_replicas_take_turns(world: World, redis_url: str | None) -> None:
    vault = await world.participant("vault", purge_delay=0.03)
    old = T0 - timedelta(days=30)
    options = dict(batch_size=2, purge_interval_seconds=0.2, redis_url=redis_url)
    first = await world.retention(**options)
    second = await world.retention(**options)
    for _ in range(4):  # rows keep expiring: each wave is purged by one replica at a time
        await vault.add_events("u1", [old] * 30)
        await until(lambda: _none_left(vault), what="the wave purged")
    assert vault.participant.most_in_flight == 1, "two purges of vault/events overlapped"
    assert vault.participant.purge_calls >= 4  # a call per wave at least (one call runs batches)
    stub = world.operator(first)
    # Every row deleted is in the ledger once (the last run's entry follows its last call).
    assert await until(lambda: _deleted_in_ledger(stub, 120), what="every run recorded")
    assert second.port != first.port


async def _deleted_in_ledger(stub, count: int) -> bool:
    runs = [e for e in await ledger(stub) if e.outcome == "ok"]
    deleted = sum(e.rows_deleted for e in runs)
    assert deleted <= count, "rows counted twice"
    return deleted == count


async def _none_left(served: Served) -> bool:
    return not await served.event_ids()


@pytest.fixture
def one_batch_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Purge call returns after one batch (not two seconds of them), so that a purge is many
    calls long and two replicas' purges would interleave if the lease let them."""
    from services.kit import retention

    monkeypatch.setattr(retention, "PURGE_CALL_SECONDS", 0.0)


@pytest.mark.usefixtures("one_batch_per_call")
async def test_a_purge_of_a_stopped_participant_fails_in_the_ledger_and_is_retried(
    world: World,
):
    vault = await world.participant("vault")
    running = await world.retention(purge_interval_seconds=0.5)
    stub = world.operator(running)
    await until(lambda: ledger(stub), what="the first scheduled purge")
    await vault.add_events("u1", [T0 - timedelta(days=30)] * 3)
    await vault.stop()

    async def failed():
        return [e for e in await ledger(stub) if e.outcome == "failed"] or None

    [first, *_] = await until(failed, what="a failed purge of the stopped vault")
    assert first.rows_deleted == 0 and "UNAVAILABLE" in first.error
    # The operator asking for it now hears why, at once.
    request = pb.RunPurgesRequest(participant="vault", category="events")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        [p async for p in stub.RunPurges(request, timeout=30)]
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    await vault.start()

    async def retried():
        return [e for e in await ledger(stub) if e.outcome == "ok" and e.rows_deleted] or None

    [done] = await until(retried, what="the purge retried once the vault is back")
    assert done.rows_deleted == 3 and await vault.event_ids() == set()


async def test_two_replicas_on_one_database_never_purge_a_category_at_once(world: World):
    await _two_replicas_take_turns(world, None)


@pytest.mark.redis
@pytest.mark.usefixtures("one_batch_per_call")
async def test_two_replicas_with_redis_never_purge_a_category_at_once(
    sqlite_world: World, redis_server: str
):
    await _two_replicas_take_turns(sqlite_world, redis_server)


async def test_a_restart_keeps_the_schedule_and_a_missed_run_runs_at_start(world: World):
    await world.participant("vault")
    first = await world.retention()
    stub = world.operator(first)
    await until(lambda: ledger(stub), what="the first run")
    await world.stop(first)

    world.clock.advance(minutes=10)
    second = await world.retention()
    stub = world.operator(second)
    await until(lambda: ledger(stub, "retention"), what="the second replica serving")
    next_run = await until(
        lambda: _next_run(second, "vault", "events"), what="the job scheduled again"
    )
    # Due one interval after the stored last run, not one interval after this start.
    assert abs(next_run - (T0 + timedelta(hours=1))) < timedelta(seconds=30)
    await asyncio.sleep(0.5)
    assert len(await ledger(stub)) == 1
    await world.stop(second)

    world.clock.advance(hours=2)  # the run at T0 + 1 h was missed while nothing ran
    third = await world.retention()
    stub = world.operator(third)
    entries = await until(lambda: _at_least(ledger(stub), 2), what="the missed run at start")
    assert entries[0].start_time.ToDatetime(tzinfo=UTC) == T0 + timedelta(hours=2, minutes=10)


async def _next_run(running: RunningRetention, participant: str, category: str):
    return running.parts.schedule.next_run(participant, category)


async def _at_least(entries: Awaitable[list], count: int):
    found = await entries
    return found if len(found) >= count else None


# --- compliance ------------------------------------------------------------------------------


async def test_compliance_is_ok_late_or_unreachable(world: World):
    vault = await world.participant("vault")
    runner = await world.participant("runner")
    await vault.add_events("u1", [T0])
    await runner.add_events("u1", [T0 + timedelta(days=EVENT_DAYS)])
    running = await world.retention(participants=("identity", "vault", "runner"))
    stub = world.operator(running)

    def states(reply) -> dict[tuple[str, str], tuple[str, str]]:
        return {(c.participant, c.policy.category): (c.state, c.error) for c in reply.categories}

    now = states(await stub.GetStatus(pb.GetStatusRequest(), timeout=30))
    assert now[("vault", "events")] == ("OK", "")
    assert now[("retention", "purge_ledger")] == ("OK", "")
    state, error = now[("identity", "")]
    assert state == "UNREACHABLE" and error.startswith("UNAVAILABLE")

    # Past max age plus the purge interval (1 h), a row is late; within it, not yet.
    request = pb.GetStatusRequest()
    put_timestamp(request.as_of, T0 + timedelta(days=EVENT_DAYS, hours=2))
    later = await stub.GetStatus(request, timeout=30)
    assert states(later)[("vault", "events")][0] == "LATE"
    assert states(later)[("runner", "events")][0] == "OK"
    [vault_events] = [c for c in later.categories if c.participant == "vault"]
    assert (vault_events.policy.rows, vault_events.policy.expired_rows) == (1, 1)
    put_timestamp(request.as_of, T0 + timedelta(days=EVENT_DAYS, minutes=30))
    within = await stub.GetStatus(request, timeout=30)
    assert states(within)[("vault", "events")][0] == "OK"


SERVICE = pb.DESCRIPTOR.services_by_name["RetentionService"]
PARTICIPANT = pb.DESCRIPTOR.services_by_name["RetentionParticipant"]
EXPECTED = {
    **{m.full_name: {"operator"} for m in SERVICE.methods},
    **{m.full_name: {"retention"} for m in PARTICIPANT.methods},
}
EXPECTED[PARTICIPANT.methods_by_name["ExportSubject"].full_name] = {"retention", "gateway"}


async def test_the_caller_matrix(sqlite_world: World):
    running = await sqlite_world.retention(participants=())
    for caller in CALLERS:
        stub = sqlite_world.operator(running, caller)
        participant = retention_pb2_grpc.RetentionParticipantStub(sqlite_world.channels[-1])
        for service, target in ((SERVICE, stub), (PARTICIPANT, participant)):
            for method in service.methods:
                allowed = caller in EXPECTED[method.full_name]
                outcome = await _outcome(target, service, method.name)
                denied = refused(outcome, grpc.StatusCode.PERMISSION_DENIED)
                assert denied != allowed, (caller, method.name, outcome)


async def _outcome(stub, service, method: str, request=None):
    if service.methods_by_name[method].server_streaming:
        request = request or getattr(pb, service.methods_by_name[method].input_type.name)()
        try:
            return [m async for m in getattr(stub, method)(request, timeout=10)]
        except grpc.aio.AioRpcError as error:
            return error
    return await call(stub, service, method)


# --- erasure cases ---------------------------------------------------------------------------


async def _identity(world: World):
    from services.identity.server import build
    from services.identity.server import migrate_database as migrate_identity

    settings = identity_settings(world.var, f"sqlite:///{world.var / 'identity.db'}")
    migrate_identity(settings)
    parts = build(settings, world.clock)
    served = await serve_identity(parts, world.mesh, world.var / "data", world.clock)
    world.served["identity"] = served
    return parts, served


async def _cases(stub) -> list[pb.Erasure]:
    return list((await stub.ListErasures(pb.ListErasuresRequest(), timeout=10)).erasures)


async def _case_in(stub, state: str):
    cases = await _cases(stub)
    return cases[0] if cases and cases[0].state == state else None


async def test_an_erasure_case_opens_waits_executes_retries_and_completes(world: World):
    parts, identity = await _identity(world)
    try:
        vault = await world.participant("vault")
        runner = await world.participant("runner")
        account = await parts.accounts.create_account("erased@example.com", PASSWORD)
        other = await parts.accounts.create_account("stays@example.com", PASSWORD)
        for served in (identity, vault, runner):
            await served.add_events(account.id, [T0, T0])
            await served.add_events(other.id, [T0])
        await parts.deletion.request_deletion(account.id, PASSWORD)
        running = await world.retention(
            participants=("identity", "vault", "runner"), erasure_reconcile_seconds=0.2
        )
        stub = world.operator(running)

        case = await until(lambda: _case_in(stub, "open"), what="the case opened")
        assert case.request_time.ToDatetime(tzinfo=UTC) == T0
        assert case.deadline.ToDatetime(tzinfo=UTC) == T0 + timedelta(days=60)
        assert case.execute_after.ToDatetime(tzinfo=UTC) == T0 + timedelta(days=14)
        assert account.id not in str(case) and len(case.subject_ref) == 64
        # Not due yet: nothing runs, nothing is erased.
        assert not (await stub.ProcessErasures(pb.ProcessErasuresRequest(), timeout=30)).erasures
        assert len(await vault.event_ids()) == 3
        # Within 7 days of its deadline, the open case is at risk.
        request = pb.GetStatusRequest()
        put_timestamp(request.as_of, T0 + timedelta(days=54))
        at_risk = (await stub.GetStatus(request, timeout=30)).erasures_at_risk
        assert [c.id for c in at_risk] == [case.id]

        await runner.stop()  # the runner is down when the case comes due
        world.clock.advance(days=15)
        executing = await until(lambda: _runner_tried(stub), what="the runner step failed")
        steps = {s.participant: s for s in executing.steps}
        assert steps["vault"].state == "done" and steps["retention"].state == "done"
        assert steps["certificate"].state == "pending" and steps["identity"].state == "pending"
        assert [c.rows_erased for c in steps["vault"].categories] == [2]
        assert len(await vault.event_ids()) == 1
        assert len(await identity.event_ids()) == 3  # identity goes last

        await runner.start()  # back on its port: the next pass completes the case
        done = await until(lambda: _case_in(stub, "completed"), what="the case completed")
        assert len(await runner.event_ids()) == len(await identity.event_ids()) == 1
        full = await stub.GetErasure(pb.GetErasureRequest(id=done.id), timeout=10)
        certificate = json.loads(full.certificate)
        assert certificate["format_version"] == 1 and certificate["case_id"] == done.id
        assert certificate["subject_ref"] == done.subject_ref
        assert certificate["completion_time"]
        erased = {
            p["participant"]: sum(c["rows_erased"] for c in p["categories"])
            for p in certificate["participants"]
        }
        assert erased == {"vault": 2, "runner": 2, "retention": 0, "identity": 2}
        for secret in (account.id, "erased@example.com"):
            assert secret not in full.certificate and secret not in str(full)
        async with running.parts.store.read() as tx:
            assert (await tx.case(done.id))["user_id"] is None
        if identity.front.recorded_here:  # type: ignore[attr-defined]
            [(to, case_id, mailed)] = identity.front.certificates  # type: ignore[attr-defined]
            assert (to, case_id) == (account.id, done.id)
            assert account.id not in mailed and "erased@example.com" not in mailed
        # Done is done: later passes erase nothing more, and no case opens again.
        calls = vault.participant.erase_calls
        await asyncio.sleep(0.6)
        assert vault.participant.erase_calls == calls and len(await _cases(stub)) == 1
    finally:
        await parts.close()


async def _runner_tried(stub):
    case = await _case_in(stub, "executing")
    if case is None:
        return None
    runner = next(s for s in case.steps if s.participant == "runner")
    return case if runner.state == "failed" and runner.tries >= 2 else None


async def test_a_deletion_cancelled_before_execution_cancels_its_case(world: World):
    parts, identity = await _identity(world)
    try:
        vault = await world.participant("vault")
        account = await parts.accounts.create_account("changes-mind@example.com", PASSWORD)
        await vault.add_events(account.id, [T0])
        await parts.deletion.request_deletion(account.id, PASSWORD)
        running = await world.retention(
            participants=("identity", "vault"), erasure_reconcile_seconds=0.2
        )
        stub = world.operator(running)
        case = await until(lambda: _case_in(stub, "open"), what="the case opened")

        world.clock.advance(days=2)  # the cancel link, within the grace period
        async with parts.store.begin() as tx:
            await tx.update_account(account.id, status="active", deletion_request_time=None)
        await until(lambda: _case_in(stub, "cancelled"), what="the case cancelled")
        world.clock.advance(days=20)
        request = pb.ProcessErasuresRequest()
        assert not (await stub.ProcessErasures(request, timeout=30)).erasures
        assert len(await vault.event_ids()) == 1 and vault.participant.erase_calls == 0
        async with running.parts.store.read() as tx:
            assert (await tx.case(case.id))["user_id"] is None
        missing = await call(stub, SERVICE, "GetErasure", pb.GetErasureRequest(id="nope"))
        assert refused(missing, grpc.StatusCode.NOT_FOUND)
    finally:
        await parts.close()
