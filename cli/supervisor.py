"""`leadmesh up`: prepare var/, migrate, start every process, wait until each serves, print where
the mesh listens, and stop them all cleanly on Ctrl-C or SIGTERM.

A process that dies once the mesh is up is started again after a backoff that doubles with each
recent crash (`LEADMESH_RESTART_BACKOFF_SECONDS`, capped at `LEADMESH_RESTART_BACKOFF_CAP_SECONDS`);
one that crashed `LEADMESH_RESTART_LIMIT` times within `LEADMESH_RESTART_WINDOW_SECONDS` is broken,
not unlucky, and the whole mesh stops with a non-zero status. A process that dies while the mesh
is starting stops it at once: that is a configuration to fix, not a crash to outwait.

`--profile scale` (cli/scale.py) adds `runner-worker` processes, started last; each start and
restart prints the process's pid, so an operator (or a test) can find one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from cli.mesh import PROCESSES, Process
from cli.probes import gateway_health, grpc_health
from gateway.settings import GatewaySettings
from services.kit.config import MeshSettings, load_settings
from services.kit.db import migrate, private_dir
from services.kit.pki import ensure_mesh_pki

STOP_GRACE_SECONDS = 15.0
START_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.2
# A process that serves nothing to probe (a runner worker) is up once alive this long: a wrong
# setting or an unreachable store ends it well within.
SETTLE_SECONDS = 3.0


class RestartPolicy(BaseSettings):
    """When `leadmesh up` starts a dead process again, and when it gives up (prefix
    LEADMESH_RESTART_)."""

    model_config = SettingsConfigDict(env_prefix="LEADMESH_RESTART_", extra="ignore", frozen=True)

    # The wait before the first restart; it doubles with each crash still inside the window.
    backoff_seconds: float = 1.0
    backoff_cap_seconds: float = 30.0
    # This many crashes of one process within the window stop the mesh.
    limit: int = 5
    window_seconds: float = 60.0

    def delay(self, recent_crashes: int) -> float:
        return min(self.backoff_cap_seconds, self.backoff_seconds * 2 ** (recent_crashes - 1))


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def prepare(mesh: MeshSettings) -> None:
    """The mesh CA and certificates, and every service's schema at its newest migration."""
    private_dir(mesh.var_dir)  # databases, keys, mail and traces: the operator's alone
    ensure_mesh_pki(mesh.pki_dir)
    for process in PROCESSES:
        if process.migrations is not None:
            settings = process.settings()
            migrate(process.database_url(settings), process.migrations)


def _serving(process: Process, mesh: MeshSettings, gateway: GatewaySettings) -> bool:
    if process.grpc:
        return grpc_health(mesh, process.name, timeout=1.0) == "SERVING"
    status, _ = gateway_health(gateway)
    return status == 200


class Supervisor:
    def __init__(
        self,
        mesh: MeshSettings,
        policy: RestartPolicy | None = None,
        processes: tuple[Process, ...] = PROCESSES,
    ) -> None:
        self.mesh = mesh
        self.policy = policy or RestartPolicy()
        self.processes = processes
        self.children: dict[str, subprocess.Popen] = {}
        self._started_at: dict[str, float] = {}
        self.stopping = False
        # Per process: monotonic times of its recent crashes, and when a pending restart is due.
        self._crashes: dict[str, deque[float]] = {}
        self._restart_at: dict[str, float] = {}

    def start(self, process: Process) -> None:
        env = dict(os.environ, LEADMESH_VAR_DIR=str(self.mesh.var_dir.resolve()))
        env.update(process.environment)
        self.children[process.name] = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, *process.command], env=env
        )
        self._started_at[process.name] = time.monotonic()

    def wait_until_serving(self, process: Process, gateway: GatewaySettings) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.stopping:
            child = self.children[process.name]
            if child.poll() is not None:
                raise RuntimeError(f"{process.name} exited with status {child.returncode}")
            if not process.listens:
                if time.monotonic() - self._started_at[process.name] >= SETTLE_SECONDS:
                    return
            elif _serving(process, self.mesh, gateway):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} did not serve within {START_TIMEOUT_SECONDS}s")
            time.sleep(0.2)

    def watch(self) -> str | None:
        """Blocks until asked to stop, restarting children that die; returns the name of a child
        that crashed too often (the mesh is to stop), or None when asked to stop."""
        while not self.stopping:
            now = time.monotonic()
            for process in self.processes:
                child = self.children.get(process.name)
                if process.name in self._restart_at:
                    if now >= self._restart_at[process.name]:
                        del self._restart_at[process.name]
                        self.start(process)
                        pid = self.children[process.name].pid
                        print(f"leadmesh: {process.name} restarted (pid {pid})", flush=True)
                elif child is not None and child.poll() is not None and not self.stopping:
                    # (Ctrl-C in a terminal signals the children too: that is no crash.)
                    if not self._crashed(process.name, child.returncode, now):
                        return process.name
            time.sleep(POLL_SECONDS)
        return None

    def _crashed(self, name: str, code: int, now: float) -> bool:
        """Records a crash and schedules the restart; False once the process is to be given up."""
        crashes = self._crashes.setdefault(name, deque())
        crashes.append(now)
        while crashes and crashes[0] < now - self.policy.window_seconds:
            crashes.popleft()
        policy, count = self.policy, len(crashes)
        if count >= policy.limit:
            print(
                f"leadmesh: {name} exited with {_exit_status(code)} and has crashed {count} times "
                f"within {policy.window_seconds:g}s; giving up and stopping the mesh",
                flush=True,
            )
            return False
        delay = policy.delay(count)
        self._restart_at[name] = now + delay
        print(
            f"leadmesh: {name} exited with {_exit_status(code)} (crash {count}; {policy.limit} "
            f"within {policy.window_seconds:g}s stop the mesh); restarting in {delay:g}s",
            flush=True,
        )
        return True

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


