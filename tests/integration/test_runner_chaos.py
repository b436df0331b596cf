"""Chaos under load: a worker killed with SIGKILL, Redis flushed, the vault stopped for 10 s, each
in the middle of a few hundred webhooks. Every accepted event is delivered at least once: the
receiver (HTTPS, its own CA) records each delivery, each event carries a unique sequence number,
and the set of numbers delivered must equal the set accepted. Duplicates are allowed (at least
once), counted and printed; each one carries its run's `Idempotency-Key`, so the receiver could
drop it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from leadmesh.runner.v1 import runner_pb2 as rpb
from sqlalchemy import select

from services.kit.callers import user_metadata
from services.kit.config import MeshSettings
from services.runner.tables import runs as runs_table
from services.vault.server import start as start_vault
from tests.integration.runner_support import DONE, RunnerMesh, runner_mesh
from tests.support.receiver import DEFAULT_REPLY, Receiver

USER = "chaos-user"
PATH = "/chaos"
API_KEY = {"key": "sk_test_chaos_0123456789", "header": "X-Api-Key"}
REPO = Path(__file__).resolve().parents[2]
# Generous: the machine is small and shared.
SETTLE_TIMEOUT = 120.0
# Ingest is never the subject here: no rate limit gets in the way of the load.
NO_RATE_LIMIT = {"webhook_rate_per_second": 100_000.0, "webhook_burst": 100_000}
# A stream of this run's own: other runners sharing the test database must not take its work.
STREAM = f"leadmesh:test:{uuid.uuid4().hex[:8]}:runs"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with Receiver(tmp_path / "receiver") as server:
        # Slow enough that runs are in flight (claimed, not yet recorded) at any moment.
        server.respond_with(lambda _request: DEFAULT_REPLY, delay=0.05)
        yield server


@pytest.fixture
def chaos_redis(redis_server: str) -> str:
    """A Redis database of this module's own (14; the other tests share 15): it FLUSHes it, and
    test modules may run at the same time (pytest-xdist)."""
    return redis_server.rsplit("/", 1)[0] + "/14"


@pytest.fixture
def redis_client(chaos_redis: str) -> Iterator:
    """A client of the module's database; its calls here are brief, so synchronous."""
    from redis import Redis

    client = Redis.from_url(chaos_redis)
    client.delete(STREAM)  # whatever an earlier run left there
    yield client
    client.delete(STREAM)
    client.close()


def backend_url(request: pytest.FixtureRequest, tmp_path: Path, database: str) -> str:
    if database == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    return request.getfixturevalue("postgres_url")


# --- load and accounting ---


@dataclass
class Load:
    """Webhooks carrying {"n": i}, sent concurrently in batches; `accepted[n]` is n's run id."""

    rm: RunnerMesh
    token: str
    count: int
    batch: int = 20
    pause: float = 0.05

    def __post_init__(self) -> None:
        self.accepted: dict[int, str] = {}
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._send(), name="load")

    async def _send(self) -> None:
        for first in range(0, self.count, self.batch):
            numbers = range(first, min(first + self.batch, self.count))
            replies = await asyncio.gather(*(self.rm.hook(self.token, {"n": n}) for n in numbers))
            for n, reply in zip(numbers, replies, strict=True):
                assert reply.run_id and not reply.duplicate
                self.accepted[n] = reply.run_id
            await asyncio.sleep(self.pause)

    async def finish(self) -> dict[int, str]:
        assert self.task is not None
        await self.task
        assert len(self.accepted) == self.count
        return self.accepted


async def connect(rm: RunnerMesh, receiver: Receiver) -> rpb.ConnectionWithToken:
    """A webhook connection with an API key, so every delivery resolves it through the vault."""
    credential = await rm.credential(USER, "api_key", API_KEY)
    return await rm.connection(
        USER,
        receiver.https_url(PATH),
        trigger="webhook",
        credential_id=credential,
        body_template={"n": "{{ body.n }}"},
        max_attempts=5,
    )


