"""Serving the vault: `python -m services.vault` (serve) or `python -m services.vault migrate`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from leadmesh.identity.v1 import identity_pb2_grpc
from leadmesh.vault.v1 import vault_pb2_grpc

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
from services.vault.domain import Vault
from services.vault.flow import OAuthFlow
from services.vault.keyadmin import KeyAdmin
from services.vault.keys import KeyRing
from services.vault.leases import DatabaseLeases, Leases, RedisLeases
from services.vault.oauth import OAuthProviders, load_providers
from services.vault.settings import VaultSettings
from services.vault.store import Store
from services.vault.tables import suspended_users

log = logging.getLogger("leadmesh.vault")


@dataclass
class Parts:
    vault: Vault
    flow: OAuthFlow
    admin: KeyAdmin
    suspensions: SuspendedUsers
    _closers: list = field(default_factory=list)

    def start_suspension_sync(self) -> None:
        """Suspends, now and every `suspension_reconcile_seconds`, whoever identity's record
        lists and this vault has not recorded."""
        settings = self.vault.settings
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
        await self.vault.audit.close()
        await self.vault.leases.close()
        await self.vault.store.close()


def build(settings: VaultSettings, clock: Clock | None = None) -> Parts:
    """Every part of the vault, wired from settings; nothing listens yet."""
    clock = clock or SystemClock(settings.mesh.clock_offset_seconds)
    engine = create_service_engine(database_url(settings.database_url, settings.mesh, "vault"))
    instrument_engine(engine)
    store = Store(engine)
    master = settings.master_keys.get_secret_value() if settings.master_keys else None
    keyring = KeyRing.from_setting(master, settings.var_dir)
    redis_url = settings.mesh.redis()
    leases: Leases = (
        RedisLeases(redis_url, settings.refresh_lease_seconds)
        if redis_url
        else DatabaseLeases(store, clock, settings.refresh_lease_seconds)
    )
    admin_ref: list[KeyAdmin] = []
    suspensions = SuspendedUsers(store, clock, suspended_users)

    async def client_secret(provider: str) -> str | None:
        return await admin_ref[0].client_secret(provider)

    providers = OAuthProviders(
        load_providers(
            settings.oauth_providers.get_secret_value() if settings.oauth_providers else None,
            production=settings.production,
        ),
        client_secret,
        settings.http_timeout_seconds,
    )
    vault = Vault(
        settings,
        store,
        keyring,
        AuditLog(store, clock, settings.audit_flush_seconds),
        leases,
        providers,
        clock,
        render=credential_pb,
        suspended=suspensions.users,
    )
    admin = KeyAdmin(vault)
    admin_ref.append(admin)
    return Parts(vault, OAuthFlow(vault), admin, suspensions)


RunningVault = RunningService[Parts]


async def start(
    settings: VaultSettings, *, clock: Clock | None = None, port: int | None = None
) -> RunningVault:
    parts = build(settings, clock)
    # Known before the first call is served: a suspended user's secret never leaves.
    await parts.suspensions.load()
    api = VaultApi(parts.vault, parts.flow, parts.admin, parts.suspensions)
    running = await start_server(
        name="vault",
        mesh=settings.mesh,
        port=settings.mesh.vault_port if port is None else port,
        register=lambda server: vault_pb2_grpc.add_VaultServiceServicer_to_server(api, server),
        service_names=[SERVICE],
        allowed=ALLOWED_CALLERS,
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
            "kek_current": service.parts.vault.keyring.current,
            "keys": "managed" if service.parts.vault.keyring.managed else "supplied",
            "leases": "redis" if service.parts.vault.settings.mesh.redis() else "database",
        },
    )
