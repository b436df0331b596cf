"""Serving the runner: `python -m services.runner` (API, scheduler, reconciler and in-process
workers), `python -m services.runner migrate`, and `python -m services.runner.worker_process`
(workers only, for scaling out: `leadmesh runner-worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field

import grpc
from leadmesh.identity.v1 import identity_pb2_grpc
from leadmesh.retention.v1 import retention_pb2_grpc
from leadmesh.runner.v1 import runner_pb2_grpc
from leadmesh.vault.v1 import vault_pb2_grpc

from services.kit import retention as kit_retention
from services.kit.clock import Clock, SystemClock
from services.kit.config import database_url
from services.kit.db import create_service_engine, migrate
from services.kit.deletions import Reconciler
from services.kit.grpcclient import open_channel
from services.kit.grpcserver import RunningService, start_server
from services.kit.sealing import ExecutionKeys
from services.kit.service import service_main
from services.kit.telemetry import instrument_engine
from services.runner import MIGRATIONS
from services.runner.activity import Activity
from services.runner.api import ALLOWED_CALLERS, SERVICE, RunnerApi
from services.runner.connections import Connections
from services.runner.credentials import Credentials
from services.runner.guard import EgressPolicy
from services.runner.ingest import Ingest
from services.runner.notify import MailNotices
from services.runner.operations import Operations
from services.runner.outbound import make_client
from services.runner.preview import Preview
from services.runner.queue import DatabaseQueue, Queue, RedisQueue
from services.runner.recorder import Recorder
from services.runner.rendering import Renderer
from services.runner.retention import RunnerParticipant
from services.runner.retry import Retries
from services.runner.schedules import Schedules
from services.runner.sealed import Sealing
from services.runner.settings import RunnerSettings
from services.runner.store import Store
from services.runner.suspensions import Suspensions
from services.runner.worker import Worker

log = logging.getLogger("leadmesh.runner")


def egress_policy(settings: RunnerSettings) -> EgressPolicy:
    return EgressPolicy(
        allowed_networks=tuple(
            ipaddress.ip_network(n, strict=False) for n in settings.allowed_networks
        ),
        allow_plain_http=settings.allow_plain_http,
        source_address=settings.egress_source_address,
    )


@dataclass
class Core:
    """What the API process and worker processes share: store, queue, vault (its channel and
    the execution keys in memory, one cache for ingest, reads and every worker), HTTP client."""

    settings: RunnerSettings
    clock: Clock
    store: Store
    queue: Queue
    policy: EgressPolicy
    suspensions: Suspensions
    vault_channel: grpc.aio.Channel
    keys: ExecutionKeys
    sealing: Sealing
    workers: list[Worker] = field(default_factory=list)
    _closers: list = field(default_factory=list)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def start_key_prefetch(self) -> None:
        """Tomorrow's keys of today's users fetched ahead of midnight (kit/sealing.py)."""
        self._tasks.append(asyncio.create_task(self.keys.run_prefetch(), name="key prefetch"))

    def start_workers(self, count: int, prefix: str) -> None:
        if count <= 0:
            return
        credentials = Credentials(
            vault_pb2_grpc.VaultServiceStub(self.vault_channel),
            self.settings.credential_cache_seconds,
        )
        client = make_client(
            self.policy,
            connect_timeout=self.settings.connect_timeout_seconds,
            read_timeout=self.settings.read_timeout_seconds,
            ca_file=self.settings.ca_file,
        )
        identity_channel = open_channel(self.settings.mesh, "identity", caller="runner")
        mail = MailNotices(
            identity_pb2_grpc.IdentityServiceStub(identity_channel), self.settings.mesh.frontend_url
        )
        recorder = Recorder(
            self.store,
            self.clock,
            self.settings.pause_after_failures,
            on_notices=mail,
            mail_window_seconds=self.settings.failure_mail_window_seconds,
            sealing=self.sealing,
        )
        recorder.start()
        for index in range(count):
            worker = Worker(
                f"{prefix}-{index}",
                self.settings,
                self.store,
                self.queue,
                credentials,
                client,
                self.policy,
                self.clock,
                recorder,
                suspended=self.suspensions.users,
                sealing=self.sealing,
            )
            worker.start()
            self.workers.append(worker)
        self._closers += [recorder.close, client.aclose, mail.close, identity_channel.close]

    def start_reconciler(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.settings.reconcile_seconds)
                try:
                    pushed = await self.queue.reconcile()
                    if pushed:
                        log.info("runs queued again", extra={"count": pushed})
                except Exception:
                    log.exception("reconciling the queue failed")

        self._tasks.append(asyncio.create_task(loop(), name="reconciler"))

    def start_suspension_sync(self, *, identity: bool) -> None:
        """Keeps `suspensions` current: from identity's record every
        `suspension_reconcile_seconds` (the API process), or, in worker-only processes, from the
        runner's own table every `reconcile_seconds` (the API process writes it)."""
        if identity:
            channel = open_channel(self.settings.mesh, "identity", caller="runner")
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            reconciler = Reconciler(
                "runner suspensions",
                self.settings.suspension_reconcile_seconds,
                lambda: self.suspensions.reconcile(stub),
            )
            self._closers += [reconciler.stop, channel.close]
        else:
            reconciler = Reconciler(
                "runner suspensions",
                self.settings.reconcile_seconds,
                lambda: self.suspensions.load(traced=False),
            )
            self._closers.append(reconciler.stop)
        reconciler.start()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(w.stop() for w in self.workers))
        for close in self._closers:
            await close()
        await self.vault_channel.close()
        await self.queue.close()
        await self.store.close()