async def all_runs(rm: RunnerMesh, connection_id: str) -> list[rpb.Run]:
    out: list[rpb.Run] = []
    token = ""
    while True:
        reply = await rm.stub.ListActivity(
            rpb.ListRequest(page_size=100, page_token=token, connection_id=connection_id),
            metadata=user_metadata(USER),
        )
        out.extend(reply.runs)
        token = reply.next_page_token
        if not token:
            return out


async def settle(rm: RunnerMesh, connection_id: str, expected: int) -> list[rpb.Run]:
    """Waits until each of the `expected` runs is finished (succeeded or failed)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        runs = await all_runs(rm, connection_id)
        if len(runs) >= expected and all(r.status in DONE for r in runs):
            return runs
        if time.monotonic() > deadline:
            statuses = Counter(r.status for r in runs)
            raise AssertionError(f"runs not finished after {SETTLE_TIMEOUT}s: {dict(statuses)}")
        await asyncio.sleep(0.5)


async def wait_until(condition: Callable[[], bool], what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)


def deliveries(receiver: Receiver) -> list:
    return [r for r in receiver.requests if r.path == PATH]


def at_least_once(
    label: str, accepted: dict[int, str], receiver: Receiver, runs: list[rpb.Run]
) -> dict[int, int]:
    """Asserts every accepted event was delivered and every run succeeded; returns the
    duplicates ({n: extra deliveries}) after printing them."""
    counts: Counter[int] = Counter()
    wrong_key = []
    for request in deliveries(receiver):
        n = int(request.json()["n"])
        counts[n] += 1
        if request.headers.get("idempotency-key") != accepted.get(n):
            wrong_key.append(n)
    missing = sorted(set(accepted) - set(counts))
    unknown = sorted(set(counts) - set(accepted))
    duplicates = {n: c - 1 for n, c in sorted(counts.items()) if c > 1}
    statuses = Counter(r.status for r in runs)
    attempts = Counter(r.attempts for r in runs)
    print(
        f"\n[{label}] accepted {len(accepted)}, deliveries {counts.total()}, "
        f"distinct {len(counts)}, duplicates {sum(duplicates.values())} "
        f"(events {list(duplicates)[:30]}), runs {dict(statuses)}, attempts {dict(attempts)}"
    )
    assert not missing, f"{len(missing)} accepted events never delivered: {missing[:50]}"
    assert not unknown, f"delivered events never accepted: {unknown[:50]}"
    assert not wrong_key, f"deliveries without their run's Idempotency-Key: {wrong_key[:50]}"
    assert len(runs) == len(accepted)
    assert statuses == {"succeeded": len(accepted)}, [
        (r.id, r.status, r.error) for r in runs if r.status != "succeeded"
    ][:20]
    return duplicates


# --- 1. a worker process killed with SIGKILL ---


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    log: Path

    @property
    def name(self) -> str:
        """The name its (only) worker claims runs under (server.worker_prefix())."""
        return f"{socket.gethostname()}-{self.process.pid}-0"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def start_worker(
    rm: RunnerMesh, receiver: Receiver, log: Path, redis_url: str | None
) -> WorkerProcess:
    """`python -m services.runner.worker_process --count 1`, configured by environment as
    deployed."""
    prefixes = ("LEADMESH_", "RUNNER_", "REDIS_", "OTEL_", "VAULT_", "IDENTITY_", "RETENTION_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(
        LEADMESH_VAR_DIR=str(rm.var),
        LEADMESH_LOG_LEVEL="WARNING",
        RUNNER_DATABASE_URL=rm.database_url,
        VAULT_ADDR=f"127.0.0.1:{rm.vault.port}",
        RUNNER_ALLOWED_NETWORKS='["127.0.0.0/8"]',
        RUNNER_CA_FILE=str(receiver.ca_file),
        RUNNER_LEASE_SECONDS="3",
        RUNNER_BACKOFF_BASE_SECONDS="0.05",
        RUNNER_BACKOFF_CAP_SECONDS="0.5",
        RUNNER_CONCURRENCY="16",
        RUNNER_WORKER_METRICS_PORT="0",  # tests run side by side: never the default ports
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
        env["RUNNER_QUEUE_STREAM"] = STREAM
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.runner.worker_process", "--count", "1"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return WorkerProcess(process, log)


def stop_worker(worker: WorkerProcess) -> None:
    if worker.process.poll() is None:
        worker.process.terminate()
        try:
            worker.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait(timeout=5)


async def claimed_by(rm: RunnerMesh, worker: str) -> list[str]:
    """Runs the worker holds right now (read straight from the runner's database)."""
    async with rm.runner.parts.core.store.read() as tx:
        rows = await tx.c.execute(
            select(runs_table.c.id).where(
                runs_table.c.worker == worker, runs_table.c.status == "running"
            )
        )
        return [r[0] for r in rows]


@pytest.mark.parametrize(
    "queue",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ],
    ids=["database-sqlite", "database-postgres", "redis-postgres"],
)
async def test_a_worker_killed_mid_load_loses_nothing(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mesh: MeshSettings,
    receiver: Receiver,
    queue: str,
) -> None:
    redis_url = request.getfixturevalue("chaos_redis") if queue == "redis" else None
    redis = request.getfixturevalue("redis_client") if redis_url else None
    url = backend_url(request, tmp_path, "postgres" if queue == "redis" else queue)
    workers: list[WorkerProcess] = []
    async with runner_mesh(
        tmp_path,
        mesh.pki_dir,
        url,
        ca_file=str(receiver.ca_file),
        workers=0,  # only the worker processes deliver
        redis_url=redis_url,
        queue_stream=STREAM,
        lease_seconds=3,
        requeue_after_seconds=2,
        **NO_RATE_LIMIT,
    ) as rm:
        try:
            made = await connect(rm, receiver)
            victim = start_worker(rm, receiver, tmp_path / "worker-a.log", redis_url)
            workers.append(victim)
            workers.append(start_worker(rm, receiver, tmp_path / "worker-b.log", redis_url))
            load = Load(rm, made.webhook_token, 400)
            load.start()

            # Mid-load: deliveries are arriving and the victim holds runs. SIGSTOP first, so
            # what it holds is known when it dies (a frozen process claims nothing more).
            await wait_until(lambda: len(deliveries(receiver)) >= 60, "60 deliveries")
            orphans: list[str] = []
            for _ in range(100):
                victim.process.send_signal(signal.SIGSTOP)
                orphans = await claimed_by(rm, victim.name)
                if orphans:
                    break
                victim.process.send_signal(signal.SIGCONT)
                await asyncio.sleep(0.05)
            assert orphans, "the victim never held a run: nothing would be tested"
            pending = 0
            if redis is not None:
                summary = redis.xpending_range(STREAM, "workers", "-", "+", 10_000)
                pending = sum(1 for p in summary if p["consumer"].decode() == victim.name)
            delivered_before = len(deliveries(receiver))
            victim.process.kill()  # SIGKILL
            victim.process.wait(timeout=10)
            print(
                f"\n[{queue}] killed {victim.name} holding {len(orphans)} runs "
                f"({pending} unacked stream entries), after {delivered_before} deliveries"
            )
            workers.append(start_worker(rm, receiver, tmp_path / "worker-c.log", redis_url))

            accepted = await load.finish()
            runs = await settle(rm, made.connection.id, len(accepted))
        except BaseException:
            for worker in workers:
                print(f"--- {worker.log.name} ---\n{worker.tail()}")
            raise
        finally:
            for worker in workers:
                stop_worker(worker)
        duplicates = at_least_once(f"sigkill {queue}", accepted, receiver, runs)
        # The victim's runs were taken over: each delivered (some twice), each succeeded.
        by_id = {r.id: r for r in runs}
        assert all(by_id[run_id].status == "succeeded" for run_id in orphans)
        orphan_events = {n for n, run_id in accepted.items() if run_id in set(orphans)}
        print(f"[{queue}] orphans delivered twice: {len(orphan_events & set(duplicates))}")


