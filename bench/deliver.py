"""End-to-end deliveries per second: webhook in through the gateway, mapped, authenticated with an
API key resolved through the vault, delivered over verified TLS to a receiver on loopback.

    python bench/deliver.py [--events 4000] [--concurrency 64] [--store sqlite|scaled|both]

`sqlite`: the embedded default (`leadmesh up`, in-process workers). `scaled`: PostgreSQL + Redis
(a fresh database per service) and two `leadmesh runner-worker` processes. `sqlite+worker`: SQLite
with deliveries in one `runner-worker` process beside the runner. Prints deliveries per
second (first acceptance to last delivery), p50/p99 from acceptance (the 202) to arrival at the
receiver, duplicates, and events lost (accepted, never delivered: must be 0). Target: >= 300/s.
BENCH_EXTRA="NAME=value …" adds settings to the mesh (e.g. RUNNER_CONCURRENCY=128).

    python bench/deliver.py --compare-sealing [--rounds 3] [--store sqlite|scaled|both] [--events N]

What sealing execution data at rest costs (issue 15): the same deliveries with
RUNNER_SEAL_EXECUTION_DATA=true (the default) against false, in alternating rounds over fresh
meshes (on/off, off/on, …, as bench/tracing.py does), each round's ratio its "on" rate over its
"off" rate; printed: the median of the rounds' ratios with their range (target >= 0.9). Beside
each measurement: the vault's GetExecutionKeys calls (from its /metrics: keys are fetched once per
user, category and day per cache period, never per row) and, on SQLite, the copies of the lead's
e-mail address found in the bytes of the runner's database files (0 when sealed; the "off"
rounds' count shows what sealing removes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from loadgen import Connection
from meshrun import ROOT, Mesh, percentile, sign_up

from services.kit.metrics import SERIES
from tests.conftest import POSTGRES_ADMIN_URL, REDIS_URL, free_port
from tests.support.receiver import _write_certificates

SEALING = "RUNNER_SEAL_EXECUTION_DATA"
# Each process's /metrics on a free port: never the defaults a neighbouring mesh holds.
METRICS_PORTS = ("GATEWAY", "IDENTITY", "VAULT", "RUNNER", "RETENTION", "RUNNER_WORKER")

RECEIVER = """
import json, ssl, sys, time, uvicorn
arrivals = []
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = dict(scope["headers"])
    if scope["path"] == "/stats":
        body = json.dumps(arrivals).encode()
    else:
        arrivals.append([headers.get(b"idempotency-key", b"").decode(), time.time()])
        body = b'{"ok":true}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), ssl_certfile=sys.argv[2],
    ssl_keyfile=sys.argv[3], log_config=None, access_log=False, lifespan="off")
