"""Retention's test world: the service built from its settings, and participants served over real
gRPC with mTLS under the mesh names retention dials (identity, vault, runner).

A test participant is the kit's `Participant` over a real SQLite file holding one small table of
rows (`events`: id, user_id, create_time) in one 7-day category; `Recording` notes every Purge in
flight, so a test can prove two calls never overlapped. "identity" serves the real identity
service (its deletion requests, its certificate mail) and such a participant side by side, on one
port, as identity itself does, so a test sees exactly what each step erased; an identity without
SendErasureCertificate has it recorded here instead. The whole mesh, every real participant,
is tests/e2e/test_operator_retention.py's. Sealed categories (`sealed_participant`): two tables
whose payload columns (Text and JSON) are sealed, keys from a real vault; run as a module, it
seals such a database in a process of its own until killed.
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import grpc
from leadmesh.identity.v1 import identity_pb2_grpc
from leadmesh.retention.v1 import retention_pb2_grpc
from leadmesh.vault.v1 import vault_pb2_grpc
from sqlalchemy import JSON, Column, Index, MetaData, String, Table, Text

from services.kit import retention as kit_retention
from services.kit.clock import Clock, SystemClock
from services.kit.config import MeshSettings
from services.kit.db import Database, Time, create_service_engine, create_sync_engine
from services.kit.grpcclient import open_channel
from services.kit.grpcserver import RunningServer, start_server
from services.kit.retention import ColumnCategory, Participant, TableCategory
from services.kit.sealing import ExecutionKeys, SealedColumns
from services.retention.settings import RetentionSettings

metadata = MetaData()
events = Table(
    "events",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(64), nullable=False, index=True),
    Column("create_time", Time, nullable=False, index=True),
)
EVENT_DAYS = 7


def private_var(tmp_path: Path, mesh: MeshSettings) -> Path:
    """A var/ of its own holding the mesh certificates."""
    var = tmp_path / "var"
    shutil.copytree(mesh.pki_dir, var / "pki")
    return var


def retention_settings(
    var: Path, url: str, addrs: dict[str, str], redis_url: str | None = None, **overrides
) -> RetentionSettings:
    mesh = MeshSettings(
        var_dir=var,
        redis_url=redis_url,
        _env_file=None,
        **{f"{name}_addr": addr for name, addr in addrs.items()},
    )
    values = dict(mesh=mesh, database_url=url, subject_key="test-subject-key")
    values.update(overrides)
    return RetentionSettings(**values)


class Recording(Participant):
    """A participant that notes how many Purge calls are in flight at once (per category), and
    waits `purge_delay` in each, so overlapping calls would be seen."""

    def __init__(self, *args, purge_delay: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.purge_delay = purge_delay
        self.in_flight = 0
        self.most_in_flight = 0
        self.purge_calls = 0
        self.erase_calls = 0

    async def Purge(self, request, context):  # noqa: N802 - gRPC method name
        self.in_flight += 1
        self.purge_calls += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.purge_delay)
            return await super().Purge(request, context)
        finally:
            self.in_flight -= 1

    async def EraseSubject(self, request, context):  # noqa: N802 - gRPC method name
        self.erase_calls += 1
        return await super().EraseSubject(request, context)


@dataclass
class Served:
    """A test participant and the server serving it (stop it, start it again on its port)."""

    name: str
    mesh: MeshSettings
    participant: Recording
    extra: list = field(default_factory=list)
    running: RunningServer | None = None
    port: int = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        def register(server) -> None:
            retention_pb2_grpc.add_RetentionParticipantServicer_to_server(self.participant, server)
            for add, front in self.extra:
                add(front.api, server)

        allowed = dict(kit_retention.ALLOWED_CALLERS)
        services = [kit_retention.SERVICE]
        for _add, servicer in self.extra:
            allowed.update(servicer.allowed)
            services.append(servicer.service_name)
        self.running = await start_server(
            name=self.name,
            mesh=self.mesh,
            port=self.port,
            register=register,
            service_names=services,
            allowed=allowed,
        )
        self.port = self.running.port

    async def stop(self) -> None:
        if self.running is not None:
            await self.running.stop(grace=0.5)
            self.running = None

    async def add_events(self, user_id: str, times: list[datetime]) -> list[str]:
        import uuid

        ids = [str(uuid.uuid4()) for _ in times]
        async with self.participant.database.write() as connection:
            await connection.execute(
                events.insert(),
                [
                    {"id": i, "user_id": user_id, "create_time": t}
                    for i, t in zip(ids, times, strict=True)
                ],
            )
        return ids

    async def event_ids(self) -> set[str]:
        async with self.participant.database.read() as connection:
            return {row[0] for row in await connection.execute(events.select())}

    async def close(self) -> None:
        await self.stop()
        await self.participant.database.dispose()


def event_participant(
    name: str, directory: Path, clock: Clock, *, purge_delay: float = 0.0
) -> Recording:
    """The kit's participant over `events` in a SQLite file of its own under `directory`."""
    url = f"sqlite:///{directory / f'{name}-events.db'}"
    directory.mkdir(parents=True, exist_ok=True)
    engine = create_sync_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    category = TableCategory(
        name="events",
        description="test events",
        legal_basis="test",
        table=events,
        max_age=timedelta(days=EVENT_DAYS),
        time_column="create_time",
        user_column="user_id",
    )
    return Recording(
        name, Database(create_service_engine(url)), [category], clock, purge_delay=purge_delay
    )


