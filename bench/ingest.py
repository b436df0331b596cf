"""Accepted webhooks per second through the gateway, against a bare FastAPI endpoint answering 202
on the same server stack, in one run: a second gateway process (same uvicorn and TLS set-up, same
middleware, same OpenTelemetry instrumentation) with one more route that reads the body and
answers 202. The ratio is then the price of ingest itself: the gRPC call and the durable write.
The two alternate in 5 rounds (the machine's speed drifts between minutes); the ratio printed is
the median of the rounds' ratios.

    python bench/ingest.py [--seconds 30] [--concurrency 64]

Each accepted webhook is durable before its 202: the runner writes the webhooks-log entry and the
queued run in one transaction. Delivery is switched off (RUNNER_WORKERS=0) so that only
acceptance is measured; bench/deliver.py measures the whole path. Target ratio >= 0.4.
64 senders by default, as in bench/deliver.py: every commit waits for its fsync (SQLite
synchronous=FULL), so acceptance scales with how many webhooks share one group commit.
BENCH_EXTRA="NAME=value …" adds settings to the mesh (e.g. OTEL_SDK_DISABLED=true, to see what
tracing costs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

import httpx
from loadgen import Connection
from meshrun import ROOT, Mesh, percentile, sign_up

from tests.conftest import free_port

ROUNDS = 5
EXTRA = dict(a.split("=", 1) for a in os.environ.get("BENCH_EXTRA", "").split() if a)
BARE_APP = """
import asyncio
from fastapi import Request
from gateway import server
from gateway.settings import GatewaySettings
from services.kit.logs import setup_logging
from services.kit.telemetry import setup_telemetry

original = server.create_app

def with_bare_endpoint(settings, **kwargs):
    app = original(settings, **kwargs)

    @app.post("/bench/hooks/{token}", status_code=202)
    async def bare(token: str, request: Request) -> dict:
        await request.body()
        return {"run_id": "00000000-0000-0000-0000-000000000000"}

    return app

server.create_app = with_bare_endpoint
settings = GatewaySettings()
setup_logging("gateway-bare", "WARNING")
provider = setup_telemetry("gateway-bare", settings.mesh)
try:
    asyncio.run(server.serve(settings))
finally:
    provider.shutdown()
"""

LEAD = json.dumps(
    {"email": "ann@example.com", "first_name": "Ann", "last_name": "Lee", "phone": "+1 555 0100",
     "company": "Example Ltd", "utm": {"source": "ads", "campaign": "autumn"}}
).encode()  # fmt: skip


async def flood(base_url: str, context, path: str, seconds: float, concurrency: int):
    latencies: list[float] = []
    failures = 0
    until = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json"}

    async def worker() -> None:
        nonlocal failures
        connection = await Connection.open(base_url, context)
        try:
            while time.perf_counter() < until:
                started = time.perf_counter()
                status, _, _ = await connection.request("POST", path, LEAD, headers)
                if status != 202:
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - started)
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies, failures


async def measure(mesh: Mesh, bare_url: str, seconds: float, concurrency: int) -> dict:
    async with mesh.client() as user:
        await sign_up(user, "bench-ingest@example.com")
        created = await user.post(
            "/v1/connections",
            json={
                "name": "bench",
                "trigger": {"type": "webhook"},
                "action": {
                    "type": "http",
                    "url": "https://receiver.example/in",
                    "body_template": {"email": "{{ body.email }}"},
                },
            },  # fmt: skip
        )
        assert created.status_code == 201, created.text
        hook = "/hooks/" + created.json()["webhook_url"].rsplit("/", 1)[1]
    gateway = mesh.base_url
    for url, path in ((gateway, hook), (bare_url, "/bench/hooks/x")):  # warm up both
        await flood(url, mesh.context, path, 1.0, concurrency)
    rounds, lat, base_lat, failures = [], [], [], 0
    for _ in range(ROUNDS):  # each figure beside its own baseline: the machine's speed drifts
        base, base_latencies, _ = await flood(
            bare_url, mesh.context, "/bench/hooks/x", seconds / ROUNDS / 2, concurrency
        )
        rate, latencies, failed = await flood(
            gateway, mesh.context, hook, seconds / ROUNDS / 2, concurrency
        )
        rounds.append((base, rate))
        lat += latencies
        base_lat += base_latencies
        failures += failed
    ratios = sorted(rate / base for base, rate in rounds)
    return {
        "rate": statistics.median(rate for _, rate in rounds),
        "p50": percentile(lat, 0.5) * 1000,
        "p99": percentile(lat, 0.99) * 1000,
        "failures": failures,
        "baseline": statistics.median(base for base, _ in rounds),
        "baseline_p99": percentile(base_lat, 0.99) * 1000,
        "ratios": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    mesh = Mesh(
        {"RUNNER_WORKERS": "0", "RUNNER_WEBHOOK_RATE_PER_SECOND": "1000000",
         "RUNNER_WEBHOOK_BURST": "1000000", **EXTRA}
    )  # fmt: skip
    port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-c", BARE_APP],
        cwd=ROOT,
        env=dict(mesh.env, GATEWAY_HTTPS_PORT=str(port), GATEWAY_HTTP_PORT="0"),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"https://localhost:{port}/healthz", verify=mesh.context, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise SystemExit("the bare endpoint did not come up") from None
                time.sleep(0.2)
        figures = asyncio.run(
            measure(mesh, f"https://localhost:{port}", args.seconds, args.concurrency)
        )
    finally:
        bare.terminate()
        bare.wait(10)
        mesh.stop()
    ratios = figures["ratios"]
    print(
        f"bare endpoint 202           {figures['baseline']:8.0f} /s   "
        f"p99 {figures['baseline_p99']:.1f} ms  (median of {ROUNDS} rounds)"
    )
    print(
        f"webhooks accepted (durable) {figures['rate']:8.0f} /s   p50 {figures['p50']:.1f} ms  "
        f"p99 {figures['p99']:.1f} ms  (concurrency {args.concurrency}, "
        f"{figures['failures']} not accepted)"
    )
    print(
        f"ingest ratio                {statistics.median(ratios):8.3f}   (median of {ROUNDS} "
        f"rounds, {ratios[0]:.3f}-{ratios[-1]:.3f}; target >= 0.4)"
    )


if __name__ == "__main__":
    main()