def build_core(settings: RunnerSettings, clock: Clock | None = None) -> Core:
    clock = clock or SystemClock(settings.mesh.clock_offset_seconds)
    engine = create_service_engine(database_url(settings.database_url, settings.mesh, "runner"))
    instrument_engine(engine)
    store = Store(engine)
    redis_url = settings.mesh.redis()
    queue: Queue = (
        RedisQueue(
            redis_url,
            store,
            clock,
            lease_seconds=settings.lease_seconds,
            requeue_after_seconds=settings.requeue_after_seconds,
            stream=settings.queue_stream,
        )
        if redis_url
        else DatabaseQueue(store, clock)
    )
    channel = open_channel(settings.mesh, "vault", caller="runner")
    keys = ExecutionKeys(
        vault_pb2_grpc.VaultServiceStub(channel), clock, settings.execution_key_cache_seconds
    )
    return Core(
        settings,
        clock,
        store,
        queue,
        egress_policy(settings),
        Suspensions(store, clock),
        channel,
        keys,
        Sealing.of(settings, keys, clock),
    )


@dataclass
class Parts:
    core: Core
    connections: Connections
    ingest: Ingest
    activity: Activity
    schedules: Schedules
    # The runner's part in retention (RetentionParticipant).
    retention: RunnerParticipant
    preview: Preview
    retries: Retries

    async def close(self) -> None:
        await self.schedules.close()
        self.preview.renderer.close()
        await self.core.close()


def build(settings: RunnerSettings, clock: Clock | None = None) -> Parts:
    core = build_core(settings, clock)
    connections = Connections(settings, core.store, core.clock, core.policy)
    suspended = core.suspensions.users
    ingest = Ingest(
        settings, core.store, core.queue, core.clock, suspended=suspended, sealing=core.sealing
    )
    schedules = Schedules(core.store, ingest, suspended)
    connections.listeners += [schedules.changed, ingest.forget]
    retention = RunnerParticipant(
        settings,
        core.store,
        core.clock,
        core.suspensions,
        schedules=schedules,
        listeners=connections.listeners,
        keys=core.keys,
    )
    activity = Activity(core.store, core.clock, core.sealing)
    # Previews render on threads of their own: a large one never waits behind a delivery's.
    renderer = Renderer(settings.max_render_bytes, "render-preview")
    preview = Preview(core.policy, core.clock, renderer)
    retries = Retries(activity, connections, ingest)
    return Parts(core, connections, ingest, activity, schedules, retention, preview, retries)


RunningRunner = RunningService[Parts]


def worker_prefix() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def start(
    settings: RunnerSettings, *, clock: Clock | None = None, port: int | None = None
) -> RunningRunner:
    parts = build(settings, clock)
    # Known before the first call is served: a suspended user's webhook is never accepted.
    await parts.core.suspensions.load()
    api = RunnerApi(
        parts.connections,
        parts.ingest,
        parts.activity,
        settings.public_egress_addresses(),
        suspensions=parts.core.suspensions,
        operations=Operations(parts.core.store, parts.core.clock),
        preview=parts.preview,
        retries=parts.retries,
    )

    def register(server) -> None:
        runner_pb2_grpc.add_RunnerServiceServicer_to_server(api, server)
        retention_pb2_grpc.add_RetentionParticipantServicer_to_server(parts.retention, server)

    running = await start_server(
        name="runner",
        mesh=settings.mesh,
        port=settings.mesh.runner_port if port is None else port,
        register=register,
        service_names=[SERVICE, kit_retention.SERVICE],
        allowed={**ALLOWED_CALLERS, **kit_retention.ALLOWED_CALLERS},
    )
    await parts.schedules.start()
    # PostgreSQL: today's partitions and the days ahead (every purge makes them too).
    await parts.retention.make_partitions()
    parts.core.start_reconciler()
    parts.core.start_key_prefetch()
    parts.core.start_suspension_sync(identity=True)
    parts.core.start_workers(settings.workers, worker_prefix())
    return RunningService(parts, running)


def migrate_database(settings: RunnerSettings) -> None:
    migrate(database_url(settings.database_url, settings.mesh, "runner"), MIGRATIONS)


def main(argv: list[str]) -> int:
    return service_main(
        argv,
        name="runner",
        settings_class=RunnerSettings,
        start=start,
        migrate_database=migrate_database,
        describe=lambda service: {
            "queue": "redis" if service.parts.core.settings.mesh.redis() else "database",
            "workers": service.parts.core.settings.workers,
            "egress": service.parts.core.settings.egress_source_address or "default",
        },
    )


async def run_workers(settings: RunnerSettings, count: int, stop: asyncio.Event) -> None:
    """Workers only, until `stop` is set: the body of `leadmesh runner-worker`."""
    core = build_core(settings)
    await core.suspensions.load()
    core.start_suspension_sync(identity=False)
    core.start_key_prefetch()
    core.start_workers(count, worker_prefix())
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await core.close()
