"""Logins per second through the gateway against raw PBKDF2, and /healthz latency under the flood.

    python bench/login.py [--seconds 20] [--concurrency 8]

Baseline: `hashlib.pbkdf2_hmac('sha512', …)` at the configured iterations on as many threads as
cores (the most any login path could do), measured before and after the mesh runs, in this run;
the better of the two counts.
Then `leadmesh up` on a fresh var/ and random ports, a flood of successful logins over HTTPS, and a
prober timing GET /healthz idle and during the flood. Prints ratios (targets: logins ≥ 0.85 of raw,
/healthz p99 under flood ≤ 3× idle).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from meshrun import PASSWORD, Mesh, percentile

from cli.mesh import by_name

# The prober asks 20 times a second: enough samples for a p99 over 20 s, little enough load that
# it measures the logins' effect on other requests rather than its own.
PROBE_PAUSE = 0.05


def raw_pbkdf2_rate(iterations: int, seconds: float) -> float:
    threads = os.cpu_count() or 1
    stop = time.perf_counter() + seconds

    def work() -> int:
        count, salt = 0, os.urandom(16)
        while time.perf_counter() < stop:
            hashlib.pbkdf2_hmac("sha512", PASSWORD.encode(), salt, iterations)
            count += 1
        return count

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda _: work(), range(threads)))
    return total / (time.perf_counter() - started)


async def probe_healthz(client: httpx.AsyncClient, until: float, pause: float) -> list[float]:
    latencies = []
    while time.perf_counter() < until:
        started = time.perf_counter()
        response = await client.get("/healthz")
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200
        await asyncio.sleep(pause)
    return latencies


async def flood(mesh: Mesh, seconds: float, concurrency: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with (
        httpx.AsyncClient(
            base_url=mesh.base_url, verify=mesh.context, timeout=60, limits=limits
        ) as client,
        httpx.AsyncClient(base_url=mesh.base_url, verify=mesh.context, timeout=60) as prober,
    ):
        emails = [f"bench-{i}@example.com" for i in range(concurrency)]
        for email in emails:
            created = await client.post("/v1/accounts", json={"email": email, "password": PASSWORD})
            assert created.status_code == 201, created.text
        client.cookies.clear()
        idle = await probe_healthz(prober, time.perf_counter() + 10, PROBE_PAUSE)

        logins: list[float] = []
        until = time.perf_counter() + seconds

        async def login_loop(email: str) -> None:
            body = {"email": email, "password": PASSWORD}
            while time.perf_counter() < until:
                started = time.perf_counter()
                # No cookies: each login is a fresh client, as in a login storm.
                response = await client.post("/v1/sessions", json=body, cookies={})
                if response.status_code != 200:
                    raise SystemExit(f"login failed: {response.status_code} {response.text}")
                logins.append(time.perf_counter() - started)
                client.cookies.clear()

        started = time.perf_counter()
        results = await asyncio.gather(
            probe_healthz(prober, until, PROBE_PAUSE), *(login_loop(e) for e in emails)
        )
        elapsed = time.perf_counter() - started
    busy = results[0]
    return {
        "logins_per_s": len(logins) / elapsed,
        "login_p50_ms": percentile(logins, 0.5) * 1000,
        "login_p99_ms": percentile(logins, 0.99) * 1000,
        "healthz_idle_p99_ms": percentile(idle, 0.99) * 1000,
        "healthz_flood_p99_ms": percentile(busy, 0.99) * 1000,
        "healthz_samples": len(busy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=4 * (os.cpu_count() or 1))
    args = parser.parse_args()
    iterations = by_name("identity").settings().pbkdf2_iterations
    cores = os.cpu_count() or 1
    print(f"PBKDF2-HMAC-SHA512, {iterations} iterations, {cores} cores")
    raw_before = raw_pbkdf2_rate(iterations, args.seconds / 2)
    mesh = Mesh()
    try:
        figures = asyncio.run(flood(mesh, args.seconds, args.concurrency))
    finally:
        mesh.stop()
    raw_after = raw_pbkdf2_rate(iterations, args.seconds / 2)
    # The better of the two: the ratio is then a lower bound, whatever the neighbours did.
    raw = max(raw_before, raw_after)
    ratio = figures["logins_per_s"] / raw
    healthz_ratio = figures["healthz_flood_p99_ms"] / figures["healthz_idle_p99_ms"]
    print(
        f"raw pbkdf2 on {cores} threads   {raw:8.2f} hashes/s  ({raw_before:.2f} / {raw_after:.2f})"
    )
    print(
        f"logins through the gateway  {figures['logins_per_s']:8.2f} /s   "
        f"p50 {figures['login_p50_ms']:.0f} ms  p99 {figures['login_p99_ms']:.0f} ms  "
        f"(concurrency {args.concurrency})"
    )
    print(f"login ratio                 {ratio:8.3f}   (target >= 0.85)")
    print(f"/healthz p99 idle           {figures['healthz_idle_p99_ms']:8.2f} ms")
    print(
        f"/healthz p99 under flood    {figures['healthz_flood_p99_ms']:8.2f} ms  "
        f"({figures['healthz_samples']} samples)"
    )
    print(f"/healthz p99 ratio          {healthz_ratio:8.3f}   (target <= 3)")


if __name__ == "__main__":
    main()