# --- 2. Redis flushed ---


@pytest.mark.redis
async def test_redis_flushed_mid_load_loses_nothing(
    tmp_path: Path,
    mesh: MeshSettings,
    receiver: Receiver,
    database_url: str,
    chaos_redis: str,
    redis_client,
) -> None:
    # Slower deliveries than webhooks arrive: a backlog waits on the stream when it goes.
    receiver.respond_with(lambda _request: DEFAULT_REPLY, delay=0.2)
    async with runner_mesh(
        tmp_path,
        mesh.pki_dir,
        database_url,
        ca_file=str(receiver.ca_file),
        redis_url=chaos_redis,
        queue_stream=STREAM,
        workers=1,
        concurrency=8,
        requeue_after_seconds=2,
        **NO_RATE_LIMIT,
    ) as rm:
        made = await connect(rm, receiver)
        load = Load(rm, made.webhook_token, 300)
        load.start()
        await wait_until(lambda: len(deliveries(receiver)) >= 30, "30 deliveries")
        # FLUSHDB on the module's own database only (never FLUSHALL), the stream's length read in
        # the same transaction: how many queued entries the flush destroyed.
        lost = flushes = 0
        while not lost and flushes < 5:
            await wait_until(lambda: redis_client.xlen(STREAM) > 0, "entries on the stream")
            with redis_client.pipeline(transaction=True) as pipe:
                pipe.xlen(STREAM)
                pipe.flushdb()
                lost, _flushed = pipe.execute()
            flushes += 1
        assert lost, "the stream was empty at each flush: nothing would be tested"
        print(f"\n[flush] FLUSHDB ({flushes}x) destroyed {lost} stream entries, "
              f"after {len(deliveries(receiver))} deliveries")  # fmt: skip
        accepted = await load.finish()
        runs = await settle(rm, made.connection.id, len(accepted))
        at_least_once("redis flushed", accepted, receiver, runs)


