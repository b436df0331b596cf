"""The deletion-request reconciler: while identity cannot be reached it keeps trying, and an
outage is one warning in the logs, not one line per retry; against a real identity over mTLS, a
cancelled deletion lifts the suspension (after a complete listing only, never in an outage), on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from leadmesh.identity.v1 import identity_pb2 as ipb
from leadmesh.identity.v1 import identity_pb2_grpc
from sqlalchemy import Column, MetaData, String, Table, select

from services.identity.server import RunningIdentity, migrate_database, start
from services.kit import deletions
from services.kit.callers import user_metadata
from services.kit.clock import SettableClock
from services.kit.config import MeshSettings
from services.kit.db import RowTx, Store, Time, create_service_engine
from services.kit.deletions import LIFT_MARGIN, Reconciler, SuspendedUsers
from services.kit.grpcclient import open_channel
from tests.conftest import free_port
from tests.integration.identity_support import PASSWORD, identity_settings


async def test_an_identity_outage_is_one_warning_however_many_retries(
    caplog: pytest.LogCaptureFixture,
):
    attempts = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as nobody:
        stub = health_pb2_grpc.HealthStub(nobody)

        async def reconcile() -> int:
            nonlocal attempts
            attempts += 1
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.2)
            return 0

        reconciler = Reconciler("test", every=0.01, reconcile=reconcile)
        with caplog.at_level(logging.DEBUG, logger="leadmesh.deletions"):
            reconciler.start()
            for _ in range(200):
                if attempts >= 4:
                    break
                await asyncio.sleep(0.05)
            await reconciler.stop()
    assert attempts >= 4
    unavailable = [r for r in caplog.records if r.getMessage() == "deletion requests unavailable"]
    assert len(unavailable) >= 3
    assert [r.levelno for r in unavailable].count(logging.WARNING) == 1


# --- lifting: a cancelled deletion leaves identity's listing, and the suspension goes ----------

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
tables = MetaData()
suspended = Table(
    "suspended_users",
    tables,
    Column("user_id", String(64), primary_key=True),
    Column("suspend_time", Time, nullable=False),
)


class _Tx(RowTx):
    pass


class _Store(Store[_Tx]):
    tx_class = _Tx


@dataclass
class Mesh:
    identity: RunningIdentity
    stub: identity_pb2_grpc.IdentityServiceStub
    gateway: identity_pb2_grpc.IdentityServiceStub
    store: _Store
    clock: SettableClock
    outbox: Path

    def suspensions(self) -> SuspendedUsers:
        """A service's view of its table (each call: another process of it)."""
        return SuspendedUsers(self.store, self.clock, suspended)

    async def deleted_account(self, label: str) -> str:
        account = await self.identity.parts.accounts.create_account(
            f"{label}-{uuid.uuid4().hex[:8]}@example.com", PASSWORD
        )
        await self.gateway.RequestDeletion(
            ipb.RequestDeletionRequest(password=PASSWORD), metadata=user_metadata(account.id)
        )
        return account.id

    async def cancel(self, account_id: str) -> None:
        await self.identity.parts.deletion.drain()
        email = (await self.identity.parts.accounts.account(account_id)).email
        for path in self.outbox.glob("*.eml"):
            message = message_from_bytes(path.read_bytes(), policy=policy.default)
            if message["To"] == email:
                token = re.search(r"token=([A-Za-z0-9_\-]+)", message.get_content()).group(1)
        await self.gateway.CancelDeletion(ipb.CancelDeletionRequest(token=token))

    async def recorded(self) -> set[str]:
        async with self.store.read() as tx:
            return set((await tx.c.execute(select(suspended.c.user_id))).scalars())


