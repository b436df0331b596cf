"""Identity's login history sealed at rest, with a real vault: both served over real sockets with
mTLS, identity on a real SQLite file and a real PostgreSQL, time moved by hand. A login's address
and user agent are in no byte of identity's database and read back through the API; a destroyed
day key reads as purged; a value moved to another row fails closed (purged, never an error); with
the vault down logins go on and store neither value in plaintext; the known-address rule of the
lockout still recognises an owner's sealed address; a vault that never answers costs a login half
a second at most; the export opens the history; rows written before sealing are sealed in place."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from leadmesh.identity.v1 import identity_pb2 as ipb
from leadmesh.identity.v1 import identity_pb2_grpc
from leadmesh.retention.v1 import retention_pb2 as rpb
from leadmesh.retention.v1 import retention_pb2_grpc
from leadmesh.vault.v1 import vault_pb2 as vpb
from leadmesh.vault.v1 import vault_pb2_grpc
from sqlalchemy import select, text, update

from services.identity.login_history import CATEGORY, KEY_WAIT_SECONDS
from services.identity.server import RunningIdentity
from services.identity.server import migrate_database as migrate_identity
from services.identity.server import start as start_identity
from services.identity.tables import login_attempts
from services.kit.callers import user_metadata
from services.kit.clock import SettableClock
from services.kit.config import MeshSettings
from services.kit.errors import from_rpc_error
from services.kit.grpcclient import open_channel
from services.kit.sealing import is_sealed
from services.vault.server import RunningVault
from services.vault.server import migrate_database as migrate_vault
from services.vault.server import start as start_vault
from tests.integration.identity_support import PASSWORD, identity_settings
from tests.integration.vault_support import vault_settings

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
# Marked values: found in a database file's bytes only if stored in plaintext.
UA = "Mozilla/5.0 (sealing-canary-ua-7f3c9e) Gecko/20100101"
# Failed attempts open no session (whose address and user agent are not sealed): theirs are
# found nowhere in identity's database if the login history holds no plaintext.
FAILED_UA = "Mozilla/5.0 (sealing-canary-failed-ua-2d81b4) Gecko/20100101"


# Three-digit last octets, each once in turn: a marker is never another address (nor a prefix of
# one, as 203.0.113.3 is of the session's plaintext 203.0.113.38) that a test stored meanwhile.
_OCTETS = itertools.cycle(random.sample(range(100, 255), 155))


def marked_ip() -> str:
    return f"203.0.113.{next(_OCTETS)}"


@dataclass
class World:
    var: Path
    database_url: str
    clock: SettableClock
    vault: RunningVault
    identity: RunningIdentity
    channels: list[grpc.aio.Channel]
    vault_stopped: bool = False

    def dial(self, service: str, caller: str, port: int):
        there = MeshSettings(
            var_dir=self.var, **{f"{service}_addr": f"127.0.0.1:{port}"}, _env_file=None
        )
        channel = open_channel(there, service, caller=caller)
        self.channels.append(channel)
        return channel

    @property
    def api(self) -> identity_pb2_grpc.IdentityServiceStub:
        channel = self.dial("identity", "gateway", self.identity.port)
        return identity_pb2_grpc.IdentityServiceStub(channel)

    def vault_as(self, caller: str) -> vault_pb2_grpc.VaultServiceStub:
        return vault_pb2_grpc.VaultServiceStub(self.dial("vault", caller, self.vault.port))

    async def account(self) -> tuple[str, str]:
        email = f"ann-{uuid.uuid4().hex[:8]}@example.com"
        account = await self.identity.parts.accounts.create_account(email, PASSWORD)
        return account.id, email

    async def login(self, email: str, ip: str, password: str = PASSWORD) -> grpc.StatusCode:
        agent = UA if password == PASSWORD else FAILED_UA
        request = ipb.LoginRequest(email=email, password=password, ip_address=ip, user_agent=agent)
        try:
            await self.api.Login(request)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    async def history(self, user: str) -> list[ipb.LoginAttempt]:
        request = ipb.ListLoginAttemptsRequest(page_size=100)
        reply = await self.api.ListLoginAttempts(request, metadata=user_metadata(user))
        return list(reply.attempts)

    async def export(self, user: str) -> list[dict]:
        """The user's login history as their export (through the kit's participant) has it."""
        channel = self.dial("identity", "gateway", self.identity.port)
        stream = retention_pb2_grpc.RetentionParticipantStub(channel).ExportSubject(
            rpb.ExportSubjectRequest(), metadata=user_metadata(user)
        )
        records = [(r.section, json.loads(r.json)) async for b in stream for r in b.records]
        return [record for section, record in records if section == "login_history"]

    async def stop_vault(self) -> None:
        self.vault_stopped = True
        await self.vault.stop(grace=0)

    async def stored(self) -> list[dict]:
        async with self.identity.parts.store.database.read() as connection:
            rows = await connection.execute(select(login_attempts).order_by(login_attempts.c.id))
            return [dict(row._mapping) for row in rows]

    async def database_bytes(self) -> bytes:
        """Every byte identity's database holds: its SQLite files, or PostgreSQL's rows as text."""
        if self.database_url.startswith("sqlite"):
            database = Path(self.database_url.removeprefix("sqlite:///"))
            files = sorted(database.parent.glob(f"{database.name}*"))
            assert files
            return b"".join(path.read_bytes() for path in files)
        async with self.identity.parts.store.database.read() as connection:
            tables = (
                await connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            ).scalars()
            found = []
            for table in list(tables):
                rows = await connection.execute(text(f'SELECT t::text FROM "{table}" t'))
                found += rows.scalars().all()
        return "\n".join(found).encode()


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(NOW)


@pytest.fixture
async def world(
    tmp_path: Path, mesh: MeshSettings, database_url: str, clock: SettableClock
) -> AsyncIterator[World]:
    """The vault (on a SQLite file of its own) and identity sealing its login history with the
    vault's keys, on one clock."""
    var = tmp_path / "var"
    shutil.copytree(mesh.pki_dir, var / "pki")
    vault_config = vault_settings(
        var, f"sqlite:///{tmp_path / 'vault.db'}", suspension_reconcile_seconds=3600.0
    )
    migrate_vault(vault_config)
    vault = await start_vault(vault_config, clock=clock, port=0)
    identity_mesh = MeshSettings(
        var_dir=var, redis_url=None, vault_addr=f"127.0.0.1:{vault.port}", _env_file=None
    )
    config = identity_settings(
        var, database_url, mesh=identity_mesh, seal_login_history=True, lockout_account_limit=3
    )
    migrate_identity(config)
    identity = await start_identity(config, clock=clock, port=0)
    built = World(var, database_url, clock, vault, identity, [])
    try:
        yield built
    finally:
        for channel in built.channels:
            await channel.close()
        await identity.stop(grace=1)
        if not built.vault_stopped:
            await vault.stop(grace=1)


