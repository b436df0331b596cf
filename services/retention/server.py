"""Serving retention: `python -m services.retention` (serve) or `… migrate`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from leadmesh.identity.v1 import identity_pb2_grpc
from leadmesh.retention.v1 import retention_pb2_grpc

from services.kit import retention as kit_retention
from services.kit.clock import Clock, SystemClock
from services.kit.config import database_url
from services.kit.db import create_service_engine, migrate
from services.kit.grpcclient import open_channel
from services.kit.grpcserver import RunningService, start_server
from services.kit.retention import Participant
from services.kit.service import service_main
from services.kit.telemetry import instrument_engine
from services.retention import MIGRATIONS
from services.retention.api import ALLOWED_CALLERS, SERVICE, RetentionApi
from services.retention.compliance import Compliance
from services.retention.daykeys import DayKeys
from services.retention.erasure import Erasures
from services.retention.leases import DatabaseLeases, Leases, RedisLeases
from services.retention.ledger import Ledger
from services.retention.participants import SELF, Participants
from services.retention.purges import Purges
from services.retention.schedule import Schedule
from services.retention.sealing import Sealing
from services.retention.settings import RetentionSettings
from services.retention.store import Store
from services.retention.subjects import load_subject_key

log = logging.getLogger("leadmesh.retention")


@dataclass
class Parts:
    """The use cases (purges, schedule, compliance, erasures) over one store, clock and leases."""

    settings: RetentionSettings
    store: Store
    leases: Leases
    participants: Participants
    own: Participant
    ledger: Ledger
    purges: Purges
    erasures: Erasures
    schedule: Schedule
    compliance: Compliance
    sealing: Sealing
    identity_channel: object
    # The vault's VaultService: its day keys, destroyed after each purge of a sealed category.
    vault_channel: object

    async def close(self) -> None:
        await self.schedule.stop()
        await self.participants.close()
        await self.identity_channel.close()  # type: ignore[attr-defined]
        await self.vault_channel.close()  # type: ignore[attr-defined]
        await self.leases.close()
        await self.store.close()


def build(settings: RetentionSettings, clock: Clock | None = None) -> Parts:
    """Every part of retention, wired from settings; nothing listens or runs yet."""
    clock = clock or SystemClock(settings.mesh.clock_offset_seconds)
    engine = create_service_engine(database_url(settings.database_url, settings.mesh, SELF))
    instrument_engine(engine)
    store = Store(engine)
    leases = _leases(settings, store, clock)
    participants, own = Participants.from_settings(settings, store.database, clock)
    ledger = Ledger(store)
    vault_channel = open_channel(settings.mesh, "vault", caller=SELF)
    day_keys = DayKeys(vault_channel)
    purges = Purges(participants, ledger, leases, clock, settings.batch_size, day_keys)
    sealing = Sealing(participants, leases, clock, settings.seal_batch_size)
    identity_channel = open_channel(settings.mesh, "identity", caller=SELF)
    key = load_subject_key(
        settings.subject_key.get_secret_value() if settings.subject_key else None,
        settings.var_dir,
    )
    erasures = Erasures(
        settings,
        store,
        participants,
        identity_pb2_grpc.IdentityServiceStub(identity_channel),
        leases,
        key,
        clock,
    )
    schedule = Schedule(settings, participants, purges, erasures, store, clock, sealing)
    compliance = Compliance(
        participants,
        ledger,
        erasures,
        store,
        timedelta(seconds=settings.purge_interval_seconds),
        schedule.policies,
        clock,
        day_keys,
    )
    return Parts(
        settings=settings,
        store=store,
        leases=leases,
        participants=participants,
        own=own,
        ledger=ledger,
        purges=purges,
        erasures=erasures,
        schedule=schedule,
        compliance=compliance,
        sealing=sealing,
        identity_channel=identity_channel,
        vault_channel=vault_channel,
    )


def _leases(settings: RetentionSettings, store: Store, clock: Clock) -> Leases:
    redis_url = settings.mesh.redis()
    if redis_url:
        return RedisLeases(redis_url, settings.lease_seconds)
    return DatabaseLeases(store, clock, settings.lease_seconds)


RunningRetention = RunningService[Parts]


async def start(
    settings: RetentionSettings, *, clock: Clock | None = None, port: int | None = None
) -> RunningRetention:
    parts = build(settings, clock)
    api = RetentionApi(
        parts.participants,
        parts.purges,
        parts.ledger,
        parts.compliance,
        parts.erasures,
        parts.store,
        parts.purges.clock,
        parts.sealing,
    )

    def register(server) -> None:
        retention_pb2_grpc.add_RetentionServiceServicer_to_server(api, server)
        retention_pb2_grpc.add_RetentionParticipantServicer_to_server(parts.own, server)

    running = await start_server(
        name=SELF,
        mesh=settings.mesh,
        port=settings.mesh.retention_port if port is None else port,
        register=register,
        service_names=[SERVICE, kit_retention.SERVICE],
        allowed=ALLOWED_CALLERS,
    )
    parts.schedule.start()
    return RunningService(parts, running)


def migrate_database(settings: RetentionSettings) -> None:
    migrate(database_url(settings.database_url, settings.mesh, SELF), MIGRATIONS)


def main(argv: list[str]) -> int:
    return service_main(
        argv,
        name=SELF,
        settings_class=RetentionSettings,
        start=start,
        migrate_database=migrate_database,
        describe=lambda service: {
            "participants": service.parts.participants.names(),
            "purge_interval_s": service.parts.settings.purge_interval_seconds,
            "leases": "redis" if service.parts.settings.mesh.redis() else "database",
        },
    )
