"""Building the vault from its settings for a test."""

from __future__ import annotations

from pathlib import Path

from services.kit.config import MeshSettings
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