def opened(attempts: list[ipb.LoginAttempt]) -> list[tuple[str, str]]:
    return [(a.ip_address, a.user_agent) for a in attempts]


async def test_an_attempt_is_sealed_at_rest_and_reads_back_through_the_api(world: World):
    user, email = await world.account()
    failed_ip, signed_in_ip = marked_ip(), marked_ip()
    assert (
        await world.login(email, failed_ip, "not the password") == grpc.StatusCode.UNAUTHENTICATED
    )
    assert await world.login(email, signed_in_ip) == grpc.StatusCode.OK
    assert opened(await world.history(user)) == [(signed_in_ip, UA), (failed_ip, FAILED_UA)]
    for row in await world.stored():
        assert is_sealed(row["ip_address"]) and is_sealed(row["user_agent"])
    everything = await world.database_bytes()
    assert failed_ip.encode() not in everything and FAILED_UA.encode() not in everything
    # A session keeps its own copy in plaintext (not sealed: its age runs from its rolling end,
    # which fits no day key); the login history's is sealed.
    assert signed_in_ip.encode() in everything


async def test_a_destroyed_day_key_reads_as_purged_without_an_error(world: World, clock):
    user, email = await world.account()
    old_ip = marked_ip()
    assert await world.login(email, old_ip) == grpc.StatusCode.OK
    day = clock.now().date()
    clock.advance(days=91)  # past login_history's 90 days, as retention would be
    reply = await world.vault_as("retention").DestroyExpiredEpochKeys(
        vpb.DestroyExpiredEpochKeysRequest(
            participant="identity", category=CATEGORY, before=(day + timedelta(days=1)).isoformat()
        )
    )
    assert reply.keys_destroyed >= 1
    new_ip = marked_ip()
    assert await world.login(email, new_ip) == grpc.StatusCode.OK
    assert opened(await world.history(user)) == [(new_ip, UA), ("", "")]
    assert [a.details_purged for a in await world.history(user)] == [False, True]


