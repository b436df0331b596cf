"""OAuth 2 against a real authorization server (authlib, on loopback): start → consent →
callback → stored → resolved → expired → refreshed, once, however many ask at the same time."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from leadmesh.vault.v1 import vault_pb2 as pb
from leadmesh.vault.v1 import vault_pb2_grpc
from pydantic import SecretStr

from services.kit.callers import user_metadata
from services.kit.config import MeshSettings
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.kit.grpcclient import open_channel
from services.vault.server import Parts, build, migrate_database
from tests.conftest import free_port
from tests.integration.vault_support import vault_settings
from tests.support.oauth_server import OAuthServer

CALLBACK = "https://gateway.test/v1/oauth/crm/callback"


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    # Access tokens live 2 minutes: inside the vault's 5-minute refresh margin.
    with OAuthServer(access_token_lifetime=120) as server:
        yield server


def providers(server: OAuthServer) -> str:
    return json.dumps(
        {
            "crm": {
                "authorize_url": server.authorize_url,
                "token_url": server.token_url,
                "client_id": server.client_id,
                "client_secret": server.client_secret,
                "scopes": ["contacts.read"],
                "rotating_refresh_tokens": True,
            }
        }
    )


@pytest.fixture
async def vaults(tmp_path: Path, database_url: str, oauth: OAuthServer):
    """Two vault processes' worth of parts on one database: refreshes must agree across them."""
    settings = vault_settings(tmp_path, database_url, oauth_providers=providers(oauth))
    migrate_database(settings)
    # Real time: the provider's token lifetimes are real.
    built = [build(settings, _WallClock()), build(settings, _WallClock())]
    yield built
    for parts in built:
        await parts.close()


class _WallClock:
    def now(self):
        from datetime import UTC, datetime

        return datetime.now(UTC)


async def connect(
    parts: Parts, oauth: OAuthServer, session: str = "session-1", credential_id: str = ""
) -> dict:
    url = await parts.oauth_connect.start(
        "user-a", session, "crm", "My CRM", CALLBACK, credential_id=credential_id
    )
    async with httpx.AsyncClient() as browser:
        consent = await browser.get(url, follow_redirects=False)
    back = parse_qs(urlsplit(consent.headers["location"]).query)
    return await parts.oauth_connect.complete(
        "gateway", "user-a", session, "crm", back["state"][0], back["code"][0], CALLBACK
    )


async def test_the_whole_flow_with_pkce(vaults: list[Parts], oauth: OAuthServer):
    parts = vaults[0]
    credential = await connect(parts, oauth)
    assert credential["kind"] == "oauth2" and credential["provider"] == "crm"
    assert credential["scopes"] == ["contacts.read"] and credential["name"] == "My CRM"
    exchange = oauth.token_requests[0]
    assert exchange["grant_type"] == "authorization_code" and exchange["has_code_verifier"]
    resolved = await parts.resolver.resolve("runner", "user-a", credential["id"], "conn-1")
    async with httpx.AsyncClient() as api:
        me = await api.get(
            oauth.api_url, headers={"Authorization": f"Bearer {resolved.secret['access_token']}"}
        )
    assert me.status_code == 200
    # Expiring within 5 minutes: the resolve refreshed it first.
    assert oauth.refresh_count == 1 and resolved.secret["refresh_token"]


async def test_state_is_single_use_and_bound_to_the_session(vaults: list[Parts], oauth):
    parts = vaults[0]
    url = await parts.oauth_connect.start("user-a", "session-1", "crm", "x", CALLBACK)
    async with httpx.AsyncClient() as browser:
        back = parse_qs(urlsplit((await browser.get(url)).headers["location"]).query)
    state, code = back["state"][0], back["code"][0]
    for user, session in (("user-a", "session-2"), ("user-b", "session-1")):
        with pytest.raises(InvalidArgument) as refused:
            await parts.oauth_connect.complete(
                "gateway", user, session, "crm", state, code, CALLBACK
            )
        assert refused.value.reason == "OAUTH_STATE_INVALID"
    # The state was spent by the first wrong attempt: even the right session cannot use it now.
    with pytest.raises(InvalidArgument):
        await parts.oauth_connect.complete(
            "gateway", "user-a", "session-1", "crm", state, code, CALLBACK
        )


