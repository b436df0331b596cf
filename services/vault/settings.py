"""Vault's settings (`VAULT_*`), read once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kit.config import MeshSettings


class VaultSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAULT_", extra="ignore", frozen=True)

    mesh: MeshSettings = Field(default_factory=MeshSettings)
    database_url: SecretStr | None = None
    # Every KEK version and which is current: inline JSON
    # {"current": "v2", "keys": {"v1": "<base64 of 32 bytes>", "v2": "…"}} or a path to a file of
    # it. Unset: generated under var/vault/ on first start (one machine only; production supplies
    # its own, from a secrets manager).
    master_keys: SecretStr | None = None
    # OAuth providers: inline JSON or a path ({"<name>": {"authorize_url", "token_url",
    # "client_id", "client_secret", "scopes", "rotating_refresh_tokens"}}). A secret: inline JSON
    # may hold client secrets, so `leadmesh config` masks it.
    oauth_providers: SecretStr | None = None
    # Production mode: client secrets only from the vault itself, never from the providers file.
    production: bool = False
    # Resolving refreshes an oauth2 access token that expires within this many seconds.
    refresh_margin_seconds: Annotated[int, Field(ge=0)] = 300
    oauth_state_seconds: Annotated[int, Field(ge=60)] = 600
    # How long a refresh may hold its lease; others wait at most this long for its result.
    refresh_lease_seconds: Annotated[int, Field(ge=1)] = 30
    http_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    # Resolves are committed to the audit log within this many seconds, in one transaction per
    # flush (a crash of the vault can lose the last flush's worth); 0: each resolve waits for its
    # own commit. Every other event always waits for its commit.
    audit_flush_seconds: Annotated[float, Field(ge=0, le=5)] = 0.05
    # Retention category of the audit log (DESIGN: 90 days).
    audit_log_days: Annotated[int, Field(ge=1)] = 90

    @property
    def var_dir(self) -> Path:
        return self.mesh.var_dir / "vault"