async def test_a_value_moved_to_another_row_fails_closed(world: World, clock):
    user, email = await world.account()
    other, other_email = await world.account()
    for account_email in (email, email, other_email):
        clock.advance(1)
        assert await world.login(account_email, marked_ip()) == grpc.StatusCode.OK
    first, second, theirs = await world.stored()
    async with world.identity.parts.store.database.write() as connection:
        for target, source in ((first, second), (second, theirs)):
            await connection.execute(
                update(login_attempts)
                .where(login_attempts.c.id == target["id"])
                .values(ip_address=source["ip_address"])
            )
    assert opened(await world.history(user)) == [("", ""), ("", "")]
    assert [a.details_purged for a in await world.history(user)] == [True, True]
    assert [a.user_agent for a in await world.history(other)] == [UA]


async def test_with_the_vault_down_logins_go_on_and_nothing_is_stored_in_plaintext(world: World):
    cached_user, cached_email = await world.account()
    assert await world.login(cached_email, marked_ip()) == grpc.StatusCode.OK
    new_user, new_email = await world.account()
    await world.stop_vault()
    down_ip = marked_ip()
    started = time.monotonic()
    assert await world.login(new_email, marked_ip()) == grpc.StatusCode.OK
    assert await world.login(new_email, down_ip, "wrong") == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - started < 3.0
    # Its key is in identity's memory: this user's attempts are still sealed.
    cached_ip = marked_ip()
    assert await world.login(cached_email, cached_ip, "wrong") == grpc.StatusCode.UNAUTHENTICATED
    assert await world.login(cached_email, marked_ip()) == grpc.StatusCode.OK
    rows = {row["id"]: row for row in await world.stored()}
    for row in rows.values():
        if row["account_id"] == new_user:
            assert row["ip_address"] is None and row["user_agent"] is None
        else:
            assert is_sealed(row["ip_address"]) and is_sealed(row["user_agent"])
    everything = await world.database_bytes()
    for marker in (down_ip, cached_ip, FAILED_UA):
        assert marker.encode() not in everything
    # Not recorded reads as empty, without the vault; sealed values open from memory.
    assert opened(await world.history(new_user)) == [("", ""), ("", "")]
    assert opened(await world.history(cached_user))[1] == (cached_ip, FAILED_UA)


async def test_sealed_history_cannot_be_opened_without_the_vault_or_its_cached_key(
    world: World, clock
):
    user, email = await world.account()
    assert await world.login(email, marked_ip()) == grpc.StatusCode.OK
    await world.stop_vault()
    clock.advance(seconds=601)  # past the key's time in memory
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await world.history(user)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert from_rpc_error(refused.value).reason == "EXECUTION_KEYS_UNAVAILABLE"


