"""The processes of the mesh, in start order: the one list from which the command line knows each
service (how it is started, its settings, its port, its schema history).

Only this module names the services' packages; the supervisor, the probes, `config`, `migrate`
and the benchmarks read the list. It must never reach into a service beyond its entry points (the
runner's delivery workers are a second one), its settings class and its `MIGRATIONS`: anything
else a service does crosses its gRPC contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from pydantic_settings import BaseSettings

import cli
import gateway
import services.identity
import services.retention
import services.runner
import services.vault
from gateway.settings import GatewaySettings
from services.identity.settings import IdentitySettings
from services.kit.config import DEFAULT_PORTS, MeshSettings, database_url, load_settings
from services.retention.settings import RetentionSettings
from services.runner.settings import RunnerSettings
from services.vault.settings import VaultSettings


@dataclass(frozen=True)
class Process:
    name: str
    # `python -m <entry_point>` serves; `python -m <entry_point> migrate` is not used: the launcher
    # migrates every database before it starts anything.
    entry_point: ModuleType
    settings_class: type[BaseSettings]
    # The variable naming the port it listens on, and the port without it (a runner worker
    # listens only for metrics: the first free port from there).
    port_setting: str
    default_port: int
    # Its Alembic history (the launcher migrates it), or None for a process without a database.
    migrations: Path | None = None
    grpc: bool = True
    # A runner worker serves nothing to probe: it is up once it has stayed alive a moment.
    listens: bool = True
    # What follows `python -m <entry_point>`, and settings of this process's own.
    args: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()

    @property
    def module(self) -> str:
        """What `python -m` is given to serve this process."""
        return self.entry_point.__name__

    @property
    def command(self) -> list[str]:
        return ["-m", self.module, *self.args]

    def settings(self) -> BaseSettings:
        """This process's settings from the environment; InvalidSettings names a wrong variable."""
        return load_settings(self.settings_class)

    def database_url(self, settings: BaseSettings) -> str:
        return database_url(getattr(settings, "database_url", None), settings.mesh, self.name)


def _service(package: ModuleType, name: str, settings_class: type[BaseSettings]) -> Process:
    """A gRPC service: its port is a mesh setting (`<NAME>_PORT`), its history `MIGRATIONS`."""
    return Process(
        name,
        package,
        settings_class,
        port_setting=f"{name.upper()}_PORT",
        default_port=DEFAULT_PORTS[name],
        migrations=package.MIGRATIONS,
    )


PROCESSES = (
    _service(services.identity, "identity", IdentitySettings),
    _service(services.vault, "vault", VaultSettings),
    _service(services.runner, "runner", RunnerSettings),
    _service(services.retention, "retention", RetentionSettings),
    Process(
        "gateway",
        gateway,
        GatewaySettings,
        port_setting="GATEWAY_HTTPS_PORT",
        default_port=GatewaySettings.model_fields["https_port"].default,
        grpc=False,
    ),
)


def runner_workers(argv: list[str]) -> int:
    """`leadmesh runner-worker`: the runner's delivery workers without its API, in this process.
    Imported only when asked for: it loads the whole runner, which no other command needs."""
    from services.runner.worker_process import main

    return main(argv)


def runner_worker_processes(count: int, mesh: MeshSettings) -> tuple[Process, ...]:
    """`leadmesh runner-worker` processes `runner-worker-1` … `-<count>`, for `leadmesh up` to
    start after the mesh: the i-th serves metrics from RUNNER_WORKER_METRICS_PORT + i - 1 (the
    first free port from there; 0: any free port)."""
    base = mesh.runner_worker_metrics_port
    processes = []
    for i in range(1, count + 1):
        port = base + i - 1 if base else 0
        processes.append(
            Process(
                f"runner-worker-{i}",
                cli,
                RunnerSettings,
                port_setting="RUNNER_WORKER_METRICS_PORT",
                default_port=port,
                grpc=False,
                listens=False,
                args=("runner-worker", "--count", "1"),
                environment=(("RUNNER_WORKER_METRICS_PORT", str(port)),),
            )
        )
    return tuple(processes)


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
