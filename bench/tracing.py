"""What tracing and metrics cost end to end: deliveries per second (bench/deliver.py's path: webhook
in, vault-resolved API key, verified TLS to a receiver on loopback) with OpenTelemetry on,
exporting spans and metrics by OTLP/gRPC to a local receiver, against the same mesh with
`OTEL_SDK_DISABLED=true`, in one run.

    python bench/tracing.py [--rounds 3] [--events 4000] [--concurrency 64] [--metric-interval 5]

Each round measures both configurations, each on a fresh mesh (new var/, SQLite, in-process
workers) beside a fresh delivery receiver and OTLP receiver; the order flips every round (on/off,
off/on, …) so that a machine whose speed drifts moves both sides alike. A round's ratio is its
"on" rate over its "off" rate; the ratio printed is the median of the rounds' ratios, with their
range. Target: >= 0.85.

Both meshes get the same settings, OTEL_EXPORTER_OTLP_ENDPOINT (the receiver) and
OTEL_EXPORTER_OTLP_PROTOCOL=grpc included; only OTEL_SDK_DISABLED differs. The receiver
(tests/support/otlp_receiver.py's TraceService and MetricsService, counting and keeping nothing,
in a process of its own) reports the spans and metric points that arrived, per configuration:
the "on" rounds prove the exporters ran (spans per delivery), the "off" rounds that the switch
switches everything off (0 and 0). Metrics are exported every `--metric-interval` seconds
(OTEL_METRIC_EXPORT_INTERVAL; the standard's default is 60 s, longer than a round, so the default
here is harsher than production). Spans use the SDK's batch defaults. The 1-minute load average
after each measurement is printed beside it. OTEL_* settings of the calling shell are ignored;
BENCH_EXTRA="NAME=value …" adds settings to both meshes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deliver import RECEIVER, run
from meshrun import ROOT, Mesh

from tests.conftest import free_port
from tests.support.receiver import _write_certificates

# The test's OTLP receiver, counting per exporting service instead of keeping each request: it
# prints its port, then one JSON line of counts for each line read on stdin; EOF stops it.
OTLP_RECEIVER = """
import json, sys, threading
from collections import Counter
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from tests.support.otlp_receiver import OtlpReceiver

class Counting(OtlpReceiver):
    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.spans, self.points = Counter(), Counter()

    def Export(self, request, context):
        metrics = isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest)
        found = Counter()
        for resource in request.resource_metrics if metrics else request.resource_spans:
            service = next((a.value.string_value for a in resource.resource.attributes
                            if a.key == "service.name"), "?")
            if metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        data = getattr(metric, metric.WhichOneof("data"))
                        found[service] += len(data.data_points)
            else:
                found[service] += sum(len(scope.spans) for scope in resource.scope_spans)
        with self.lock:
            (self.points if metrics else self.spans).update(found)
        if metrics:
            return metrics_service_pb2.ExportMetricsServiceResponse()
        return trace_service_pb2.ExportTraceServiceResponse()

with Counting() as receiver:
    print(receiver.port, flush=True)
    for _ in sys.stdin:
        with receiver.lock:
            print(json.dumps({"spans": receiver.spans, "points": receiver.points}), flush=True)
