"""`leadmesh status`: every process's health, version and address, the runner's queue (depth and the
oldest pending run's age) and the retention service's compliance summary, as the operator (its
mesh certificate). A process that does not answer is shown down, never as a traceback; the exit
status is 1 when any process is down (or not serving), 0 otherwise.

A process's version is what it reports: gRPC services in the `leadmesh-version` initial metadata
of their health answer, the gateway in its /healthz body ("-" from a process too old to say).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from leadmesh.retention.v1 import retention_pb2, retention_pb2_grpc
from leadmesh.runner.v1 import runner_pb2, runner_pb2_grpc

from cli.mesh import PROCESSES
from cli.probes import gateway_client, operator_channel
from gateway.settings import GatewaySettings
from services.kit.config import MeshSettings, load_settings
from services.kit.errors import from_rpc_error

VERSION_KEY = "leadmesh-version"
TIMEOUT = 3.0


@dataclass
class ProcessState:
    name: str
    state: str  # SERVING, NOT_SERVING, or why it did not answer (UNAVAILABLE, …)
    version: str
    address: str

    @property
    def up(self) -> bool:
        return self.state == "SERVING"


def _grpc_process(mesh: MeshSettings, name: str) -> ProcessState:
    address = mesh.addr(name)
    try:
        channel, metadata = operator_channel(mesh, name)
    except FileNotFoundError:
        return ProcessState(name, "NO_OPERATOR_CERTIFICATE", "-", address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply, call = stub.Check.with_call(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT, metadata=metadata
            )
        except grpc.RpcError as error:
            return ProcessState(name, error.code().name, "-", address)
    version = dict(call.initial_metadata() or ()).get(VERSION_KEY, "-")
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return ProcessState(name, state, str(version), address)


def _gateway(settings: GatewaySettings) -> ProcessState:
    import httpx

    try:
        with gateway_client(settings, timeout=TIMEOUT) as client:
            address = str(client.base_url).rstrip("/")
            live = client.get("/healthz")
            ready = client.get("/readyz")
    except httpx.HTTPError as error:
        address = f"https://127.0.0.1:{settings.https_port}"
        return ProcessState("gateway", f"UNAVAILABLE ({type(error).__name__})", "-", address)
    try:
        version = str(live.json().get("version", "-"))
        readiness = ready.json().get("status", "")
    except ValueError:
        version, readiness = "-", ""
    state = {"ready": "SERVING", "not ready": "NOT_SERVING"}.get(readiness, "UNKNOWN")
    return ProcessState("gateway", state, version, address)


def _call(mesh: MeshSettings, service: str, stub_class, method: str, request):
    """One operator call; an error is returned as one line, never raised."""
    try:
        channel, metadata = operator_channel(mesh, service)
    except FileNotFoundError:
        return None, f"no operator certificate under {mesh.pki_dir}"
    with channel:
        try:
            return getattr(stub_class(channel), method)(
                request, metadata=metadata, timeout=TIMEOUT * 3
            ), ""
        except grpc.RpcError as error:
            remote = from_rpc_error(error)
            return None, f"{remote.code.name} {remote.message}".replace("\n", " ")


def _seconds_between(later: datetime, earlier: datetime) -> float:
    return max(0.0, (later - earlier).total_seconds())


def queue(mesh: MeshSettings) -> dict:
    reply, error = _call(
        mesh,
        "runner",
        runner_pb2_grpc.RunnerServiceStub,
        "GetQueueStatus",
        runner_pb2.GetQueueStatusRequest(),
    )
    if reply is None:
        return {"error": error}
    oldest = None
    if reply.HasField("oldest_pending_create_time"):
        oldest = _seconds_between(
            reply.read_time.ToDatetime(), reply.oldest_pending_create_time.ToDatetime()
        )
    return {"pending_runs": reply.pending_runs, "due_runs": reply.due_runs,
            "oldest_pending_age_seconds": oldest}  # fmt: skip


def compliance(mesh: MeshSettings) -> dict:
    reply, error = _call(
        mesh,
        "retention",
        retention_pb2_grpc.RetentionServiceStub,
        "GetStatus",
        retention_pb2.GetStatusRequest(),
    )
    if reply is None:
        return {"error": error}
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


def _print(processes: list[ProcessState], backlog: dict | None, summary: dict | None) -> None:
    rows = [("PROCESS", "STATE", "VERSION", "ADDRESS")]
    rows += [(p.name, p.state, p.version, p.address) for p in processes]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3]
        )
    if backlog is not None:
        if "error" in backlog:
            print(f"queue: unknown ({backlog['error']})")
        else:
            print(
                f"queue: {backlog['pending_runs']} pending ({backlog['due_runs']} due), "
                f"oldest {_age(backlog['oldest_pending_age_seconds'])}"
            )
    if summary is not None:
        if "error" in summary:
            print(f"retention: unknown ({summary['error']})")
        else:
            counts = summary["categories"]
            print(
                f"retention: {counts['OK']} OK, {counts['LATE']} LATE, "
                f"{counts['UNREACHABLE']} UNREACHABLE; "
                f"{len(summary['erasures_at_risk'])} erasure cases near their deadline"
            )
            for case in summary["erasures_at_risk"]:
                print(f"  erasure {case['id']} {case['state']}, deadline {case['deadline']}")


def status(args: argparse.Namespace) -> int:
    mesh, gateway = load_settings(MeshSettings), load_settings(GatewaySettings)
    processes = [
        (_grpc_process(mesh, p.name) if p.grpc else _gateway(gateway))
        for p in PROCESSES
        if not args.only or p.name in args.only
    ]
    wanted = {p.name for p in processes}
    runner_up = any(p.name == "runner" and p.up for p in processes)
    retention_up = any(p.name == "retention" and p.up for p in processes)
    backlog = None
    if "runner" in wanted:
        backlog = queue(mesh) if runner_up else {"error": "the runner is down"}
    summary = None
    if "retention" in wanted:
        summary = compliance(mesh) if retention_up else {"error": "retention is down"}
    healthy = all(p.up for p in processes)
    if args.json:
        shown = {
            "healthy": healthy,
            "processes": [{**asdict(p), "up": p.up} for p in processes],
            "queue": backlog,
            "retention": summary,
        }
        print(json.dumps(shown, indent=2))
    else:
        _print(processes, backlog, summary)
    return 0 if healthy else 1


def add_commands(commands) -> None:
    shown = commands.add_parser(
        "status", help="health, version and address of every process, queue and compliance "
        "(exit 1 if any process is down)"
    )  # fmt: skip
    shown.add_argument("--only", action="append", metavar="PROCESS", help="check just these")
    shown.add_argument("--json", action="store_true", help="machine-readable output")
    shown.set_defaults(run=status)