uvicorn.Server(config).run()
"""

LEAD = {"email": "ann@example.com", "first_name": "Ann", "last_name": "Lee",
        "company": "Example Ltd", "utm": {"source": "ads"}}  # fmt: skip
LEAD_EMAIL = LEAD["email"].encode()  # what a plaintext copy of a payload shows


def scaled_env() -> dict[str, str]:
    import psycopg

    names = {s: f"lm_bench_{s}_{uuid.uuid4().hex[:8]}" for s in ("identity", "vault", "runner")}
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        for name in names.values():
            admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {f"{s.upper()}_DATABASE_URL": f"{base}/{n}" for s, n in names.items()}
    env.update(REDIS_URL=REDIS_URL, RUNNER_WORKERS="0")
    return env


async def run(mesh: Mesh, receiver_url: str, events: int, concurrency: int) -> dict:
    async with mesh.client() as user:
        await sign_up(user, f"bench-{uuid.uuid4().hex[:6]}@example.com")
        key = await user.post(
            "/v1/credentials",
            json={"name": "receiver key", "kind": "api_key", "provider": "receiver",
                  "secret": {"key": "bench-api-key-0123456789", "header": "X-Api-Key"}},
        )  # fmt: skip
        assert key.status_code == 201, key.text
        created = await user.post(
            "/v1/connections",
            json={
                "name": "bench",
                "trigger": {"type": "webhook"},
                "action": {
                    "type": "http", "method": "POST", "url": f"{receiver_url}/in",
                    "body_template": {"email": "{{ body.email }}", "name":
                                      "{{ body.first_name }} {{ body.last_name }}",
                                      "source": "{{ body.utm.source }}"},
                    "credential_id": key.json()["id"],
                },
                "max_attempts": 10,
            },
        )  # fmt: skip
        assert created.status_code == 201, created.text
        hook = "/hooks/" + created.json()["webhook_url"].rsplit("/", 1)[1]
    accepted: dict[str, float] = {}
    refused = 0
    body = json.dumps(LEAD).encode()
    queue = iter(range(events))
    headers = {"Content-Type": "application/json"}

    async def sender() -> None:
        nonlocal refused
        connection = await Connection.open(mesh.base_url, mesh.context)
        try:
            for _ in queue:
                status, _, answer = await connection.request("POST", hook, body, headers)
                if status == 202:
                    accepted[json.loads(answer)["run_id"]] = time.time()
                else:
                    refused += 1
        finally:
            await connection.close()

    first = time.time()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    sent = time.time()
    async with httpx.AsyncClient(verify=False) as plain:  # noqa: S501 - our own receiver
        deadline = time.time() + 120
        while True:
            arrivals = (await plain.get(f"{receiver_url}/stats")).json()
            delivered = {run for run, _ in arrivals}
            if accepted.keys() <= delivered or time.time() > deadline:
                break
            await asyncio.sleep(0.5)
    firsts: dict[str, float] = {}
    for run, at in arrivals:
        firsts.setdefault(run, at)
    latencies = [firsts[r] - t for r, t in accepted.items() if r in firsts]
    last = max(firsts.values())
    return {
        "accepted": len(accepted),
        "refused": refused,
        "delivered": len(accepted.keys() & delivered),
        "duplicates": len(arrivals) - len(firsts),
        "lost": len(accepted.keys() - delivered),
        "rate": len(firsts) / (last - first),
        "ingest_rate": len(accepted) / (sent - first),
        "p50": percentile(latencies, 0.5) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
    }


def bench(
    store: str, events: int, concurrency: int, settings: dict[str, str] | None = None
) -> dict:
    """One fresh mesh on `store` (with `settings` over BENCH_EXTRA) and receiver: run()'s figures,
    the vault's GetExecutionKeys calls and, on SQLite, plaintext copies of the lead's e-mail in
    the runner's files once the mesh stopped."""
    certs = Path(tempfile.mkdtemp(prefix="leadmesh-receiver-"))
    ca, cert, key = certs / "ca.pem", certs / "cert.pem", certs / "key.pem"
    _write_certificates(ca, cert, key)
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(port), str(cert), str(key)], cwd=ROOT
    )
    extra = {
        "RUNNER_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "RUNNER_CA_FILE": str(ca),
        "RUNNER_WEBHOOK_RATE_PER_SECOND": "1000000",
        "RUNNER_WEBHOOK_BURST": "1000000",
    }
    extra.update({f"{name}_METRICS_PORT": str(free_port()) for name in METRICS_PORTS})
    extra["RETENTION_PORT"] = str(free_port())  # meshrun.Mesh frees the others
    extra.update(a.split("=", 1) for a in os.environ.get("BENCH_EXTRA", "").split() if a)
    extra.update(settings or {})
    if store == "scaled":
        extra.update(scaled_env())
    if store == "sqlite+worker":
        extra["RUNNER_WORKERS"] = "0"
    mesh = Mesh(extra)
    workers = []
    if store in ("scaled", "sqlite+worker"):
        for _ in range(2 if store == "scaled" else 1):
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cli", "runner-worker"],
                    cwd=ROOT,
                    env=mesh.env,
                    start_new_session=True,
                )  # fmt: skip
            )
    try:
        time.sleep(1.0)
        figures = asyncio.run(run(mesh, f"https://localhost:{port}", events, concurrency))
        figures["key_fetches"] = _calls(int(extra["VAULT_METRICS_PORT"]), "GetExecutionKeys")
        figures["load"] = os.getloadavg()[0]
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
        mesh.stop()
        receiver.terminate()
        receiver.wait(10)
    figures["plaintext"] = None if store == "scaled" else _copies(mesh.var / "runner", LEAD_EMAIL)
    return figures


