"""Serving identity: `python -m services.identity` (serve) or `python -m services.identity migrate`.

`start()` builds every part from settings and binds (port 0 in tests); tests and the launcher use
the same function, so what is tested is what runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from leadmesh.identity.v1 import identity_pb2_grpc
from leadmesh.retention.v1 import retention_pb2_grpc
from leadmesh.vault.v1 import vault_pb2_grpc

from services.identity import MIGRATIONS
from services.identity.accounts import Accounts
from services.identity.api import ALLOWED_CALLERS, SERVICE, IdentityApi
from services.identity.billing import Billing
from services.identity.consents import Consents
from services.identity.deletion import Deletion
from services.identity.login_history import LoginHistory
from services.identity.mail import Background, Mailer
from services.identity.password_change import PasswordChange
from services.identity.password_reset import PasswordReset
from services.identity.passwords import PasswordHasher
from services.identity.reauthentication import Reauthentication
from services.identity.retention import participant
from services.identity.sessions import Sessions
from services.identity.settings import IdentitySettings
from services.identity.store import Store
from services.identity.throttle import (
    Counters,
    Limits,
    LoginThrottle,
    MemoryCounters,
    RedisCounters,
)
from services.kit import retention
from services.kit.clock import Clock, SystemClock
from services.kit.config import database_url
from services.kit.db import create_service_engine, migrate
from services.kit.grpcclient import open_channel
from services.kit.grpcserver import RunningService, start_server
from services.kit.sealing import ExecutionKeys
from services.kit.service import service_main
from services.kit.telemetry import instrument_engine

log = logging.getLogger("leadmesh.identity")


def unsubscribe_key(settings: IdentitySettings) -> bytes:
    """The HMAC key of unsubscribe links: the setting, else a key generated once under var/
    (replicas behind one gateway must share the setting)."""
    if settings.unsubscribe_secret is not None:
        return settings.unsubscribe_secret.get_secret_value().encode()
    path = settings.var_dir / "unsubscribe.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip().encode()
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def make_counters(settings: IdentitySettings, clock: Clock) -> Counters:
    url = settings.mesh.redis()
    return RedisCounters(url) if url else MemoryCounters(clock)


def limits(settings: IdentitySettings) -> Limits:
    return Limits(
        window_seconds=settings.lockout_window_seconds,
        account_ip_limit=settings.lockout_account_ip_limit,
        ip_limit=settings.lockout_ip_limit,
        account_limit=settings.lockout_account_limit,
        backoff_cap_seconds=settings.lockout_backoff_cap_seconds,
        account_memory_seconds=settings.lockout_account_memory_seconds,
    )


@dataclass
class Parts:
    """Identity's use cases, each its own object over the one store and clock."""

    settings: IdentitySettings
    accounts: Accounts
    sessions: Sessions
    password_change: PasswordChange
    password_reset: PasswordReset
    deletion: Deletion
    billing: Billing
    consents: Consents
    store: Store
    hasher: PasswordHasher
    throttle: LoginThrottle
    mailer: Mailer
    background: Background
    retention: retention.Participant
    login_history: LoginHistory
    # Run at close, in order (the vault channel and its key prefetch, when served).
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        for close in self.closers:
            await close()
        await self.background.drain()
        self.hasher.close()
        await self.throttle.counters.close()
        await self.store.close()


