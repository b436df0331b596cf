"""Building identity from its settings for a test."""

from __future__ import annotations

from pathlib import Path

from services.identity.settings import IdentitySettings
from services.kit.config import MeshSettings

PASSWORD = "correct horse battery staple"


def identity_settings(var: Path, url: str, **overrides) -> IdentitySettings:
    """Identity's settings for a test. The login history is sealed only where a test asks
    (`seal_login_history=True`, with a vault: test_identity_sealing.py): the others build
    identity without a vault."""
    mesh = MeshSettings(var_dir=var, redis_url=None, _env_file=None)
    values = dict(
        mesh=mesh, database_url=url, hash_threads=2, smtp_url=None, seal_login_history=False
    )
    values.update(overrides)
    return IdentitySettings(**values)
