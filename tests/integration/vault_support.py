"""Building the vault from its settings for a test, and serving it (fixtures a test module
imports: `vault_var`, `served_vault`, `dial_vault`)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from leadmesh.vault.v1 import vault_pb2_grpc

from services.kit.config import MeshSettings
from services.kit.grpcclient import open_channel
from services.vault.server import RunningVault, migrate_database, start
from services.vault.settings import VaultSettings

API_KEY = {"key": "sk_live_canary_api_key_0123456789", "header": "X-Api-Key"}
LOGIN = {"username": "ann@example.com", "password": "canary-login-password-42"}
OAUTH2 = {
    "access_token": "canary-access-token-abcdef",
    "refresh_token": "canary-refresh-token-ghijkl",
    "expires_at": 4102444800,
    "scopes": ["contacts.read"],
}
SECRETS = {"api_key": API_KEY, "login": LOGIN, "oauth2": OAUTH2}


def vault_settings(var: Path, url: str, **overrides) -> VaultSettings:
    mesh = MeshSettings(var_dir=var, redis_url=None, _env_file=None)
    values = dict(mesh=mesh, database_url=url, master_keys=None, oauth_providers=None)
    values.update(overrides)
    return VaultSettings(**values)


def secret_values(secret: dict) -> list[str]:
    return [v for v in secret.values() if isinstance(v, str) and len(v) > 12]


@pytest.fixture
def vault_var(tmp_path: Path, mesh: MeshSettings) -> Path:
    """A var/ of the vault's own (it writes its key file there) holding the mesh certificates."""
    shutil.copytree(mesh.pki_dir, tmp_path / "pki")
    return tmp_path


@pytest.fixture
async def served_vault(vault_var: Path, database_url: str) -> AsyncIterator[RunningVault]:
    """The vault served on a free port over mTLS, on SQLite or PostgreSQL (`database_url`)."""
    settings = vault_settings(vault_var, database_url)
    migrate_database(settings)
    running = await start(settings, port=0)
    yield running
    await running.stop(grace=1)


@pytest.fixture
async def dial_vault(served_vault: RunningVault, vault_var: Path):
    """`dial_vault(caller, stub=VaultServiceStub)`: a stub on a channel whose mTLS certificate
    names `caller`."""
    address = f"127.0.0.1:{served_vault.port}"
    there = MeshSettings(var_dir=vault_var, vault_addr=address, _env_file=None)
    opened: list[grpc.aio.Channel] = []

    def open_as(caller: str, stub=vault_pb2_grpc.VaultServiceStub):
        channel = open_channel(there, "vault", caller=caller)
        opened.append(channel)
        return stub(channel)

    yield open_as
    for channel in opened:
        await channel.close()