async def test_a_denied_consent_is_reported(vaults: list[Parts], oauth: OAuthServer):
    parts = vaults[0]
    oauth.deny_next = True
    url = await parts.oauth_connect.start("user-a", "session-1", "crm", "x", CALLBACK)
    async with httpx.AsyncClient() as browser:
        back = parse_qs(urlsplit((await browser.get(url)).headers["location"]).query)
    assert back["error"] == ["access_denied"]
    with pytest.raises(FailedPrecondition) as denied:
        await parts.oauth_connect.complete(
            "gateway", "user-a", "session-1", "crm", back["state"][0], "", CALLBACK, "access_denied"
        )
    assert denied.value.reason == "OAUTH_DENIED"


async def test_concurrent_resolves_across_processes_refresh_once(vaults: list[Parts], oauth):
    credential = await connect(vaults[0], oauth)
    oauth.refresh_delay = 0.3  # a slow provider: the others must wait, not refresh again
    resolved = await asyncio.gather(
        *(
            vaults[n % 2].resolver.resolve("runner", "user-a", credential["id"], f"conn-{n}")
            for n in range(10)
        )
    )
    assert oauth.refresh_count == 1  # a rotating refresh token is never spent twice
    assert len({r.secret["access_token"] for r in resolved}) == 1
    refreshes = [r for r in oauth.token_requests if r["grant_type"] == "refresh_token"]
    assert all(r["error"] is None for r in refreshes)


async def test_a_rejected_token_is_refreshed_once_and_then_served(vaults: list[Parts], oauth):
    parts = vaults[0]
    credential = await connect(parts, oauth)
    first = await parts.resolver.resolve("runner", "user-a", credential["id"], "conn-1")
    count = oauth.refresh_count
    rejected = hashlib.sha256(first.secret["access_token"].encode()).hexdigest()
    both = await asyncio.gather(
        parts.refresher.refresh("runner", "user-a", credential["id"], "conn-1", rejected),
        vaults[1].refresher.refresh("runner", "user-a", credential["id"], "conn-2", rejected),
    )
    assert oauth.refresh_count == count + 1
    assert both[0].secret["access_token"] == both[1].secret["access_token"]
    assert both[0].secret["access_token"] != first.secret["access_token"]
    # Each refresh is audited (who, which credential and connection, the outcome), without a token.
    for built in vaults:
        await built.audit.flush()
    async with parts.store.begin() as tx:
        events = [e for e in await tx.audit_events("user-a") if e["action"] == "refresh"]
    assert sorted((e["connection_id"], e["outcome"], e["caller"]) for e in events) == [
        ("conn-1", "ok", "runner"),
        ("conn-2", "ok", "runner"),
    ]
    assert {e["credential_id"] for e in events} == {credential["id"]}
    tokens = {first.secret["access_token"], both[0].secret["access_token"], rejected}
    tokens |= {first.secret["refresh_token"], both[0].secret["refresh_token"]}
    assert not [t for t in tokens for e in events if t in str(e)]


async def test_invalid_grant_marks_the_credential_for_reconnection(vaults: list[Parts], oauth):
    parts = vaults[0]
    credential = await connect(parts, oauth)
    oauth.revoke_refresh_tokens()
    for _ in range(2):
        with pytest.raises(FailedPrecondition) as refused:
            await parts.resolver.resolve("runner", "user-a", credential["id"], "conn-1")
        assert refused.value.reason == "CREDENTIAL_NEEDS_RECONNECT"
    assert (await parts.credentials.get("user-a", credential["id"]))["status"] == "needs_reconnect"
    await parts.audit.flush()
    async with parts.store.begin() as tx:
        outcomes = [e["outcome"] for e in await tx.audit_events("user-a")]
    assert "CREDENTIAL_NEEDS_RECONNECT" in outcomes
    # The runner reporting a 401 now gets the same answer, and the refused refresh is audited.
    with pytest.raises(FailedPrecondition) as refused:
        await parts.refresher.refresh("runner", "user-a", credential["id"], "conn-2", "0" * 64)
    assert refused.value.reason == "CREDENTIAL_NEEDS_RECONNECT"
    async with parts.store.begin() as tx:
        refreshes = [e for e in await tx.audit_events("user-a") if e["action"] == "refresh"]
    assert [(e["connection_id"], e["outcome"]) for e in refreshes] == [
        ("conn-2", "CREDENTIAL_NEEDS_RECONNECT")
    ]
    reconnected = await connect(parts, oauth, session="session-2")
    assert reconnected["status"] == "active"