async def serve_participant(
    name: str, mesh: MeshSettings, directory: Path, clock: Clock, **kwargs
) -> Served:
    served = Served(name, mesh, event_participant(name, directory, clock, **kwargs))
    await served.start()
    return served


class IdentityFront:
    """The real identity servicer (built from identity's parts), with SendErasureCertificate
    recorded here when identity does not implement it yet."""

    def __init__(self, parts) -> None:
        from services.identity.api import ALLOWED_CALLERS, SERVICE, IdentityApi

        names = inspect.signature(IdentityApi.__init__).parameters
        api = IdentityApi(**{n: getattr(parts, n) for n in names if n != "self"})
        self.certificates: list[tuple[str, str, str]] = []
        base = identity_pb2_grpc.IdentityServiceServicer.SendErasureCertificate
        if type(api).SendErasureCertificate is base:
            certificates = self.certificates

            async def send(request, context):
                from google.protobuf import empty_pb2

                certificates.append((request.account_id, request.case_id, request.certificate))
                return empty_pb2.Empty()

            api.SendErasureCertificate = send  # type: ignore[method-assign]
            self.recorded_here = True
        else:
            self.recorded_here = False
        self.api = api
        self.service_name = SERVICE
        self.allowed = dict(ALLOWED_CALLERS)
        self.allowed.setdefault(f"/{SERVICE}/SendErasureCertificate", frozenset({"retention"}))


async def serve_identity(parts, mesh: MeshSettings, directory: Path, clock: Clock) -> Served:
    front = IdentityFront(parts)
    served = Served(
        "identity",
        mesh,
        event_participant("identity", directory, clock),
        extra=[(identity_pb2_grpc.add_IdentityServiceServicer_to_server, front)],
    )
    served.front = front  # type: ignore[attr-defined]
    await served.start()
    return served


# --- sealed categories: the kit's participant over tables with sealed columns, keys from a real
# vault (tests/integration/test_kit_retention_sealing.py; `python -m` this module seals in a
# process of its own, for the SIGKILL test) ---

sealed_metadata = MetaData()
hooks = Table(
    "hooks",
    sealed_metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("receive_time", Time, nullable=False, index=True),
    Column("payload", Text, nullable=True),
)
executions = Table(
    "executions",
    sealed_metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("create_time", Time, nullable=False, index=True),
    Column("event", JSON, nullable=True),
    Column("note", Text, nullable=True),
    Column("details_purge_time", Time, nullable=True),
    Index("ix_executions_purge_time_create_time", "details_purge_time", "create_time"),
)
HOOKS = SealedColumns("webhooks_log", "hooks", ("payload",), "receive_time", "user_id")
DETAILS = SealedColumns(
    "execution_details", "executions", ("event", "note"), "create_time", "user_id"
)


def sealed_categories() -> list:
    return [
        TableCategory(
            "webhooks_log", "hooks", "test", hooks, timedelta(days=EVENT_DAYS),
            time_column="receive_time", user_column="user_id", export_section="hooks",
            sealed=HOOKS,
        ),
        ColumnCategory(
            "execution_details", "events delivered", "test", executions,
            timedelta(days=EVENT_DAYS), time_column="create_time", columns=("event", "note"),
            purge_time_column="details_purge_time", sealed=DETAILS,
        ),
        TableCategory(
            "executions", "runs", "test", executions, timedelta(days=30),
            time_column="create_time", user_column="user_id", export_section="executions",
        ),
    ]  # fmt: skip


def execution_keys(mesh: MeshSettings, clock: Clock) -> tuple[grpc.aio.Channel, ExecutionKeys]:
    """The runner's keys from the vault dialled at `mesh.vault_addr` (close the channel)."""
    channel = open_channel(mesh, "vault", caller="runner")
    return channel, ExecutionKeys(vault_pb2_grpc.VaultServiceStub(channel), clock)


async def sealed_participant(url: str, keys: ExecutionKeys | None, clock: Clock) -> Participant:
    """The participant (named "runner") over the sealed tables at `url`, made if missing."""
    engine = create_service_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(sealed_metadata.create_all)
    return Participant("runner", Database(engine), sealed_categories(), clock, keys=keys)


async def _seal_forever(url: str, var: str, vault_addr: str, batch_size: int) -> None:
    """Seal calls, one after another, until the process is killed (or nothing is left)."""
    mesh = MeshSettings(var_dir=Path(var), vault_addr=vault_addr, _env_file=None)
    channel, keys = execution_keys(mesh, SystemClock())
    participant = await sealed_participant(url, keys, SystemClock())
    category = participant.categories["execution_details"]
    while (await participant.seal(category, batch_size))[1]:
        pass
    await channel.close()


if __name__ == "__main__":
    import sys

    asyncio.run(_seal_forever(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
