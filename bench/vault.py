"""ResolveCredential throughput over mTLS against a no-op RPC on the same server, and KEK rotation.

    python bench/vault.py [--rounds 15] [--seconds 2] [--concurrency 16] [--keys 100000]

The vault runs as its own process (its entry point in the mesh's list, `cli/mesh.py`) on a fresh
var/ and SQLite file, migrated by that entry point; everything measured goes through its gRPC
contract.
Baseline: `grpc.health.v1.Health/Check` on the same server (same mTLS, interceptors, spans), in
the same run. Floods of `--seconds` alternate, no-op first and last: each of the `--rounds`
resolve floods is compared with the mean of the no-op floods just before and just after it, so
that a machine whose speed drifts (it is shared) moves both sides of each ratio alike; the ratio
printed is the median of the rounds' ratios, with their interquartile range and full range.
Then the time to rotate the KEK over `--keys` data keys (seeded straight into the vault's table,
wrapped by the vault's own key ring, so that set-up takes seconds, not hours: `vault_seed.py`, the
one place that touches the vault's internals, says why), and resolves per
second while the rotation runs. Target: resolve/no-op ≥ 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from google.protobuf import struct_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from leadmesh.vault.v1 import vault_pb2 as pb  # noqa: E402
from leadmesh.vault.v1 import vault_pb2_grpc  # noqa: E402
from vault_seed import seed_data_keys  # noqa: E402

from cli.mesh import by_name  # noqa: E402
from services.kit.callers import user_metadata  # noqa: E402
from services.kit.config import MeshSettings, database_url  # noqa: E402
from services.kit.grpcclient import open_channel  # noqa: E402
from services.kit.pki import ensure_mesh_pki  # noqa: E402
from tests.conftest import free_port  # noqa: E402

USERS = 200
VAULT = by_name("vault")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def vault_environment(var: Path, port: int) -> dict[str, str]:
    env = dict(os.environ, LEADMESH_VAR_DIR=str(var), LEADMESH_LOG_LEVEL="WARNING")
    env[VAULT.port_setting] = str(port)
    env.pop("REDIS_URL", None)
    return env


def migrate_vault(env: dict[str, str]) -> None:
    """The vault's own entry point migrates its database (`python -m … migrate`)."""
    command = [sys.executable, "-m", VAULT.module, "migrate"]
    subprocess.run(command, cwd=ROOT, env=env, check=True)


class VaultProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", VAULT.module], cwd=ROOT, env=env)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


async def flood(call, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    until = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        n = index
        while time.perf_counter() < until:
            started = time.perf_counter()
            await call(n)
            latencies.append(time.perf_counter() - started)
            n += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


async def run(args: argparse.Namespace, mesh: MeshSettings) -> None:
    gateway = vault_pb2_grpc.VaultServiceStub(open_channel(mesh, "vault", caller="gateway"))
    runner_channel = open_channel(mesh, "vault", caller="runner")
    runner = vault_pb2_grpc.VaultServiceStub(runner_channel)
    health = health_pb2_grpc.HealthStub(runner_channel)
    operator = vault_pb2_grpc.VaultServiceStub(open_channel(mesh, "vault", caller="operator"))
    for _ in range(100):
        try:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.2)

    secret = struct_pb2.Struct()
    secret.update({"key": "sk_bench_0123456789abcdef", "header": "X-Api-Key"})
    targets = []
    for n in range(USERS):
        created = await gateway.CreateCredential(
            pb.CreateCredentialRequest(
                name="bench", kind=pb.CREDENTIAL_KIND_API_KEY, provider="bench", secret=secret
            ),
            metadata=user_metadata(f"user-{n}"),
        )
        targets.append((f"user-{n}", created.id))

    async def noop(_n: int) -> None:
        await health.Check(health_pb2.HealthCheckRequest())

    async def resolve(n: int) -> None:
        user_id, credential_id = targets[n % USERS]
        await runner.ResolveCredential(
            pb.ResolveCredentialRequest(
                user_id=user_id, credential_id=credential_id, connection_id="bench"
            )
        )

    await flood(noop, 1, args.concurrency)  # warm-up
    await flood(resolve, 1, args.concurrency)
    rounds: list[tuple[float, float]] = []
    noop_latency: list[float] = []
    resolve_latency: list[float] = []
    before, noop_latency = await flood(noop, args.seconds, args.concurrency)
    for _ in range(args.rounds):
        resolve_rate, latencies = await flood(resolve, args.seconds, args.concurrency)
        resolve_latency += latencies
        after, latencies = await flood(noop, args.seconds, args.concurrency)
        noop_latency += latencies
        rounds.append(((before + after) / 2, resolve_rate))
        before = after
    ratios = sorted(r / n for n, r in rounds)
    ratio = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratio] * 3
    baseline = statistics.median(n for n, _ in rounds)
    resolve_rate = statistics.median(r for _, r in rounds)

    rotation_done = asyncio.Event()
    rotation_started = time.perf_counter()

    async def rotate() -> None:
        await operator.BeginKeyRotation(pb.BeginKeyRotationRequest())
        while True:
            reply = await operator.RewrapDataKeys(
                pb.RewrapDataKeysRequest(batch_size=1000), timeout=120
            )
            if reply.remaining == 0:
                break
        rotation_done.set()

    async def resolve_until_rotated() -> tuple[int, float]:
        count, started = 0, time.perf_counter()

        async def worker(index: int) -> None:
            nonlocal count
            n = index
            while not rotation_done.is_set():
                await resolve(n)
                count += 1
                n += args.concurrency

        await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
        return count, time.perf_counter() - started

    _, (during_count, during_seconds) = await asyncio.gather(rotate(), resolve_until_rotated())
    rotation_seconds = time.perf_counter() - rotation_started
    status = await operator.GetKeyStatus(pb.GetKeyStatusRequest())
    assert status.pending == 0, status

    noop_p99 = percentile(noop_latency, 0.99) * 1000
    resolve_p99 = percentile(resolve_latency, 0.99) * 1000
    total = status.versions[-1].data_key_count
    during = during_count / during_seconds
    print(f"no-op Health/Check     {baseline:9.0f} calls/s  p99 {noop_p99:6.2f} ms  (median)")
    print(
        f"ResolveCredential      {resolve_rate:9.0f} calls/s  p99 {resolve_p99:6.2f} ms  (median)"
    )
    print(
        f"resolve / no-op ratio  {ratio:9.3f}   (median of {len(ratios)} rounds; middle half "
        f"{quartiles[0]:.3f}-{quartiles[2]:.3f}, all {ratios[0]:.3f}-{ratios[-1]:.3f}; "
        "target >= 0.8)"
    )
    print(f"KEK rotation           {rotation_seconds:9.1f} s for {total} data keys")
    print(f"  ({total / rotation_seconds:.0f} data keys/s)")
    print(f"resolves during it     {during:9.0f} calls/s  ({during / resolve_rate:.2f} of idle)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="leadmesh-bench-vault-"))
    port = free_port()
    env = vault_environment(var, port)
    mesh = MeshSettings(var_dir=var, vault_addr=f"127.0.0.1:{port}", _env_file=None)
    ensure_mesh_pki(var / "pki")
    migrate_vault(env)
    seeded = time.perf_counter()
    seed_data_keys(var, database_url(None, mesh, VAULT.name), args.keys)
    took = time.perf_counter() - seeded
    print(f"seeded {args.keys} data keys in {took:.1f} s; {os.cpu_count()} cores", flush=True)
    vault = VaultProcess(env)
    try:
        asyncio.run(run(args, mesh))
    finally:
        vault.stop()


if __name__ == "__main__":
    main()
