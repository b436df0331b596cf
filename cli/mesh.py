"""The processes of the mesh, in start order, and what the launcher needs to know of each."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from pydantic_settings import BaseSettings

from services.kit.config import MeshSettings, database_url, load_settings


@dataclass(frozen=True)
class Process:
    name: str
    # `python -m <module>` serves; `python -m <module> migrate` is not used: the launcher migrates.
    module: str
    settings_class: str
    migrations: str | None = None
    grpc: bool = True

    def settings(self) -> BaseSettings:
        """This process's settings from the environment; InvalidSettings names a wrong variable."""
        module, _, name = self.settings_class.partition(":")
        return load_settings(getattr(importlib.import_module(module), name))

    def migrations_dir(self) -> Path | None:
        if self.migrations is None:
            return None
        module, _, name = self.migrations.partition(":")
        return getattr(importlib.import_module(module), name)

    def database_url(self, settings: BaseSettings) -> str:
        return database_url(getattr(settings, "database_url", None), settings.mesh, self.name)


PROCESSES = (
    Process(
        "identity",
        "services.identity",
        "services.identity.settings:IdentitySettings",
        migrations="services.identity:MIGRATIONS",
    ),
    Process(
        "vault",
        "services.vault",
        "services.vault.settings:VaultSettings",
        migrations="services.vault:MIGRATIONS",
    ),
    Process(
        "runner",
        "services.runner",
        "services.runner.settings:RunnerSettings",
        migrations="services.runner:MIGRATIONS",
    ),
    Process("gateway", "gateway", "gateway.settings:GatewaySettings", grpc=False),
)


def check_settings(*others: type[BaseSettings]) -> None:
    """Reads every process's settings (and the launcher's own), so a wrong variable stops
    `leadmesh up` before anything starts (InvalidSettings), not one child after its predecessors
    are already serving."""
    for settings_class in (MeshSettings, *others):
        load_settings(settings_class)
    for process in PROCESSES:
        process.settings()


def by_name(name: str) -> Process:
    for process in PROCESSES:
        if process.name == name:
            return process
    raise KeyError(name)