@pytest.fixture
async def world(tmp_path: Path, mesh: MeshSettings, database_url: str) -> AsyncIterator[Mesh]:
    shutil.copytree(mesh.pki_dir, tmp_path / "pki")
    clock = SettableClock(NOW)
    settings = identity_settings(tmp_path, f"sqlite:///{tmp_path / 'identity.db'}")
    migrate_database(settings)
    identity = await start(settings, clock=clock, port=0)
    there = MeshSettings(
        var_dir=tmp_path, identity_addr=f"127.0.0.1:{identity.port}", _env_file=None
    )
    channels = [open_channel(there, "identity", caller=c) for c in ("vault", "gateway")]
    engine = create_service_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(tables.create_all)
    stubs = [identity_pb2_grpc.IdentityServiceStub(c) for c in channels]
    yield Mesh(identity, *stubs, _Store(engine), clock, settings.outbox_dir)
    await engine.dispose()
    for channel in channels:
        await channel.close()
    await identity.stop(grace=1)


async def test_a_cancelled_deletion_lifts_the_suspension_after_a_complete_listing(
    world: Mesh, caplog: pytest.LogCaptureFixture
):
    ann, bob = await world.deleted_account("ann"), await world.deleted_account("bob")
    service = world.suspensions()
    held = service.users  # what the service's hot paths hold
    assert await service.reconcile(world.stub) == 2
    assert held == {ann, bob}

    await world.cancel(ann)
    # A suspension is lifted only once older than the listing by the margin.
    await service.reconcile(world.stub)
    assert held == {ann, bob} and await world.recorded() == {ann, bob}
    world.clock.advance(LIFT_MARGIN.total_seconds() + 1)
    with caplog.at_level(logging.INFO, logger="leadmesh.deletions"):
        assert await service.reconcile(world.stub) == 0

    assert service.users is held and held == {bob}
    assert await world.recorded() == {bob}
    (line,) = [r for r in caplog.records if r.getMessage() == "suspension lifted"]
    assert line.user_id == ann and "@" not in json.dumps(line.__dict__, default=str)
    # Another process of the service (a worker that only reads the table) drops it too.
    other = world.suspensions()
    other.users.update({ann, bob})
    await other.load()
    assert other.users == {bob}


async def test_a_suspension_identity_never_listed_is_lifted_only_past_the_margin(world: Mesh):
    service = world.suspensions()
    await service.suspend(["told-directly"])  # SuspendUser racing a pass
    await service.reconcile(world.stub)
    assert service.users == {"told-directly"}
    world.clock.advance(LIFT_MARGIN.total_seconds() + 1)
    await service.reconcile(world.stub)
    assert service.users == set() and await world.recorded() == set()


async def test_an_identity_outage_or_a_failed_page_never_lifts_anyone(
    world: Mesh, monkeypatch: pytest.MonkeyPatch
):
    users = [await world.deleted_account(f"u{n}") for n in range(3)]
    service = world.suspensions()
    await service.reconcile(world.stub)
    world.clock.advance(3600)
    # The listing fails after its first page: identity goes down between two pages.
    monkeypatch.setattr(deletions, "PAGE_SIZE", 1)
    identity = world.identity

    class StopsAfterFirstPage:
        async def ListDeletionRequests(self, request):  # noqa: N802 - the stub's method
            reply = await world.stub.ListDeletionRequests(request, timeout=5)
            await identity.stop(grace=0)
            return reply

    with pytest.raises(grpc.aio.AioRpcError):
        await service.reconcile(StopsAfterFirstPage())
    assert service.users == set(users) and await world.recorded() == set(users)
    # And with identity down altogether.
    with pytest.raises(grpc.aio.AioRpcError):
        await service.reconcile(world.stub)
    assert service.users == set(users) and await world.recorded() == set(users)


async def test_a_load_racing_a_suspension_never_drops_it(world: Mesh):
    service = world.suspensions()
    for n in range(20):
        await asyncio.gather(service.load(), service.suspend([f"user-{n}"]), service.load())
        assert f"user-{n}" in service.users
    assert service.users == await world.recorded()