"""


class Collector:
    """The OTLP receiver's process: `endpoint` for the mesh, `counts()` of what arrived."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", OTLP_RECEIVER],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line.strip().isdigit():
            self.stop()
            raise SystemExit("the OTLP receiver did not start")
        self.endpoint = f"http://127.0.0.1:{int(line)}"

    def counts(self) -> dict[str, dict[str, int]]:
        self.process.stdin.write("\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return json.loads(self.process.stdout.readline())  # type: ignore[union-attr]

    def stop(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def measure(on: bool, certs: Path, events: int, concurrency: int, interval: float) -> dict:
    """One fresh mesh, delivery receiver and OTLP receiver; bench/deliver.py's figures, the spans
    and points received (counted after the mesh stopped: its processes flush at exit) and the
    load average."""
    port = free_port()
    tls = [str(certs / "cert.pem"), str(certs / "key.pem")]
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port), *tls], cwd=ROOT)
    collector = Collector()
    extra = {
        "RUNNER_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "RUNNER_CA_FILE": str(certs / "ca.pem"),
        "RUNNER_WEBHOOK_RATE_PER_SECOND": "1000000",
        "RUNNER_WEBHOOK_BURST": "1000000",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": str(int(interval * 1000)),
        "OTEL_SDK_DISABLED": "false" if on else "true",
    }
    for name in ("GATEWAY", "IDENTITY", "VAULT", "RUNNER", "RETENTION", "RUNNER_WORKER"):
        extra[f"{name}_METRICS_PORT"] = str(free_port())  # never the defaults a neighbour holds
    extra.update(a.split("=", 1) for a in os.environ.get("BENCH_EXTRA", "").split() if a)
    try:
        mesh = Mesh(extra)
        try:
            time.sleep(1.0)
            figures = asyncio.run(run(mesh, f"https://localhost:{port}", events, concurrency))
            figures["load"] = os.getloadavg()[0]
        finally:
            mesh.stop()
        figures["dropped_warnings"] = sum("Queue full, dropping" in ln for ln in mesh.output)
        figures.update(collector.counts())
    finally:
        collector.stop()
        receiver.terminate()
        receiver.wait(10)
    return figures


def describe(f: dict) -> str:
    spans, points = sum(f["spans"].values()), sum(f["points"].values())
    per = spans / f["delivered"] if f["delivered"] else 0.0
    return (
        f"deliveries {f['rate']:6.0f} /s  p99 {f['p99']:6.0f} ms  lost {f['lost']}  "
        f"spans {spans:6d} ({per:4.1f}/delivery)  metric points {points:5d}  "
        f"load {f['load']:4.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--metric-interval", type=float, default=5.0, help="seconds")
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        del os.environ[name]  # the two configurations differ by OTEL_SDK_DISABLED only
    certs = Path(tempfile.mkdtemp(prefix="leadmesh-receiver-"))
    _write_certificates(certs / "ca.pem", certs / "cert.pem", certs / "key.pem")
    print(f"load average at start {os.getloadavg()[0]:.2f}  ({os.cpu_count()} cores)")
    rounds: list[tuple[dict, dict]] = []
    for number in range(1, args.rounds + 1):
        order = (True, False) if number % 2 else (False, True)
        got = {
            on: measure(on, certs, args.events, args.concurrency, args.metric_interval)
            for on in order
        }
        rounds.append((got[True], got[False]))
        for on in order:
            label = "on " if on else "off"
            print(f"round {number} tracing {label}  {describe(got[on])}", flush=True)
        print(f"round {number} ratio        {got[True]['rate'] / got[False]['rate']:8.3f}")
    ratios = sorted(on["rate"] / off["rate"] for on, off in rounds)
    median_on = statistics.median(on["rate"] for on, _ in rounds)
    median_off = statistics.median(off["rate"] for _, off in rounds)
    spans = {}
    for on, _ in rounds:
        for service, count in on["spans"].items():
            spans[service] = spans.get(service, 0) + count
    leaks = sum(sum(off["spans"].values()) + sum(off["points"].values()) for _, off in rounds)
    dropped = sum(on["dropped_warnings"] for on, _ in rounds)
    lost = sum(on["lost"] + off["lost"] for on, off in rounds)
    print(
        f"tracing on  (OTLP/gRPC)     {median_on:8.0f} /s   (median of {args.rounds}; spans by "
        f"service: {', '.join(f'{s} {n}' for s, n in sorted(spans.items()))}; "
        f"'queue full' warnings {dropped})"
    )
    print(
        f"tracing off (SDK disabled)  {median_off:8.0f} /s   (median of {args.rounds}; "
        f"spans + points received {leaks}, must be 0)"
    )
    print(
        f"tracing ratio               {statistics.median(ratios):8.3f}   (median of "
        f"{args.rounds} rounds, {ratios[0]:.3f}-{ratios[-1]:.3f}; target >= 0.85; "
        f"{lost} lost, must be 0)"
    )


if __name__ == "__main__":
    main()
