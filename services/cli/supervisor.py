"""`leadmesh up`: prepare var/, migrate, start every process, wait until each serves, print where
the mesh listens, and stop them all cleanly on Ctrl-C or SIGTERM (or when one of them dies)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.settings import GatewaySettings
from services.cli.mesh import PROCESSES, Process
from services.cli.probes import gateway_health, grpc_health
from services.kit.config import MeshSettings
from services.kit.db import migrate
from services.kit.pki import ensure_mesh_pki

STOP_GRACE_SECONDS = 15.0
START_TIMEOUT_SECONDS = 60.0


def prepare(mesh: MeshSettings) -> None:
    """The mesh CA and certificates, and every service's schema at its newest migration."""
    ensure_mesh_pki(mesh.pki_dir)
    for process in PROCESSES:
        migrations = process.migrations_dir()
        if migrations is not None:
            settings = process.settings()
            migrate(process.database_url(settings), migrations)


def _serving(process: Process, mesh: MeshSettings, gateway: GatewaySettings) -> bool:
    if process.grpc:
        return grpc_health(mesh, process.name, timeout=1.0) == "SERVING"
    status, _ = gateway_health(gateway)
    return status == 200


class Supervisor:
    def __init__(self, mesh: MeshSettings) -> None:
        self.mesh = mesh
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def start(self, process: Process) -> None:
        env = dict(os.environ, LEADMESH_VAR_DIR=str(self.mesh.var_dir.resolve()))
        self.children[process.name] = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", process.module], env=env
        )

    def wait_until_serving(self, process: Process, gateway: GatewaySettings) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.stopping:
            child = self.children[process.name]
            if child.poll() is not None:
                raise RuntimeError(f"{process.name} exited with status {child.returncode}")
            if _serving(process, self.mesh, gateway):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} did not serve within {START_TIMEOUT_SECONDS}s")
            time.sleep(0.2)

    def watch(self) -> str | None:
        """Blocks until asked to stop or a child dies; returns the name of a dead child."""
        while not self.stopping:
            for name, child in self.children.items():
                if child.poll() is not None:
                    return name
            time.sleep(0.2)
        return None

    def stop_all(self) -> None:
        # Reverse start order: the gateway stops taking requests before the services go.
        for child in reversed(list(self.children.values())):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def up() -> int:
    mesh = MeshSettings()
    gateway = GatewaySettings()
    print(f"leadmesh: preparing {mesh.var_dir.resolve()}", flush=True)
    prepare(mesh)
    supervisor = Supervisor(mesh)

    def request_stop(_signum, _frame) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    status = 0
    try:
        for process in PROCESSES:
            supervisor.start(process)
            supervisor.wait_until_serving(process, gateway)
        if not supervisor.stopping:
            _print_banner(mesh, gateway)
            dead = supervisor.watch()
            if dead is not None:
                print(f"leadmesh: {dead} stopped unexpectedly; stopping the mesh", flush=True)
                status = 1
    except RuntimeError as error:
        print(f"leadmesh: {error}; stopping the mesh", file=sys.stderr, flush=True)
        status = 1
    finally:
        print("leadmesh: stopping", flush=True)
        supervisor.stop_all()
        print("leadmesh: stopped", flush=True)
    return status


def _print_banner(mesh: MeshSettings, gateway: GatewaySettings) -> None:
    public = mesh.public_url.rstrip("/")
    var = Path(mesh.var_dir).resolve()
    lines = [
        "leadmesh is up",
        f"  API (HTTPS)      {public}/v1   docs {public}/docs",
        f"  webhooks         {public}/hooks/<token>",
    ]
    if gateway.http_port:
        lines.append(f"  HTTP redirect    http://{gateway.host}:{gateway.http_port}")
    for process in PROCESSES:
        if process.grpc:
            lines.append(f"  {process.name:<16} {mesh.addr(process.name)} (gRPC, mTLS)")
    lines += [
        f"  mail outbox      {var / 'outbox'} (set SMTP_URL to send)",
        f"  traces           {var / 'traces'} (set OTEL_EXPORTER_OTLP_ENDPOINT to export)",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)