async def test_a_reconnect_gives_the_same_credential_new_tokens(vaults: list[Parts], oauth):
    parts = vaults[0]
    credential = await connect(parts, oauth)
    await parts.credentials.update("gateway", "user-a", credential["id"], ["name"], name="Sales")
    oauth.revoke_refresh_tokens()
    with pytest.raises(FailedPrecondition):
        await parts.resolver.resolve("runner", "user-a", credential["id"], "conn-1")

    reconnected = await connect(parts, oauth, session="session-2", credential_id=credential["id"])
    # Same id (the connections that use it keep it), same name, active, the only one there is.
    assert (reconnected["id"], reconnected["name"]) == (credential["id"], "Sales")
    assert reconnected["status"] == "active"
    listed, _ = await parts.credentials.list("user-a", 10, "")
    assert [c["id"] for c in listed] == [credential["id"]]
    resolved = await parts.resolver.resolve("runner", "user-a", credential["id"], "conn-1")
    async with httpx.AsyncClient() as api:
        me = await api.get(
            oauth.api_url, headers={"Authorization": f"Bearer {resolved.secret['access_token']}"}
        )
    assert me.status_code == 200


async def test_only_an_oauth2_credential_of_that_provider_is_reconnected(vaults: list[Parts]):
    parts = vaults[0]
    login = await parts.credentials.create(
        "gateway", "user-a", "Shop", "login", "crm", {"username": "ada", "password": "pw"}
    )
    other = await parts.credentials.create(
        "gateway", "user-a", "Mail", "oauth2", "mailer", {"access_token": "t"}
    )
    start = parts.oauth_connect.start
    with pytest.raises(FailedPrecondition) as refused:
        await start("user-a", "s", "crm", "", CALLBACK, credential_id=login["id"])
    assert refused.value.reason == "NOT_OAUTH2"
    with pytest.raises(InvalidArgument) as refused:
        await start("user-a", "s", "crm", "", CALLBACK, credential_id=other["id"])
    assert refused.value.reason == "PROVIDER_MISMATCH"
    for user, credential_id in (("user-b", other["id"]), ("user-a", str(uuid.uuid4()))):
        with pytest.raises(NotFound):
            await start(user, "s", "mailer", "", CALLBACK, credential_id=credential_id)


async def test_a_reconnect_of_a_credential_deleted_meanwhile_makes_a_new_one(
    vaults: list[Parts], oauth
):
    parts = vaults[0]
    credential = await connect(parts, oauth)
    url = await parts.oauth_connect.start(
        "user-a", "session-1", "crm", "", CALLBACK, credential_id=credential["id"]
    )
    await parts.credentials.delete("gateway", "user-a", credential["id"])
    async with httpx.AsyncClient() as browser:
        back = parse_qs(urlsplit((await browser.get(url)).headers["location"]).query)
    again = await parts.oauth_connect.complete(
        "gateway", "user-a", "session-1", "crm", back["state"][0], back["code"][0], CALLBACK
    )
    assert again["id"] != credential["id"] and again["name"] == "My CRM"


def test_providers_must_use_https_except_on_loopback():
    from services.vault.oauth import load_providers

    spec = {"authorize_url": "http://auth.example/a", "token_url": "https://t", "client_id": "c"}
    with pytest.raises(SystemExit):
        load_providers(json.dumps({"x": spec}), production=False)
    spec["authorize_url"] = "https://auth.example/a"
    spec["client_secret"] = "in-a-file"
    with pytest.raises(SystemExit, match="production"):
        load_providers(json.dumps({"x": spec}), production=True)


@pytest.mark.redis
async def test_with_redis_the_lease_is_a_redis_lock(
    tmp_path: Path, oauth: OAuthServer, redis_server: str
):
    from services.vault.leases import RedisLeases

    settings = vault_settings(
        tmp_path, f"sqlite:///{tmp_path / 'v.db'}", oauth_providers=providers(oauth)
    )
    settings = settings.model_copy(
        update={"mesh": settings.mesh.model_copy(update={"redis_url": SecretStr(redis_server)})}
    )
    migrate_database(settings)
    built = [build(settings), build(settings)]
    try:
        assert all(isinstance(p.leases, RedisLeases) for p in built)
        credential = await connect(built[0], oauth)
        oauth.refresh_delay = 0.3
        resolved = await asyncio.gather(
            *(
                built[n % 2].resolver.resolve("runner", "user-a", credential["id"], "c")
                for n in range(8)
            )
        )
        assert oauth.refresh_count == 1
        assert len({r.secret["access_token"] for r in resolved}) == 1
    finally:
        for parts in built:
            await parts.close()


