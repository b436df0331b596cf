"""A deletion request stops the user's processing at once: identity, the vault and the runner as
real gRPC servers over mTLS on real databases (SQLite, and PostgreSQL for the runner and the
vault), a real receiver. The runner and the vault are told directly (SuspendUser, as the gateway
does) or learn it from identity's record (one reconcile pass); another user's work goes on. A
cancelled deletion lifts the suspension at the next pass."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import grpc
import pytest
from leadmesh.identity.v1 import identity_pb2 as ipb
from leadmesh.identity.v1 import identity_pb2_grpc
from leadmesh.runner.v1 import runner_pb2 as rpb
from leadmesh.runner.v1 import runner_pb2_grpc
from leadmesh.vault.v1 import vault_pb2 as vpb
from leadmesh.vault.v1 import vault_pb2_grpc
from sqlalchemy import update

from services.identity.server import RunningIdentity
from services.identity.server import migrate_database as migrate_identity
from services.identity.server import start as start_identity
from services.kit.callers import user_metadata
from services.kit.config import MeshSettings
from services.kit.deletions import LIFT_MARGIN
from services.kit.errors import from_rpc_error
from services.kit.grpcclient import open_channel
from services.runner.server import migrate_database as migrate_runner
from services.runner.server import run_workers
from services.runner.server import start as start_runner
from services.runner.tables import suspended_users as runner_suspended
from services.vault.server import RunningVault
from services.vault.server import migrate_database as migrate_vault
from services.vault.server import start as start_vault
from services.vault.tables import suspended_users as vault_suspended
from tests.integration.identity_support import PASSWORD, identity_settings
from tests.integration.runner_support import RunnerMesh, runner_settings
from tests.integration.vault_support import API_KEY, vault_settings
from tests.support.receiver import Receiver

# Only the start-up pass runs by itself; the tests run the passes they need.
NO_PERIODIC_PASS = 3600.0


@pytest.fixture
def second_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """The vault's own database, on the same backend as the runner's."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'vault.db'}"
        return
    import psycopg
    from sqlalchemy import make_url

    url = make_url(database_url)
    name = f"{url.database}_vault"
    admin = url.set(database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with Receiver(tmp_path / "receiver") as server:
        yield server


@dataclass
class World:
    var: Path
    identity: RunningIdentity
    vault: RunningVault
    rm: RunnerMesh
    channels: list[grpc.aio.Channel]

    def dial(self, service: str, caller: str):
        ports = {"identity": self.identity.port, "vault": self.vault.port,
                 "runner": self.rm.runner.port}  # fmt: skip
        there = MeshSettings(
            var_dir=self.var, **{f"{service}_addr": f"127.0.0.1:{ports[service]}"}, _env_file=None
        )
        channel = open_channel(there, service, caller=caller)
        self.channels.append(channel)
        stubs = {"identity": identity_pb2_grpc.IdentityServiceStub,
                 "vault": vault_pb2_grpc.VaultServiceStub,
                 "runner": runner_pb2_grpc.RunnerServiceStub}  # fmt: skip
        return stubs[service](channel)

    async def account(self, label: str) -> str:
        """A real identity account; its id is the user id the runner and the vault know."""
        created = await self.dial("identity", "gateway").CreateAccount(
            ipb.CreateAccountRequest(
                email=f"{label}-{uuid.uuid4().hex[:8]}@example.com", password=PASSWORD
            )
        )
        return created.id

    async def request_deletion(self, user: str) -> None:
        """What DELETE /v1/me asks of identity, without the gateway's calls to the others."""
        await self.dial("identity", "gateway").RequestDeletion(
            ipb.RequestDeletionRequest(password=PASSWORD), metadata=user_metadata(user)
        )

    async def resolve(self, user: str, credential_id: str) -> vpb.ResolvedCredential:
        return await self.dial("vault", "runner").ResolveCredential(
            vpb.ResolveCredentialRequest(
                user_id=user, credential_id=credential_id, connection_id="c-1"
            )
        )


@pytest.fixture
async def world(
    tmp_path: Path,
    mesh: MeshSettings,
    database_url: str,
    second_database_url: str,
    receiver: Receiver,
) -> AsyncIterator[World]:
    var = tmp_path / "var"
    shutil.copytree(mesh.pki_dir, var / "pki")
    identity_config = identity_settings(var, f"sqlite:///{tmp_path / 'identity.db'}")
    migrate_identity(identity_config)
    identity = await start_identity(identity_config, port=0)
    identity_addr = f"127.0.0.1:{identity.port}"
    vault_mesh = MeshSettings(var_dir=var, identity_addr=identity_addr, _env_file=None)
    vault_config = vault_settings(
        var, second_database_url, mesh=vault_mesh, suspension_reconcile_seconds=NO_PERIODIC_PASS
    )
    migrate_vault(vault_config)
    vault = await start_vault(vault_config, port=0)
    runner_mesh = MeshSettings(
        var_dir=var,
        identity_addr=identity_addr,
        vault_addr=f"127.0.0.1:{vault.port}",
        _env_file=None,
    )
    # No workers until a test starts them: runs stay queued meanwhile.
    settings = runner_settings(
        var, database_url, vault.port, mesh=runner_mesh, workers=0,
        ca_file=str(receiver.ca_file), suspension_reconcile_seconds=NO_PERIODIC_PASS,
    )  # fmt: skip
    migrate_runner(settings)
    runner = await start_runner(settings, port=0)
    rm = RunnerMesh(var, database_url, vault, runner, None, None)  # type: ignore[arg-type]
    rm.stub = rm.dial("runner", "gateway")
    rm.vault_stub = rm.dial("vault", "gateway")
    built = World(var, identity, vault, rm, [])
    try:
        yield built
    finally:
        for channel in [*built.channels, *rm.channels]:
            await channel.close()
        await runner.stop(grace=1)
        await built.vault.stop(grace=1)
        await identity.stop(grace=1)


def reason(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), from_rpc_error(error).reason


DELETED = (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_DELETED")


async def hook_refused(rm: RunnerMesh, token: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rm.hook(token, {"lead": "after deletion"})
    return reason(refused.value)


async def log_and_runs(rm: RunnerMesh, user: str) -> tuple[int, list[rpb.Run]]:
    log = await rm.stub.ListWebhookLog(rpb.ListRequest(page_size=100), metadata=user_metadata(user))
    runs = await rm.stub.ListActivity(rpb.ListRequest(page_size=100), metadata=user_metadata(user))
    return len(log.entries), list(runs.runs)


async def test_a_suspended_users_webhooks_are_refused_and_queued_runs_cancelled_others_delivered(
    world: World, receiver: Receiver
):
    rm = world.rm
    a, b = "user-a", "user-b"
    made_a = await rm.connection(a, receiver.https_url("/a"), trigger="webhook")
    made_b = await rm.connection(b, receiver.https_url("/b"), trigger="webhook")
    queued_a = [(await rm.hook(made_a.webhook_token, {"n": n})).run_id for n in range(2)]
    queued_b = (await rm.hook(made_b.webhook_token, {"n": 0})).run_id

    suspended = await rm.stub.SuspendUser(rpb.SuspendUserRequest(user_id=a))

    assert suspended.cancelled_run_count == 2
    for run_id in queued_a:
        run = (await rm.detail(a, run_id)).run
        assert (run.status, run.error) == ("cancelled", "account deleted")
        assert run.HasField("finish_time") and not run.HasField("next_attempt_time")
    assert await hook_refused(rm, made_a.webhook_token) == DELETED
    entries, runs = await log_and_runs(rm, a)
    assert entries == 2 and len(runs) == 2  # the refused webhook left nothing behind
    with pytest.raises(grpc.aio.AioRpcError) as manual:
        await rm.run(a, made_a.connection.id, {"manual": True})
    assert reason(manual.value) == DELETED
    again = await rm.stub.SuspendUser(rpb.SuspendUserRequest(user_id=a))
    assert again.cancelled_run_count == 0

    # The other user's work is untouched: queued before, accepted after, all delivered.
    assert (await rm.detail(b, queued_b)).run.status == "queued"
    later_b = (await rm.hook(made_b.webhook_token, {"n": 1})).run_id
    rm.runner.parts.core.start_workers(1, "test")
    for run_id in (queued_b, later_b):
        assert (await rm.finished(b, run_id)).run.status == "succeeded"
    await asyncio.sleep(0.3)
    assert sorted(r.path for r in receiver.requests) == ["/b", "/b"]


async def test_a_suspended_users_schedules_stop_firing_and_anothers_go_on(world: World):
    rm = world.rm
    a, b = "user-a", "user-b"
    for user in (a, b):
        await rm.connection(user, "https://api.example.com/x", trigger="schedule", every_seconds=1)
    deadline = asyncio.get_running_loop().time() + 10
    while not ((await log_and_runs(rm, a))[1] and (await log_and_runs(rm, b))[1]):
        assert asyncio.get_running_loop().time() < deadline, "the schedules never fired"
        await asyncio.sleep(0.1)

    await rm.stub.SuspendUser(rpb.SuspendUserRequest(user_id=a))
    fired_a = len((await log_and_runs(rm, a))[1])
    fired_b = len((await log_and_runs(rm, b))[1])
    await asyncio.sleep(2.5)

    runs_a = (await log_and_runs(rm, a))[1]
    assert len(runs_a) == fired_a and {r.status for r in runs_a} == {"cancelled"}
    assert len((await log_and_runs(rm, b))[1]) >= fired_b + 2


@pytest.fixture
async def worker_process(world: World) -> AsyncIterator[Callable[[], None]]:
    """Starts `leadmesh runner-worker`'s body (`run_workers`: a core of its own, which learns
    suspensions from the runner's table) on demand, in this process."""
    stop, tasks = asyncio.Event(), []

    def begin() -> None:
        settings = world.rm.runner.parts.core.settings
        tasks.append(asyncio.create_task(run_workers(settings, 1, stop)))

    yield begin
    stop.set()
    await asyncio.gather(*tasks)


@pytest.mark.parametrize("where", ["in the runner", "in a worker process"])
async def test_a_run_under_way_when_its_user_is_suspended_is_not_delivered_again(
    world: World, receiver: Receiver, worker_process, where: str
):
    rm = world.rm
    a, b = "user-a", "user-b"
    made_a = await rm.connection(a, receiver.https_url("/a"), max_attempts=5)
    made_b = await rm.connection(b, receiver.https_url("/b"))
    # The first attempt is slow and fails with a retryable status: the suspension lands while it
    # is under way (nothing queued to cancel), and its retry is written queued afterwards.
    receiver.respond(503, delay=1.5)
    run_a = await rm.run(a, made_a.connection.id, {"lead": 1})
    if where == "in the runner":
        rm.runner.parts.core.start_workers(1, "test")
    else:
        worker_process()
    await receiver.wait_for_async(1)

    suspended = await rm.stub.SuspendUser(rpb.SuspendUserRequest(user_id=a))

    assert suspended.cancelled_run_count == 0
    deadline = asyncio.get_running_loop().time() + 15
    while (run := (await rm.detail(a, run_a)).run).status != "cancelled":
        assert asyncio.get_running_loop().time() < deadline, run.status
        await asyncio.sleep(0.05)
    assert run.attempts == 1 and run.error == "account deleted"
    run_b = await rm.run(b, made_b.connection.id, {"lead": 2})
    assert (await rm.finished(b, run_b)).run.status == "succeeded"
    assert [r.path for r in receiver.requests] == ["/a", "/b"]


async def test_the_vault_refuses_a_suspended_users_secrets_even_after_a_restart(world: World):
    rm = world.rm
    a, b = "user-a", "user-b"
    credential_a = await rm.credential(a, "api_key", API_KEY)
    credential_b = await rm.credential(b, "api_key", API_KEY)
    assert (await world.resolve(a, credential_a)).secret["key"] == API_KEY["key"]

    await rm.vault_stub.SuspendUser(vpb.SuspendUserRequest(user_id=a))

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await world.resolve(a, credential_a)
    assert reason(refused.value) == DELETED
    with pytest.raises(grpc.aio.AioRpcError) as refresh:
        await world.dial("vault", "runner").RefreshOAuthCredential(
            vpb.RefreshOAuthCredentialRequest(
                user_id=a, credential_id=credential_a, connection_id="c-1"
            )
        )
    assert reason(refresh.value) == DELETED
    assert (await world.resolve(b, credential_b)).secret["key"] == API_KEY["key"]

    # Kept in the vault's database: a restarted vault still refuses.
    config = world.vault.parts.settings
    await world.vault.stop(grace=1)
    world.vault = await start_vault(config, port=0)
    with pytest.raises(grpc.aio.AioRpcError) as after_restart:
        await world.resolve(a, credential_a)
    assert reason(after_restart.value) == DELETED
    assert (await world.resolve(b, credential_b)).secret["key"] == API_KEY["key"]


async def test_a_deletion_only_identity_recorded_is_honoured_after_one_reconcile_pass(
    world: World, receiver: Receiver
):
    rm = world.rm
    a, b = await world.account("a"), await world.account("b")
    made_a = await rm.connection(a, receiver.https_url("/a"), trigger="webhook")
    made_b = await rm.connection(b, receiver.https_url("/b"), trigger="webhook")
    credential_a = await rm.credential(a, "api_key", API_KEY)
    credential_b = await rm.credential(b, "api_key", API_KEY)

    # Identity records the request; the runner and the vault are never told (they were "down").
    await world.request_deletion(a)
    queued_a = (await rm.hook(made_a.webhook_token, {"lead": "meanwhile"})).run_id
    assert (await world.resolve(a, credential_a)).secret["key"] == API_KEY["key"]

    identity_for_runner = world.dial("identity", "runner")
    identity_for_vault = world.dial("identity", "vault")
    assert await rm.runner.parts.core.suspensions.reconcile(identity_for_runner) == 1
    assert await world.vault.parts.suspensions.reconcile(identity_for_vault) == 1

    run = (await rm.detail(a, queued_a)).run
    assert (run.status, run.error) == ("cancelled", "account deleted")
    assert await hook_refused(rm, made_a.webhook_token) == DELETED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await world.resolve(a, credential_a)
    assert reason(refused.value) == DELETED
    # A second pass finds nothing new; the other user is untouched throughout.
    assert await rm.runner.parts.core.suspensions.reconcile(identity_for_runner) == 0
    assert (await world.resolve(b, credential_b)).secret["key"] == API_KEY["key"]
    run_b = (await rm.hook(made_b.webhook_token, {"lead": "b"})).run_id
    rm.runner.parts.core.start_workers(1, "test")
    assert (await rm.finished(b, run_b)).run.status == "succeeded"
    await asyncio.sleep(0.3)
    assert [r.path for r in receiver.requests] == ["/b"]


async def test_identity_lists_deletion_requests_oldest_first_a_page_at_a_time(world: World):
    kept = await world.account("kept")
    deleted = [await world.account(f"gone{n}") for n in range(3)]
    for user in deleted:
        await world.request_deletion(user)
    identity = world.dial("identity", "retention")

    first = await identity.ListDeletionRequests(ipb.ListDeletionRequestsRequest(page_size=2))
    second = await identity.ListDeletionRequests(
        ipb.ListDeletionRequestsRequest(page_size=2, page_token=first.next_page_token)
    )

    listed = [d.account_id for d in [*first.deletions, *second.deletions]]
    assert listed == deleted and kept not in listed
    assert first.next_page_token and not second.next_page_token
    times = [d.request_time.ToDatetime() for d in [*first.deletions, *second.deletions]]
    assert times == sorted(times)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await identity.ListDeletionRequests(ipb.ListDeletionRequestsRequest(page_token="wrI"))
    assert reason(bad.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def _cancel_token(world: World, user: str) -> str:
    await world.identity.parts.deletion.drain()
    email = (await world.identity.parts.accounts.account(user)).email
    for path in world.identity.parts.settings.outbox_dir.glob("*.eml"):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        if message["To"] == email:
            return re.search(r"token=([A-Za-z0-9_\-]+)", message.get_content()).group(1)
    raise AssertionError("no deletion mail")


async def _older(store, table, by: timedelta) -> None:
    """As if the suspensions were recorded `by` ago: past the lifting margin."""
    async with store.begin() as tx:
        await tx.c.execute(update(table).values(suspend_time=datetime.now(UTC) - by))


async def test_a_cancelled_deletion_lifts_the_suspension_in_the_runner_and_the_vault(
    world: World, receiver: Receiver
):
    rm = world.rm
    a, b = await world.account("a"), await world.account("b")
    made_a = await rm.connection(a, receiver.https_url("/a"), trigger="webhook")
    credential_a = await rm.credential(a, "api_key", API_KEY)
    await world.request_deletion(a)
    await world.request_deletion(b)
    runner, vault = rm.runner.parts.core.suspensions, world.vault.parts.suspensions
    identity_for_runner = world.dial("identity", "runner")
    identity_for_vault = world.dial("identity", "vault")
    assert await runner.reconcile(identity_for_runner) == 2
    assert await vault.reconcile(identity_for_vault) == 2
    assert await hook_refused(rm, made_a.webhook_token) == DELETED

    # The owner opens the cancel link of the confirmation mail (the gateway's call).
    await world.dial("identity", "gateway").CancelDeletion(
        ipb.CancelDeletionRequest(token=await _cancel_token(world, a))
    )
    margin = LIFT_MARGIN + timedelta(seconds=1)
    await _older(rm.runner.parts.core.store, runner_suspended, margin)
    await _older(world.vault.parts.store, vault_suspended, margin)
    await runner.reconcile(identity_for_runner)
    await vault.reconcile(identity_for_vault)

    assert a not in runner.users and a not in vault.users
    assert b in runner.users and b in vault.users  # still being deleted
    assert (await world.resolve(a, credential_a)).secret["key"] == API_KEY["key"]
    run = (await rm.hook(made_a.webhook_token, {"lead": "kept"})).run_id
    assert (await rm.detail(a, run)).run.status == "queued"  # accepted again, not cancelled