def build(
    settings: IdentitySettings, clock: Clock | None = None, keys: ExecutionKeys | None = None
) -> Parts:
    """Every part of the service, wired from settings; nothing listens yet. `keys`: the vault's
    keys of the sealed login history (`start` makes them; without, `seal_login_history` must be
    off)."""
    clock = clock or SystemClock(settings.mesh.clock_offset_seconds)
    engine = create_service_engine(database_url(settings.database_url, settings.mesh, "identity"))
    instrument_engine(engine)
    store = Store(engine)
    mailer = Mailer(
        settings.smtp_url.get_secret_value() if settings.smtp_url else None, settings.outbox_dir
    )
    background = Background()  # mail sent after the answer: reset links, deletion confirmations
    hasher = PasswordHasher(settings.pbkdf2_iterations, settings.hash_threads, settings.hash_nice)
    throttle = LoginThrottle(make_counters(settings, clock), limits(settings))
    accounts = Accounts(store, hasher, clock)
    history = LoginHistory(store, clock, keys, seal=settings.seal_login_history)
    sessions = Sessions(settings, store, hasher, throttle, clock, history)
    reauthentication = Reauthentication(hasher, throttle)
    consents = Consents(
        store,
        mailer,
        clock,
        unsubscribe_key(settings),
        public_url=settings.mesh.public_url,
        frontend_url=settings.mesh.frontend_url,
        sender=settings.mail_from,
    )
    return Parts(
        settings=settings,
        accounts=accounts,
        sessions=sessions,
        password_change=PasswordChange(accounts, sessions, reauthentication, store, hasher, clock),
        password_reset=PasswordReset(settings, store, hasher, throttle, mailer, clock, background),
        deletion=Deletion(settings, accounts, reauthentication, store, clock, mailer, background),
        billing=Billing(store, settings.plans, clock),
        consents=consents,
        store=store,
        hasher=hasher,
        throttle=throttle,
        mailer=mailer,
        background=background,
        retention=participant(settings, store, throttle, clock, keys),
        login_history=history,
    )


def execution_keys(
    settings: IdentitySettings, clock: Clock
) -> tuple[ExecutionKeys, list[Callable[[], Awaitable[None]]]]:
    """The vault's keys of the login history (a channel naming identity, which the vault lets
    ask for its own categories' keys only), their prefetch of tomorrow's keys running, and what
    closes both. The channel dials lazily: a vault still starting (or down) costs a login its two
    sealed values at most (login_history.py), never the login."""
    channel = open_channel(settings.mesh, "vault", caller="identity")
    keys = ExecutionKeys(
        vault_pb2_grpc.VaultServiceStub(channel), clock, settings.execution_key_cache_seconds
    )
    prefetch = asyncio.create_task(keys.run_prefetch(), name="identity execution key prefetch")

    async def stop_prefetch() -> None:
        prefetch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prefetch

    async def close_channel() -> None:
        await channel.close()

    return keys, [stop_prefetch, close_channel]


RunningIdentity = RunningService[Parts]


async def start(
    settings: IdentitySettings, *, clock: Clock | None = None, port: int | None = None
) -> RunningIdentity:
    clock = clock or SystemClock(settings.mesh.clock_offset_seconds)
    keys, closers = execution_keys(settings, clock)
    parts = build(settings, clock, keys)
    parts.closers += closers
    api = IdentityApi(
        accounts=parts.accounts,
        sessions=parts.sessions,
        password_change=parts.password_change,
        password_reset=parts.password_reset,
        deletion=parts.deletion,
        billing=parts.billing,
        consents=parts.consents,
    )

    def register(server) -> None:
        identity_pb2_grpc.add_IdentityServiceServicer_to_server(api, server)
        retention_pb2_grpc.add_RetentionParticipantServicer_to_server(parts.retention, server)

    try:
        running = await start_server(
            name="identity",
            mesh=settings.mesh,
            port=settings.mesh.identity_port if port is None else port,
            register=register,
            service_names=[SERVICE, retention.SERVICE],
            allowed={**ALLOWED_CALLERS, **retention.ALLOWED_CALLERS},
        )
    except BaseException:
        await parts.close()
        raise
    return RunningService(parts, running)


def migrate_database(settings: IdentitySettings) -> None:
    migrate(database_url(settings.database_url, settings.mesh, "identity"), MIGRATIONS)


def main(argv: list[str]) -> int:
    return service_main(
        argv,
        name="identity",
        settings_class=IdentitySettings,
        start=start,
        migrate_database=migrate_database,
        describe=lambda service: {
            "mail": service.parts.mailer.transport,
            "counters": "redis" if service.parts.settings.mesh.redis() else "memory",
            "pbkdf2_iterations": service.parts.settings.pbkdf2_iterations,
            "login_history": "sealed" if service.parts.settings.seal_login_history else "plain",
        },
    )