async def test_production_keeps_the_client_secret_sealed_in_the_vault(
    tmp_path: Path, database_url: str, oauth: OAuthServer
):
    spec = json.loads(providers(oauth))
    del spec["crm"]["client_secret"]
    settings = vault_settings(
        tmp_path, database_url, oauth_providers=json.dumps(spec), production=True
    )
    migrate_database(settings)
    parts = build(settings)
    try:
        await parts.admin.set_client_secret("crm", oauth.client_secret)
        credential = await connect(parts, oauth)  # the exchange authenticates with it
        assert credential["kind"] == "oauth2"
        with pytest.raises(InvalidArgument):
            await parts.admin.set_client_secret("nobody", "x")
    finally:
        await parts.close()
    if database_url.startswith("sqlite"):
        files = sorted(tmp_path.glob("service.db*"))  # noqa: ASYNC240 - a test reading files
        stored = b"".join(p.read_bytes() for p in files)
        assert oauth.client_secret.encode() not in stored


async def test_two_vault_processes_spend_a_refresh_token_once(
    tmp_path: Path, database_url: str, oauth: OAuthServer, mesh
):
    """Two real vault processes on one database, asked over mTLS at the same moment: one refresh."""
    shutil.copytree(mesh.pki_dir, tmp_path / "pki")
    keys = json.dumps({"current": "v1", "keys": {"v1": base64.b64encode(os.urandom(32)).decode()}})
    settings = vault_settings(tmp_path, database_url, oauth_providers=providers(oauth))
    migrate_database(settings)
    ports = [free_port(), free_port()]
    env = dict(
        os.environ,
        LEADMESH_VAR_DIR=str(tmp_path),
        LEADMESH_LOG_LEVEL="WARNING",
        LEADMESH_INSECURE_INTERNAL="0",
        VAULT_DATABASE_URL=database_url,
        VAULT_MASTER_KEYS=keys,
        VAULT_OAUTH_PROVIDERS=providers(oauth),
        VAULT_METRICS_PORT="0",  # two vaults (and other tests) at once: a free port each
    )
    env.pop("REDIS_URL", None)  # the lease is the database's row
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.vault", env={**env, "VAULT_PORT": str(port)}
        )
        for port in ports
    ]
    channels = []
    try:
        runners, gateway = [], None
        for port in ports:
            there = MeshSettings(var_dir=tmp_path, vault_addr=f"127.0.0.1:{port}", _env_file=None)
            runner_channel = open_channel(there, "vault", caller="runner")
            channels += [runner_channel, open_channel(there, "vault", caller="gateway")]
            health = health_pb2_grpc.HealthStub(runner_channel)
            await health.Check(health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True)
            runners.append(vault_pb2_grpc.VaultServiceStub(runner_channel))
            gateway = vault_pb2_grpc.VaultServiceStub(channels[-1])
        who = user_metadata("user-a")
        started = await gateway.StartOAuth(
            pb.StartOAuthRequest(
                session_id="s1", provider="crm", name="CRM", redirect_uri=CALLBACK
            ),
            metadata=who,
        )
        async with httpx.AsyncClient() as browser:
            consent = await browser.get(started.authorization_url, follow_redirects=False)
        back = parse_qs(urlsplit(consent.headers["location"]).query)
        credential = await gateway.CompleteOAuth(
            pb.CompleteOAuthRequest(
                session_id="s1",
                provider="crm",
                state=back["state"][0],
                code=back["code"][0],
                redirect_uri=CALLBACK,
            ),
            metadata=who,
        )
        oauth.refresh_delay = 0.3  # both processes ask while the one refresh is in flight
        resolved = await asyncio.gather(
            *(
                runners[n % 2].ResolveCredential(
                    pb.ResolveCredentialRequest(
                        user_id="user-a", credential_id=credential.id, connection_id=f"c{n}"
                    ),
                    timeout=30,
                )
                for n in range(8)
            )
        )
        assert oauth.refresh_count == 1
        assert len({r.secret["access_token"] for r in resolved}) == 1
        refreshes = [r for r in oauth.token_requests if r["grant_type"] == "refresh_token"]
        assert [r["error"] for r in refreshes] == [None]
    finally:
        for channel in channels:
            await channel.close()
        for process in processes:
            process.terminate()
            await process.wait()