# --- 3. the vault stopped for 10 s ---


async def test_vault_stopped_for_10s_mid_load_loses_nothing_and_fails_nothing(
    tmp_path: Path, mesh: MeshSettings, receiver: Receiver, database_url: str
) -> None:
    async with runner_mesh(
        tmp_path,
        mesh.pki_dir,
        database_url,
        ca_file=str(receiver.ca_file),
        # Every delivery asks the vault: the outage is on each one's path.
        credential_cache_seconds=0,
        **NO_RATE_LIMIT,
    ) as rm:
        made = await connect(rm, receiver)
        load = Load(rm, made.webhook_token, 400)
        load.start()
        await wait_until(lambda: len(deliveries(receiver)) >= 50, "50 deliveries")

        settings, port = rm.vault.parts.settings, rm.vault.port
        await rm.vault.stop(grace=0)
        stopped = time.monotonic()
        delivered_before = len(deliveries(receiver))
        held: set[str] = set()  # runs seen waiting for the vault
        try:
            while time.monotonic() - stopped < 10:
                held |= {
                    r.id
                    for r in await all_runs(rm, made.connection.id)
                    if r.status == "queued" and "vault is unreachable" in r.error
                }
                await asyncio.sleep(0.5)
        finally:
            # Back on the same port, same database and keys: the runner's channel reconnects.
            rm.vault = await start_vault(settings, port=port)
        restarted = time.monotonic()
        delivered_during = len(deliveries(receiver)) - delivered_before
        print(
            f"\n[vault] down {restarted - stopped:.1f}s after {delivered_before} deliveries; "
            f"{delivered_during} delivered meanwhile (in flight); {len(held)} runs held"
        )
        assert held, "no run waited for the vault: the outage was not on the path"

        accepted = await load.finish()
        runs = await settle(rm, made.connection.id, len(accepted))
        print(f"[vault] all finished {time.monotonic() - restarted:.1f}s after the restart")
        at_least_once("vault stopped", accepted, receiver, runs)
        # Our outage used up no attempt: an attempt is counted only for a request that went to
        # the receiver (a run held for the vault records none), so each run's count equals its
        # recorded attempts, none of them about the vault. Mostly one each: the one that worked.
        for run in runs:
            if run.attempts != 1:
                detail = await rm.detail(USER, run.id)
                assert len(detail.attempts) == run.attempts, detail
                assert not any("vault" in a.error for a in detail.attempts), detail
