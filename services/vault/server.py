"""Serving the vault: `python -m services.vault` (serve) or `python -m services.vault migrate`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from leadmesh.identity.v1 import identity_pb2_grpc
from leadmesh.retention.v1 import retention_pb2_grpc
from leadmesh.vault.v1 import vault_pb2_grpc

from services.kit import retention
from services.kit.clock import Clock, SystemClock
from services.kit.config import database_url
from services.kit.db import create_service_engine, migrate
from services.kit.deletions import Reconciler, SuspendedUsers
from services.kit.grpcclient import open_channel
from services.kit.grpcserver import RunningService, start_server
from services.kit.service import service_main
from services.kit.telemetry import instrument_engine
from services.vault import MIGRATIONS
from services.vault.api import ALLOWED_CALLERS, SERVICE, VaultApi, credential_pb
from services.vault.audit import AuditLog
from services.vault.credentials import Credentials
from services.vault.datakeys import DataKeys
from services.vault.execution_keys import ExecutionKeyring
from services.vault.keyadmin import KeyAdmin
from services.vault.keys import KeyRing
from services.vault.leases import DatabaseLeases, Leases, RedisLeases
from services.vault.oauth import OAuthProviders, load_providers
from services.vault.oauth_connect import OAuthConnect
from services.vault.refresh import Refresher
from services.vault.resolve import Resolver, Sealed, SealedCredentials
from services.vault.retention import VaultParticipant
from services.vault.sealcache import SealedRows
from services.vault.settings import VaultSettings
from services.vault.store import Store
from services.vault.tables import suspended_users

log = logging.getLogger("leadmesh.vault")


@dataclass
class Parts:
    """The use cases (credentials, resolver, refresher, oauth_connect, admin, suspensions,
    execution_keys) and what they share: the store, the data keys, the sealed-row cache, the
    audit log, the leases."""

    settings: VaultSettings
    store: Store
    data_keys: DataKeys
    sealed: SealedRows[Sealed]
    audit: AuditLog
    leases: Leases
    credentials: Credentials
    resolver: Resolver
    refresher: Refresher
    oauth_connect: OAuthConnect
    admin: KeyAdmin
    suspensions: SuspendedUsers
    retention: retention.Participant
    execution_keys: ExecutionKeyring
    _closers: list = field(default_factory=list)

    def start_suspension_sync(self) -> None:
        """Suspends, now and every `suspension_reconcile_seconds`, whoever identity's record
        lists and this vault has not recorded."""
        settings = self.settings
        channel = open_channel(settings.mesh, "identity", caller="vault")
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        reconciler = Reconciler(
            "vault suspensions",
            settings.suspension_reconcile_seconds,
            lambda: self.suspensions.reconcile(stub),
        )
        reconciler.start()
        self._closers += [reconciler.stop, channel.close]

    async def close(self) -> None:
        for close in self._closers:
            await close()
        await self.audit.close()
        await self.leases.close()
        await self.store.close()


def build(settings: VaultSettings, clock: Clock | None = None) -> Parts:
    """Every part of the vault, wired from settings; nothing listens yet."""
    clock = clock or SystemClock(settings.mesh.clock_offset_seconds)
    engine = create_service_engine(database_url(settings.database_url, settings.mesh, "vault"))
    instrument_engine(engine)
    store = Store(engine)
    master = settings.master_keys.get_secret_value() if settings.master_keys else None
    data_keys = DataKeys(KeyRing.from_setting(master, settings.var_dir), clock)
    leases = _leases(settings, store, clock)
    suspensions = SuspendedUsers(store, clock, suspended_users)
    audit = AuditLog(store, clock, settings.audit_flush_seconds)
    # Scaled out (Redis), replicas do not cache: see sealcache.py.
    sealed: SealedRows[Sealed] = SealedRows(enabled=not settings.mesh.redis())
    admin_ref: list[KeyAdmin] = []
    providers = _providers(settings, lambda provider: admin_ref[0].client_secret(provider))
    admin = KeyAdmin(store, data_keys, sealed, audit, providers, clock)
    admin_ref.append(admin)
    opened = SealedCredentials(store, data_keys, sealed, render=credential_pb)
    # Both paths that hand out plaintext refuse the suspended users and share the margin.
    runner_paths = {
        "refresh_margin_seconds": settings.refresh_margin_seconds,
        "suspended": suspensions.users,
    }
    refresher = Refresher(opened, data_keys, leases, providers, audit, clock, **runner_paths)
    credentials = Credentials(store, data_keys, sealed, audit, clock)
    participant = VaultParticipant(settings, store, admin, audit, sealed, clock)
    # A destruction's rows leave the files as a purge's do (the participant's compaction).
    execution_keys = ExecutionKeyring(store, data_keys, clock, compact=participant.compact)
    return Parts(
        settings=settings,
        store=store,
        data_keys=data_keys,
        sealed=sealed,
        audit=audit,
        leases=leases,
        credentials=credentials,
        resolver=Resolver(opened, refresher.renew, audit, clock, **runner_paths),
        refresher=refresher,
        oauth_connect=OAuthConnect(
            credentials, data_keys, providers, clock, state_seconds=settings.oauth_state_seconds
        ),
        admin=admin,
        suspensions=suspensions,
        retention=participant,
        execution_keys=execution_keys,
    )


def _leases(settings: VaultSettings, store: Store, clock: Clock) -> Leases:
    redis_url = settings.mesh.redis()
    if redis_url:
        return RedisLeases(redis_url, settings.refresh_lease_seconds)
    return DatabaseLeases(store, clock, settings.refresh_lease_seconds)


def _providers(
    settings: VaultSettings, client_secret: Callable[[str], Awaitable[str | None]]
) -> OAuthProviders:
    """`client_secret`: a provider's secret sealed in the vault (production keeps none in the
    providers' file)."""
    return OAuthProviders(
        load_providers(
            settings.oauth_providers.get_secret_value() if settings.oauth_providers else None,
            production=settings.production,
        ),
        client_secret,
        settings.http_timeout_seconds,
    )


RunningVault = RunningService[Parts]


async def start(
    settings: VaultSettings, *, clock: Clock | None = None, port: int | None = None
) -> RunningVault:
    parts = build(settings, clock)
    # Known before the first call is served: a suspended user's secret never leaves.
    await parts.suspensions.load()
    api = VaultApi(
        parts.credentials,
        parts.resolver,
        parts.refresher,
        parts.oauth_connect,
        parts.admin,
        parts.suspensions,
        parts.execution_keys,
    )

    def register(server) -> None:
        vault_pb2_grpc.add_VaultServiceServicer_to_server(api, server)
        retention_pb2_grpc.add_RetentionParticipantServicer_to_server(parts.retention, server)

    running = await start_server(
        name="vault",
        mesh=settings.mesh,
        port=settings.mesh.vault_port if port is None else port,
        register=register,
        service_names=[SERVICE, retention.SERVICE],
        allowed={**ALLOWED_CALLERS, **retention.ALLOWED_CALLERS},
    )
    parts.start_suspension_sync()
    return RunningService(parts, running)


def migrate_database(settings: VaultSettings) -> None:
    migrate(database_url(settings.database_url, settings.mesh, "vault"), MIGRATIONS)


def main(argv: list[str]) -> int:
    return service_main(
        argv,
        name="vault",
        settings_class=VaultSettings,
        start=start,
        migrate_database=migrate_database,
        describe=lambda service: {
            "kek_current": service.parts.data_keys.keyring.current,
            "keys": "managed" if service.parts.data_keys.keyring.managed else "supplied",
            "leases": "redis" if service.parts.settings.mesh.redis() else "database",
        },
    )