def up(processes: tuple[Process, ...] = PROCESSES, stores: list[str] | None = None) -> int:
    """Runs the mesh until asked to stop; `processes` beyond the default (runner workers) and
    `stores` (banner lines naming where the data lives) come from a profile."""
    # An invalid setting is InvalidSettings: `leadmesh` reports it in one line (exit status 2).
    mesh = load_settings(MeshSettings)
    gateway = load_settings(GatewaySettings)
    policy = load_settings(RestartPolicy)
    print(f"leadmesh: preparing {mesh.var_dir.resolve()}", flush=True)
    prepare(mesh)
    supervisor = Supervisor(mesh, policy, processes)

    def request_stop(_signum, _frame) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    status = 0
    try:
        for process in (p for p in processes if p.listens):
            supervisor.start(process)
            supervisor.wait_until_serving(process, gateway)
        # Processes that serve nothing start together and settle together.
        quiet = [p for p in processes if not p.listens]
        for process in quiet:
            supervisor.start(process)
            pid = supervisor.children[process.name].pid
            print(f"leadmesh: {process.name} started (pid {pid})", flush=True)
        for process in quiet:
            supervisor.wait_until_serving(process, gateway)
        if not supervisor.stopping:
            _print_banner(mesh, gateway, supervisor, stores or [])
            if supervisor.watch() is not None:
                status = 1
    except RuntimeError as error:
        print(f"leadmesh: {error}; stopping the mesh", file=sys.stderr, flush=True)
        status = 1
    finally:
        print("leadmesh: stopping", flush=True)
        supervisor.stop_all()
        print("leadmesh: stopped", flush=True)
    return status


def _print_banner(
    mesh: MeshSettings, gateway: GatewaySettings, supervisor: Supervisor, stores: list[str]
) -> None:
    public = mesh.public_url.rstrip("/")
    var = Path(mesh.var_dir).resolve()
    built = (gateway.web_dir / "index.html").is_file()
    lines = [
        "leadmesh is up",
        f"  web app          {mesh.frontend_url.rstrip('/')}/"
        + ("" if built else "   (not built: install Node.js, then make run)"),
        f"  API (HTTPS)      {public}/v1   docs {public}/docs, {public}/redoc",
        f"  webhooks         {public}/hooks/<token>",
    ]
    if gateway.http_port:
        lines.append(f"  HTTP redirect    http://{gateway.host}:{gateway.http_port}")
    for process in PROCESSES:
        if process.grpc:
            lines.append(f"  {process.name:<16} {mesh.addr(process.name)} (gRPC, mTLS)")
    workers = [p for p in supervisor.processes if not p.listens]
    for process in workers:
        pid = supervisor.children[process.name].pid
        lines.append(f"  {process.name:<16} pid {pid} (delivery only)")
    lines += stores
    lines.append("  metrics          Prometheus text format; OTLP beside the traces")
    for process in PROCESSES:
        port = mesh.metrics_port(process.name)
        lines.append(f"    {process.name:<14} http://{mesh.host}:{port}/metrics")
    for process in workers:
        where = (
            f"port {process.default_port} or the next free"
            if process.default_port
            else "a free port"
        )
        lines.append(f"    {process.name:<14} {where} (GET /metrics)")
    lines += [
        f"  mail outbox      {var / 'outbox'} (set SMTP_URL to send)",
        f"  traces           {var / 'traces'} (set OTEL_EXPORTER_OTLP_ENDPOINT to export)",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)