async def test_an_owner_s_sealed_address_is_still_known_to_the_lockout(world: World):
    _, email = await world.account()
    owner_ip = marked_ip()
    assert await world.login(email, owner_ip) == grpc.StatusCode.OK
    for n in range(3):  # the account's consecutive-failure limit in this test
        assert await world.login(email, f"192.0.2.{n + 1}", "guess") == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    assert await world.login(email, "192.0.2.99") == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await world.login(email, owner_ip) == grpc.StatusCode.OK


async def test_the_export_opens_the_history_and_shows_a_destroyed_day_as_purged(
    world: World, clock
):
    user, email = await world.account()
    old_ip = marked_ip()
    assert await world.login(email, old_ip, "wrong") == grpc.StatusCode.UNAUTHENTICATED
    day = clock.now().date()
    clock.advance(days=2)
    new_ip = marked_ip()
    assert await world.login(email, new_ip, "wrong") == grpc.StatusCode.UNAUTHENTICATED
    entries = await world.export(user)
    assert {(e["ip_address"], e["user_agent"]) for e in entries} == {
        (old_ip, FAILED_UA),
        (new_ip, FAILED_UA),
    }
    await world.vault_as("retention").DestroyExpiredEpochKeys(
        vpb.DestroyExpiredEpochKeysRequest(
            participant="identity", category=CATEGORY, before=(day + timedelta(days=1)).isoformat()
        )
    )
    clock.advance(seconds=601)  # the key of the first day leaves identity's memory
    by_ip = {e["ip_address"]: e for e in await world.export(user)}
    assert by_ip[new_ip]["user_agent"] == FAILED_UA
    assert by_ip[None]["ip_address_purged"] is True and by_ip[None]["user_agent"] is None


async def test_attempts_written_before_sealing_are_sealed_in_place_by_seal(world: World):
    user, _ = await world.account()
    old_ip = marked_ip()
    async with world.identity.parts.store.begin() as tx:
        await tx.record_attempt(
            {"account_id": user, "attempt_time": world.clock.now(), "ip_address": old_ip,
             "user_agent": FAILED_UA, "outcome": "bad_password"}
        )  # fmt: skip
    assert opened(await world.history(user)) == [(old_ip, FAILED_UA)]  # both forms read
    stub = retention_pb2_grpc.RetentionParticipantStub(
        world.dial("identity", "retention", world.identity.port)
    )
    reply = await stub.Seal(rpb.SealRequest(category=CATEGORY))
    assert (reply.rows_sealed, reply.rows_plaintext) == (1, 0)
    (row,) = await world.stored()
    assert is_sealed(row["ip_address"]) and is_sealed(row["user_agent"])
    assert opened(await world.history(user)) == [(old_ip, FAILED_UA)]


async def test_a_vault_that_never_answers_costs_a_login_half_a_second_at_most(
    tmp_path: Path, mesh: MeshSettings, database_url: str, clock: SettableClock
):
    # A listener that accepts connections and never says a word: the TLS handshake hangs.
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    var = tmp_path / "var"
    shutil.copytree(mesh.pki_dir, var / "pki")
    there = MeshSettings(
        var_dir=var, redis_url=None, vault_addr=f"127.0.0.1:{port}", _env_file=None
    )
    config = identity_settings(var, database_url, mesh=there, seal_login_history=True)
    migrate_identity(config)
    identity = await start_identity(config, clock=clock, port=0)
    try:
        email = f"ann-{uuid.uuid4().hex[:8]}@example.com"
        account = await identity.parts.accounts.create_account(email, PASSWORD)
        started = time.monotonic()
        await identity.parts.sessions.login(email, PASSWORD, marked_ip(), UA)
        assert time.monotonic() - started < KEY_WAIT_SECONDS + 1.0
        (attempt,) = (await identity.parts.sessions.login_attempts(account.id, 10, ""))[0]
        assert (attempt.ip_address, attempt.user_agent, attempt.outcome) == ("", "", "success")
    finally:
        await identity.stop(grace=0)
        silent.close()
