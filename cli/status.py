"""`leadmesh status [--profile scale]`: every process's health, version, address and metrics
endpoint, the runner's queue (depth and the oldest pending run's age) and the retention service's
compliance summary, as the operator (its mesh certificate). A process that does not answer is
shown down, never as a traceback; the exit status is 1 when any process is down (or not serving),
0 otherwise.

It finds the mesh as `leadmesh up` started it: from this shell's settings (ports, LEADMESH_HOST,
var/ for the operator's certificate) and the same `--profile`. Under `--profile scale` it also
shows the `LEADMESH_RUNNER_WORKER_PROCESSES` runner-worker processes `up` starts. A worker serves
nothing but `GET /metrics` (on RUNNER_WORKER_METRICS_PORT + i - 1, or the first free port from
there), so that is where it is asked: up when its metrics answer as a runner-worker's, its version
the `service_version` of their `target_info` ("-" from metrics on its own port that name no
process: a kit that writes `target_info` only beside recorded data).

A process's version is what it reports: gRPC services in the `leadmesh-version` initial metadata
of their health answer, the gateway in its /healthz body, a worker in its metrics ("-" from a
process too old to say). It never changes anything in the mesh.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from leadmesh.retention.v1 import retention_pb2, retention_pb2_grpc
from leadmesh.runner.v1 import runner_pb2, runner_pb2_grpc

from cli.config import add_profile_argument
from cli.mesh import PROCESSES, Process, runner_worker_processes
from cli.probes import gateway_client, operator_channel
from cli.retention import BadInput
from gateway.settings import GatewaySettings
from services.kit.config import MeshSettings, load_settings
from services.kit.errors import from_rpc_error

VERSION_KEY = "leadmesh-version"
TIMEOUT = 3.0
# A worker whose port was taken serves on the next free one, trying this many from its own
# (services/kit/telemetry.py); those past the expected ports are scanned with a short timeout.
WORKER_PORTS_TRIED = 100
SCAN_TIMEOUT = 0.5
WORKER_SERVICE = "runner-worker"  # its service.name in target_info


@dataclass
class ProcessState:
    name: str
    state: str  # SERVING, NOT_SERVING, or why it did not answer (UNAVAILABLE, …)
    version: str
    address: str
    # Its GET /metrics URL as configured (a worker's: where it answered, else its own port), "-"
    # where it serves none or where is not known.
    metrics: str

    @property
    def up(self) -> bool:
        return self.state == "SERVING"


def _metrics_url(mesh: MeshSettings, port: int) -> str:
    return f"http://{mesh.host}:{port}/metrics" if port and not mesh.sdk_disabled else "-"


def _grpc_process(mesh: MeshSettings, name: str) -> ProcessState:
    address, metrics = mesh.addr(name), _metrics_url(mesh, mesh.metrics_port(name))
    try:
        channel, metadata = operator_channel(mesh, name)
    except FileNotFoundError:
        return ProcessState(name, "NO_OPERATOR_CERTIFICATE", "-", address, metrics)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply, call = stub.Check.with_call(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT, metadata=metadata
            )
        except grpc.RpcError as error:
            return ProcessState(name, error.code().name, "-", address, metrics)
    version = dict(call.initial_metadata() or ()).get(VERSION_KEY, "-")
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return ProcessState(name, state, str(version), address, metrics)


def _gateway(settings: GatewaySettings) -> ProcessState:
    metrics = _metrics_url(settings.mesh, settings.mesh.metrics_port("gateway"))
    try:
        with gateway_client(settings, timeout=TIMEOUT) as client:
            address = str(client.base_url).rstrip("/")
            live = client.get("/healthz")
            ready = client.get("/readyz")
    except httpx.HTTPError as error:
        address = f"https://127.0.0.1:{settings.https_port}"
        state = f"UNAVAILABLE ({type(error).__name__})"
        return ProcessState("gateway", state, "-", address, metrics)
    try:
        version = str(live.json().get("version", "-"))
        readiness = ready.json().get("status", "")
    except ValueError:
        version, readiness = "-", ""
    state = {"ready": "SERVING", "not ready": "NOT_SERVING"}.get(readiness, "UNKNOWN")
    return ProcessState("gateway", state, version, address, metrics)


def worker_version(text: str, *, own_port: bool = False) -> str | None:
    """The version a runner-worker's metrics name (`target_info`), None when `text` is not a
    runner-worker's metrics. On the worker's own port, metrics that name no process at all (a
    worker whose kit writes `target_info` only once it has recorded something) are taken as the
    worker's, version "-"; elsewhere only a name says whose they are."""
    from prometheus_client.parser import text_string_to_metric_families

    names: dict[str, dict[str, str]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                names.setdefault(sample.name, sample.labels)
    except ValueError:  # not the Prometheus text format: someone else's port
        return None
    if (info := names.get("target_info")) is not None:
        if info.get("service_name") != WORKER_SERVICE:
            return None
        return info.get("service_version") or "-"
    # Every process of ours serves the process collector's series.
    return "-" if own_port and "process_start_time_seconds" in names else None


def _scrape(mesh: MeshSettings, port: int, timeout: float, *, own_port: bool = False) -> str | None:
    """The version of the runner-worker serving metrics on `port`, None when none does."""
    try:
        answer = httpx.get(f"http://{mesh.host}:{port}/metrics", timeout=timeout)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    return worker_version(answer.text, own_port=own_port)


def _displaced(mesh: MeshSettings, workers: tuple[Process, ...]) -> list[tuple[int, str]]:
    """(port, version) of every runner-worker serving metrics on a port it may have moved to,
    past its own (taken by something else when it started), in port order."""
    first = mesh.runner_worker_metrics_port
    skipped = {w.default_port for w in workers} | {mesh.metrics_port(p.name) for p in PROCESSES}
    ports = [
        port
        for port in range(first, first + len(workers) - 1 + WORKER_PORTS_TRIED)
        if port not in skipped
    ]
    with ThreadPoolExecutor(16) as pool:  # most refuse at once; a stranger's port may stall
        versions = pool.map(lambda port: _scrape(mesh, port, SCAN_TIMEOUT), ports)
        return [(port, version) for port, version in zip(ports, versions, strict=True) if version]


def _workers(mesh: MeshSettings, workers: tuple[Process, ...]) -> list[ProcessState]:
    """Each worker found at its own metrics port, else at one it may have moved to (in port
    order: which of two displaced workers is which cannot be told from outside)."""
    why = ""
    if mesh.sdk_disabled:
        why = "UNKNOWN (OTEL_SDK_DISABLED: no /metrics to ask)"
    elif not mesh.runner_worker_metrics_port:
        why = "UNKNOWN (RUNNER_WORKER_METRICS_PORT=0: a free port, not known)"
    if why:
        return [ProcessState(worker.name, why, "-", "-", "-") for worker in workers]
    found: dict[str, tuple[int, str]] = {}
    for worker in workers:
        if version := _scrape(mesh, worker.default_port, TIMEOUT, own_port=True):
            found[worker.name] = (worker.default_port, version)
    if missing := [worker for worker in workers if worker.name not in found]:
        found.update(zip((w.name for w in missing), _displaced(mesh, workers), strict=False))
    states = []
    for worker in workers:
        if worker.name not in found:  # where it was asked
            metrics = _metrics_url(mesh, worker.default_port)
            states.append(ProcessState(worker.name, "UNAVAILABLE", "-", "-", metrics))
            continue
        port, version = found[worker.name]
        address, metrics = f"{mesh.host}:{port}", _metrics_url(mesh, port)
        states.append(ProcessState(worker.name, "SERVING", version, address, metrics))
    return states


def _seconds_between(later: datetime, earlier: datetime) -> float:
    return max(0.0, (later - earlier).total_seconds())


def _queue(reply: runner_pb2.GetQueueStatusResponse) -> dict:
    oldest = None
    if reply.HasField("oldest_pending_create_time"):
        oldest = _seconds_between(
            reply.read_time.ToDatetime(), reply.oldest_pending_create_time.ToDatetime()
        )
    return {"pending_runs": reply.pending_runs, "due_runs": reply.due_runs,
            "oldest_pending_age_seconds": oldest}  # fmt: skip


def _compliance(reply: retention_pb2.GetStatusResponse) -> dict:
    states = Counter(item.state for item in reply.categories)
    return {
        "categories": {state: states.get(state, 0) for state in ("OK", "LATE", "UNREACHABLE")},
        "erasures_at_risk": [
            {"id": case.id, "state": case.state,
             "deadline": case.deadline.ToDatetime().isoformat() + "Z"}
            for case in reply.erasures_at_risk
        ],
    }  # fmt: skip


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _queue_lines(backlog: dict) -> list[str]:
    return [
        f"queue: {backlog['pending_runs']} pending ({backlog['due_runs']} due), "
        f"oldest {_age(backlog['oldest_pending_age_seconds'])}"
    ]


def _compliance_lines(summary: dict) -> list[str]:
    counts = summary["categories"]
    return [
        f"retention: {counts['OK']} OK, {counts['LATE']} LATE, "
        f"{counts['UNREACHABLE']} UNREACHABLE; "
        f"{len(summary['erasures_at_risk'])} erasure cases near their deadline",
        *(
            f"  erasure {case['id']} {case['state']}, deadline {case['deadline']}"
            for case in summary["erasures_at_risk"]
        ),
    ]


@dataclass(frozen=True)
class Section:
    """A part of the report after the processes: one operator call to one service, read into a
    dict (its `--json` value under `key`), shown as lines starting `<key>: `."""

    key: str
    service: str
    down: str  # the error shown while the service is down
    stub: Callable[[grpc.Channel], Any]
    method: str
    request: Callable[[], Any]
    read: Callable[[Any], dict]
    lines: Callable[[dict], list[str]]

    def fetch(self, mesh: MeshSettings) -> dict:
        """Its value, or {"error": one line}: an error is returned, never raised."""
        try:
            channel, metadata = operator_channel(mesh, self.service)
        except FileNotFoundError:
            return {"error": f"no operator certificate under {mesh.pki_dir}"}
        with channel:
            call = getattr(self.stub(channel), self.method)
            try:
                reply = call(self.request(), metadata=metadata, timeout=TIMEOUT * 3)
            except grpc.RpcError as error:
                remote = from_rpc_error(error)
                return {"error": f"{remote.code.name} {remote.message}".replace("\n", " ")}
        return self.read(reply)

    def shown(self, value: dict) -> list[str]:
        if "error" in value:
            return [f"{self.key}: unknown ({value['error']})"]
        return self.lines(value)


SECTIONS = (
    Section("queue", "runner", "the runner is down", runner_pb2_grpc.RunnerServiceStub,
            "GetQueueStatus", runner_pb2.GetQueueStatusRequest, _queue, _queue_lines),
    Section("retention", "retention", "retention is down", retention_pb2_grpc.RetentionServiceStub,
            "GetStatus", retention_pb2.GetStatusRequest, _compliance, _compliance_lines),
)  # fmt: skip


def _print(processes: list[ProcessState], sections: dict[str, dict | None]) -> None:
    rows = [("PROCESS", "STATE", "VERSION", "ADDRESS", "METRICS")]
    rows += [(p.name, p.state, p.version, p.address, p.metrics) for p in processes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:  # the last column unpadded: no trailing blanks
        print("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]))
    for section in SECTIONS:
        if (value := sections[section.key]) is not None:
            print("\n".join(section.shown(value)))


def _profile_workers(profile: str, mesh: MeshSettings) -> tuple[Process, ...]:
    if profile != "scale":
        return ()
    from cli.scale import ScaleSettings

    count = load_settings(ScaleSettings).runner_worker_processes
    return runner_worker_processes(count, mesh)


def _asked(section: Section, mesh: MeshSettings, wanted: set[str], up: set[str]) -> dict | None:
    """The section's value; None when its service was not asked for."""
    if section.service not in wanted:
        return None
    return section.fetch(mesh) if section.service in up else {"error": section.down}


def status(args: argparse.Namespace) -> int:
    mesh, gateway = load_settings(MeshSettings), load_settings(GatewaySettings)
    workers = _profile_workers(args.profile, mesh)
    known = [p.name for p in PROCESSES + workers]
    if unknown := [name for name in args.only or () if name not in known]:
        raise BadInput(f"status --only: no process {', '.join(unknown)} (of {', '.join(known)})")
    wanted = set(args.only or known)
    processes = [
        (_grpc_process(mesh, p.name) if p.grpc else _gateway(gateway))
        for p in PROCESSES
        if p.name in wanted
    ]
    if wanted & {w.name for w in workers}:
        # Every worker is looked for, so that another's port is never taken for the one asked.
        processes += [w for w in _workers(mesh, workers) if w.name in wanted]
    up = {p.name for p in processes if p.up}
    sections = {s.key: _asked(s, mesh, wanted, up) for s in SECTIONS}
    healthy = all(p.up for p in processes)
    if args.json:
        shown = {
            "healthy": healthy,
            "profile": args.profile,
            "processes": [{**asdict(p), "up": p.up} for p in processes],
            **sections,
        }
        print(json.dumps(shown, indent=2))
    else:
        _print(processes, sections)
    return 0 if healthy else 1


def add_commands(commands) -> None:
    shown = commands.add_parser(
        "status", help="health, version and address of every process, queue and compliance "
        "(exit 1 if any process is down)"
    )  # fmt: skip
    shown.add_argument("--only", action="append", metavar="PROCESS", help="check just these")
    shown.add_argument("--json", action="store_true", help="machine-readable output")
    add_profile_argument(shown, "the runner-worker processes too")
    shown.set_defaults(run=status)
