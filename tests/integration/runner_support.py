"""The runner and the vault as real gRPC servers over mTLS, in this process, for a test: the
runner on the test's database, the vault on a SQLite file of its own; stubs that call as the
gateway for a user; helpers to make credentials and connections and wait for runs."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.protobuf.json_format import ParseDict
from leadmesh.runner.v1 import runner_pb2 as rpb
from leadmesh.runner.v1 import runner_pb2_grpc
from leadmesh.vault.v1 import vault_pb2 as vpb
from leadmesh.vault.v1 import vault_pb2_grpc
from sqlalchemy import text

from services.kit.callers import user_metadata
from services.kit.clock import Clock
from services.kit.config import MeshSettings
from services.kit.grpcclient import open_channel
from services.kit.sealing import day_of
from services.runner.server import RunningRunner
from services.runner.server import migrate_database as migrate_runner
from services.runner.server import start as start_runner
from services.runner.settings import RunnerSettings
from services.vault.server import RunningVault
from services.vault.server import migrate_database as migrate_vault
from services.vault.server import start as start_vault
from services.vault.settings import VaultSettings
from tests.integration.vault_support import vault_settings
from tests.support.receiver import Receiver

KINDS = {"api_key": vpb.CREDENTIAL_KIND_API_KEY, "login": vpb.CREDENTIAL_KIND_LOGIN,
         "oauth2": vpb.CREDENTIAL_KIND_OAUTH2}  # fmt: skip
DONE = ("succeeded", "failed")
SEALED_CATEGORIES = ("webhooks_log", "execution_details", "attempt_details", "notifications")


def runner_settings(var: Path, url: str, vault_port: int, **overrides: Any) -> RunnerSettings:
    mesh = MeshSettings(
        var_dir=var,
        redis_url=overrides.pop("redis_url", None),
        vault_addr=f"127.0.0.1:{vault_port}",
        _env_file=None,
    )
    values: dict[str, Any] = dict(
        mesh=mesh,
        database_url=url,
        allowed_networks=["127.0.0.0/8"],
        backoff_base_seconds=0.05,
        backoff_cap_seconds=0.5,
        reconcile_seconds=0.2,
        min_schedule_seconds=1,
    )
    values.update(overrides)
    return RunnerSettings(**values)


@dataclass
class RunnerMesh:
    var: Path
    database_url: str
    vault: RunningVault
    runner: RunningRunner
    vault_stub: vault_pb2_grpc.VaultServiceStub
    stub: runner_pb2_grpc.RunnerServiceStub
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def dial(self, service: str, caller: str, port: int | None = None):
        """A stub of the service (or of another runner on `port`) calling as `caller`."""
        port = port or (self.runner.port if service == "runner" else self.vault.port)
        there = MeshSettings(
            var_dir=self.var, **{f"{service}_addr": f"127.0.0.1:{port}"}, _env_file=None
        )
        channel = open_channel(there, service, caller=caller)
        self.channels.append(channel)
        stub = runner_pb2_grpc.RunnerServiceStub if service == "runner" else None
        return (stub or vault_pb2_grpc.VaultServiceStub)(channel)

    async def credential(self, user: str, kind: str, secret: dict, provider: str = "crm") -> str:
        message = struct_pb2.Struct()
        message.update(secret)
        created = await self.vault_stub.CreateCredential(
            vpb.CreateCredentialRequest(
                name=f"{kind} credential", kind=KINDS[kind], provider=provider, secret=message
            ),
            metadata=user_metadata(user),
        )
        return created.id

    async def connection(
        self,
        user: str,
        url: str,
        *,
        trigger: str = "manual",
        method: str = "POST",
        body_template: Any = None,
        headers: dict[str, str] | None = None,
        credential_id: str = "",
        max_attempts: int = 0,
        signing_secret: str = "",
        name: str = "a connection",
        **trigger_fields: Any,
    ) -> rpb.ConnectionWithToken:
        action = rpb.Action(
            type="http", method=method, url=url, headers=headers or {}, credential_id=credential_id
        )
        if body_template is not None:
            action.body_template.CopyFrom(ParseDict(body_template, struct_pb2.Value()))
        return await self.stub.CreateConnection(
            rpb.CreateConnectionRequest(
                name=name,
                trigger=rpb.Trigger(type=trigger, **trigger_fields),
                action=action,
                max_attempts=max_attempts,
                signing_secret=signing_secret,
            ),
            metadata=user_metadata(user),
        )

    async def set_status(self, user: str, connection_id: str, status: str) -> rpb.Connection:
        return await self.stub.UpdateConnection(
            rpb.UpdateConnectionRequest(
                id=connection_id,
                status=status,
                update_mask=field_mask_pb2.FieldMask(paths=["status"]),
            ),
            metadata=user_metadata(user),
        )

    async def run(self, user: str, connection_id: str, payload: Any = None) -> str:
        request = rpb.StartRunRequest(connection_id=connection_id)
        if payload is not None:
            request.payload.CopyFrom(ParseDict(payload, struct_pb2.Value()))
        return (await self.stub.StartRun(request, metadata=user_metadata(user))).id

    async def hook(
        self, token: str, body: bytes | dict, headers: dict[str, str] | None = None
    ) -> rpb.IngestWebhookResponse:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        pairs = {"content-type": "application/json", **(headers or {})}
        return await self.stub.IngestWebhook(
            rpb.IngestWebhookRequest(
                token=token,
                method="POST",
                headers=[rpb.Header(name=k, value=v) for k, v in pairs.items()],
                body=raw,
                source_ip="203.0.113.9",
            )
        )

    async def detail(self, user: str, run_id: str) -> rpb.RunDetail:
        return await self.stub.GetRun(rpb.GetRunRequest(id=run_id), metadata=user_metadata(user))

    async def finished(
        self,
        user: str,
        run_id: str,
        timeout: float = 15.0,  # noqa: ASYNC109
    ) -> rpb.RunDetail:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            detail = await self.detail(user, run_id)
            if detail.run.status in DONE:
                return detail
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"run {run_id} still {detail.run.status} after {timeout}s")
            await asyncio.sleep(0.05)

    async def notifications(self, user: str) -> list[rpb.Notification]:
        reply = await self.stub.ListNotifications(
            rpb.ListRequest(page_size=100), metadata=user_metadata(user)
        )
        return list(reply.notifications)

    async def webhook_log(self, user: str) -> list[rpb.WebhookLogEntry]:
        reply = await self.stub.ListWebhookLog(
            rpb.ListRequest(page_size=100), metadata=user_metadata(user)
        )
        return list(reply.entries)

    async def keys_in_memory(self, user: str) -> None:
        """The user's execution keys of today fetched, as a first webhook and delivery would:
        the runner then holds them through a vault outage (RUNNER_EXECUTION_KEY_CACHE_SECONDS)."""
        core = self.runner.parts.core
        today = day_of(core.clock.now())
        await core.keys.for_user(user, [(c, today) for c in SEALED_CATEGORIES], create=True)

    async def stop_vault(self) -> tuple[VaultSettings, int]:
        """Stops the vault; `restart_vault` brings it back on the same port, database and keys
        (the runner's channel reconnects)."""
        stopped = self.vault.parts.settings, self.vault.port
        await self.vault.stop(grace=0)
        return stopped

    async def restart_vault(self, stopped: tuple[VaultSettings, int], clock=None) -> None:
        settings, port = stopped
        self.vault = await start_vault(settings, port=port, clock=clock)

    async def database_bytes(self) -> bytes:
        """Every byte the runner's database holds: its SQLite files (the database, -wal, -shm),
        or, on PostgreSQL, every row of its tables as text."""
        if self.database_url.startswith("sqlite"):
            database = Path(self.database_url.removeprefix("sqlite:///"))
            files = sorted(database.parent.glob(f"{database.name}*"))
            assert files
            return b"".join(path.read_bytes() for path in files)
        async with self.runner.parts.core.store.database.read() as connection:
            tables = (
                await connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            ).scalars()
            found: list[str] = []
            for table in list(tables):
                rows = await connection.execute(text(f'SELECT t::text FROM "{table}" t'))
                found += rows.scalars().all()
        return "\n".join(found).encode()


@asynccontextmanager
async def runner_mesh(
    tmp_path: Path,
    pki_dir: Path,
    database_url: str,
    *,
    vault_overrides: dict[str, Any] | None = None,
    clock: Clock | None = None,
    vault_clock: Clock | None = None,
    **overrides: Any,
) -> AsyncIterator[RunnerMesh]:
    var = tmp_path / "var"
    if not (var / "pki").exists():
        shutil.copytree(pki_dir, var / "pki")
    vault_config = vault_settings(
        var, f"sqlite:///{tmp_path / 'vault.db'}", **(vault_overrides or {})
    )
    migrate_vault(vault_config)
    vault = await start_vault(vault_config, port=0, clock=vault_clock)
    settings = runner_settings(var, database_url, vault.port, **overrides)
    migrate_runner(settings)
    runner = await start_runner(settings, port=0, clock=clock)
    mesh = RunnerMesh(var, database_url, vault, runner, None, None)  # type: ignore[arg-type]
    mesh.stub = mesh.dial("runner", "gateway")
    mesh.vault_stub = mesh.dial("vault", "gateway")
    try:
        yield mesh
    finally:
        for channel in mesh.channels:
            await channel.close()
        await runner.stop(grace=1)
        await mesh.vault.stop(grace=1)


# Fixtures for modules that deliver to a receiver (`receiver, rm = runner_support.receiver,
# runner_support.rm`); a module's `RUNNER_OVERRIDES` dict changes its runner's settings.


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with Receiver(tmp_path / "receiver") as server:
        yield server


@pytest.fixture
async def rm(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mesh: MeshSettings,
    database_url: str,
    receiver: Receiver,
) -> AsyncIterator[RunnerMesh]:
    overrides = getattr(request.module, "RUNNER_OVERRIDES", {})
    async with runner_mesh(
        tmp_path, mesh.pki_dir, database_url, ca_file=str(receiver.ca_file), **overrides
    ) as built:
        yield built