def _calls(metrics_port: int, method: str) -> int | None:
    """How many calls of `method` the process serving /metrics there has answered (None: it
    serves no metrics, e.g. with OTEL_SDK_DISABLED=true)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    count = SERIES["rpc.server.duration"].prometheus + "_count"
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == count and sample.labels.get("rpc_method") == method
        )
    )


def _copies(directory: Path, needle: bytes) -> int:
    """Occurrences of `needle` in the bytes of every file under `directory` (database, WAL)."""
    return sum(f.read_bytes().count(needle) for f in directory.rglob("*") if f.is_file())


def alternating_rounds(
    rounds: int, measure: Callable[[bool], dict], label: str
) -> list[tuple[dict, dict]]:
    """(on, off) figures of each round, `measure(True)` first in odd rounds and last in even ones,
    so that a machine whose speed drifts moves both sides alike; each printed as it comes."""
    pairs = []
    for number in range(1, rounds + 1):
        order = (True, False) if number % 2 else (False, True)
        got = {on: measure(on) for on in order}
        pairs.append((got[True], got[False]))
        for on in order:
            side = "on " if on else "off"
            print(f"round {number} {label} {side}  {_described(got[on])}", flush=True)
        ratio = got[True]["rate"] / got[False]["rate"]
        print(f"round {number} ratio  {ratio:8.3f}", flush=True)
    return pairs


def _described(f: dict) -> str:
    plaintext = "-" if f["plaintext"] is None else f["plaintext"]
    return (
        f"deliveries {f['rate']:6.0f} /s  p99 {f['p99']:6.0f} ms  lost {f['lost']}  "
        f"key fetches {f['key_fetches']}  plaintext copies {plaintext}  load {f['load']:4.2f}"
    )


def compare_sealing(store: str, rounds: int, events: int, concurrency: int) -> None:
    def measure(on: bool) -> dict:
        return bench(store, events, concurrency, {SEALING: "true" if on else "false"})

    pairs = alternating_rounds(rounds, measure, f"{store} sealing")
    ratios = sorted(on["rate"] / off["rate"] for on, off in pairs)
    lost = sum(on["lost"] + off["lost"] for on, off in pairs)
    for on, side in ((True, 0), (False, 1)):
        median = statistics.median(pair[side]["rate"] for pair in pairs)
        copies = [pair[side]["plaintext"] for pair in pairs]
        fetches = [pair[side]["key_fetches"] for pair in pairs]
        delivered = [pair[side]["delivered"] for pair in pairs]
        print(
            f"{store} sealing {'on ' if on else 'off'} ({SEALING}={str(on).lower()})  "
            f"{median:6.0f} /s   (median of {rounds}; key fetches {fetches} for {delivered} "
            f"deliveries; plaintext copies of the lead's e-mail {copies}"
            f"{', must be 0' if on else ''})"
        )
    print(
        f"{store} sealing ratio  {statistics.median(ratios):8.3f}   (median of {rounds} rounds, "
        f"{ratios[0]:.3f}-{ratios[-1]:.3f}; target >= 0.9; {lost} lost, must be 0)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--store", choices=["sqlite", "sqlite+worker", "scaled", "both"], default="both"
    )
    parser.add_argument(
        "--compare-sealing",
        action="store_true",
        help=f"deliveries with {SEALING}=true against false, alternating rounds (ratio)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --compare-sealing")
    args = parser.parse_args()
    stores = ["sqlite", "scaled"] if args.store == "both" else [args.store]
    if args.compare_sealing:
        print(f"load average at start {os.getloadavg()[0]:.2f}  ({os.cpu_count()} cores)")
        for store in stores:
            compare_sealing(store, args.rounds, args.events, args.concurrency)
        return
    for store in stores:
        f = bench(store, args.events, args.concurrency)
        print(
            f"{store:<13} deliveries {f['rate']:7.0f} /s   accepted {f['ingest_rate']:6.0f} /s   "
            f"accept→delivery p50 {f['p50']:7.1f} ms  p99 {f['p99']:7.1f} ms   "
            f"accepted {f['accepted']}  refused {f['refused']}  duplicates {f['duplicates']}  "
            f"lost {f['lost']}   (target >= 300/s, 0 lost)"
        )


if __name__ == "__main__":
    main()
