"""Vault's settings (`VAULT_*`), read once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kit.config import MeshSettings
from services.vault.keys import KeyRing
from services.vault.oauth import load_providers


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
    # Retention categories of the vault's short-lived rows (services/vault/retention.py): OAuth
    # states and refresh leases, kept this many days after they expire (DESIGN: 1 day).
    expired_oauth_state_days: Annotated[int, Field(ge=0)] = 1
    expired_lease_days: Annotated[int, Field(ge=0)] = 1
    # How often identity's deletion requests are read, suspending any user whose deletion the
    # vault was not told of directly (and picking up what other vault replicas recorded).
    suspension_reconcile_seconds: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("master_keys")
    @classmethod
    def _master_keys_usable(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked here too (the vault loads them when it starts) so that `leadmesh up` refuses
        # unusable keys in one line before it starts anything.
        if value is not None and value.get_secret_value():
            KeyRing.check_setting(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _providers_readable(self) -> VaultSettings:
        # The vault reads them again when it starts; reading them here too lets `leadmesh up`
        # refuse a wrong file before it starts anything.
        try:
            load_providers(
                self.oauth_providers.get_secret_value() if self.oauth_providers else None,
                production=self.production,
            )
        except SystemExit as refused:
            raise ValueError(str(refused)) from None
        return self

    @property
    def var_dir(self) -> Path:
        return self.mesh.var_dir / "vault"
