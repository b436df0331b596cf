"""Integration fixtures: identity built from its settings on a real database, time moved by
hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.identity.server import Parts, build, migrate_database
from services.kit.clock import SettableClock
from tests.integration.identity_support import identity_settings


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
async def parts(tmp_path: Path, database_url: str, clock: SettableClock) -> AsyncIterator[Parts]:
    settings = identity_settings(tmp_path, database_url)
    migrate_database(settings)
    built = build(settings, clock)
    yield built
    await built.close()


@pytest.fixture
async def vault_parts(tmp_path: Path, database_url: str, clock: SettableClock):
    from services.vault.server import build as build_vault
    from services.vault.server import migrate_database as migrate_vault
    from tests.integration.vault_support import vault_settings

    settings = vault_settings(tmp_path, database_url)
    migrate_vault(settings)
    built = build_vault(settings, clock)
    yield built
    await built.close()
