"""Retention purges of the runner: rows purged per second through the `Participant` (batches of
short transactions on the time indexes) against one raw `DELETE … WHERE … < cutoff` per table on
a copy of the same database, in the same run; webhook ingest's p99 while the purge runs against
its idle p99; and the purge time at 10 % and 50 % expired (it must follow the expired rows).

    python bench/purge.py [--rows 100000] [--store sqlite|postgres|both] [--batch 10000]

The database holds 2 × ROWS runs of the activity stream, each with an attempt and a webhooks-log
entry, their ages spread evenly over 60 days; ids are UUIDv7 of each row's time, as the runner
makes them (services/kit/ids.py). On PostgreSQL those tables are partitioned by day (migration
0007): a runner 60 days old has made a partition for each of its days, so the seeding first makes
them with the function the runner makes them with (services/kit/partitions.py), and a purge drops
the whole expired days. The 50 % purge (cutoff 30 days ago; ROWS rows of each table) runs on a
copy with nothing else running, as the raw DELETEs do on another copy (the ratio); then against a
runner serving IngestWebhook over mTLS on the first database, webhooks coming in all along (the
p99s); the 10 % purge (cutoff 54 days ago) on a third copy. Targets (issue 14): ratio >= 0.5 on
SQLite, >= 1.0 on PostgreSQL; ingest p99 during the purge <= 3 × idle; time at 10 % about a fifth
of the time at 50 %. PostgreSQL is skipped
(said so) when 127.0.0.1:5432 does not answer (LEADMESH_TEST_POSTGRES_URL to point elsewhere).
The runner and the webhook senders share this process and its event loop (idle and busy alike).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from leadmesh.retention.v1 import retention_pb2 as rpb
from leadmesh.retention.v1 import retention_pb2_grpc
from leadmesh.runner.v1 import runner_pb2 as pb
from leadmesh.runner.v1 import runner_pb2_grpc
from meshrun import ROOT, percentile
from sqlalchemy import JSON, Boolean, DateTime, Integer, String, column, table

from cli.mesh import PROCESSES
from services.kit.callers import user_metadata
from services.kit.clock import SystemClock
from services.kit.config import MeshSettings
from services.kit.db import Database, create_service_engine, create_sync_engine, migrate
from services.kit.grpcclient import open_channel
from services.kit.ids import time_ordered_id
from services.kit.partitions import make_ahead
from services.kit.pki import ensure_mesh_pki
from tests.conftest import POSTGRES_ADMIN_URL, free_port

RUNNER = next(p for p in PROCESSES if p.name == "runner")
DAY = timedelta(days=1)
SPAN = 60 * DAY
SENDERS = 4
# The runner's tables as far as seeding needs them (a benchmark reaches the runner only through
# its contracts; the rows go straight into its database).
_T = DateTime(timezone=True)
runs = table(
    "runs", column("id", String), column("user_id", String), column("connection_id", String),
    column("trigger", String), column("status", String), column("attempts", Integer),
    column("max_attempts", Integer), column("event", JSON), column("create_time", _T),
    column("next_attempt_time", _T),
)  # fmt: skip
attempts = table(
    "attempts", column("run_id", String), column("user_id", String), column("number", Integer),
    column("start_time", _T), column("finish_time", _T), column("request", JSON),
    column("response_status", Integer), column("response_truncated", Boolean),
)  # fmt: skip
webhook_log = table(
    "webhook_log", column("id", String), column("user_id", String),
    column("connection_id", String), column("run_id", String), column("receive_time", _T),
    column("source_ip", String), column("method", String), column("headers", JSON),
    column("query", String), column("body_encoding", String), column("body", String),
)  # fmt: skip
# (category, table, time column): a run with its attempt and its webhooks-log entry.
PURGED = [("attempt_details", attempts, "start_time"), ("webhooks_log", webhook_log,
          "receive_time"), ("activity", runs, "create_time")]  # fmt: skip


async def make_days(url: str, now) -> int:
    """PostgreSQL: the daily partitions a runner would have made over SPAN (and its week ahead)."""
    if not url.startswith("postgresql"):
        return 0
    database = Database(create_service_engine(url))
    first, days = (now - SPAN).date(), SPAN.days + 7
    try:
        return sum([await make_ahead(database, t, key, first, days) for _, t, key in PURGED])
    finally:
        await database.dispose()


def seed(url: str, rows: int, now) -> None:
    """2 × rows runs, each with an attempt and a log entry, ages spread evenly over SPAN."""
    engine = create_sync_engine(url)
    total, chunk = 2 * rows, 10_000
    try:
        for start_at in range(0, total, chunk):
            batch = range(start_at, min(total, start_at + chunk))
            ids = {i: time_ordered_id(now - SPAN * (i + 0.5) / total) for i in batch}
            when = {i: now - SPAN * (i + 0.5) / total for i in batch}
            with engine.begin() as connection:
                connection.execute(
                    runs.insert(),
                    [dict(id=ids[i], user_id=f"user-{i % 97}", connection_id=f"conn-{i % 97}",
                          trigger="webhook", status="succeeded", attempts=1, max_attempts=5,
                          event={"body": {"email": "ann@example.com", "n": i}},
                          create_time=when[i], next_attempt_time=when[i]) for i in batch],
                )  # fmt: skip
                connection.execute(
                    attempts.insert(),
                    [dict(run_id=ids[i], user_id=f"user-{i % 97}", number=1, start_time=when[i],
                          finish_time=when[i], request={"url": "https://x.example/", "body": i},
                          response_status=200, response_truncated=False) for i in batch],
                )  # fmt: skip
                connection.execute(
                    webhook_log.insert(),
                    [dict(id=time_ordered_id(when[i]), user_id=f"user-{i % 97}",
                          connection_id=f"conn-{i % 97}", run_id=ids[i], receive_time=when[i],
                          source_ip="203.0.113.9", method="POST", headers=[], query="",
                          body_encoding="json", body='{"email": "ann@example.com"}')
                     for i in batch],
                )  # fmt: skip
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":  # outside any transaction: the driver's own
                connection.connection.dbapi_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                # Vacuumed as a 60-day-old database's days long have been (autovacuum of the
                # fresh bulk insert would otherwise run during the purge, holding its days).
                connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "VACUUM ANALYZE"
                )
    finally:
        engine.dispose()


class Store:
    """Fresh databases and their copies, on one backend."""

    def __init__(self, backend: str, directory: Path) -> None:
        self.backend, self.directory, self.made = backend, directory, []

    def fresh(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.directory / 'main.db'}"
        return self._create(f'CREATE DATABASE "{self._name()}"')

    def copy(self, url: str, name: str) -> str:
        if self.backend == "sqlite":
            target = self.directory / f"{name}.db"
            shutil.copyfile(self.directory / "main.db", target)
            return f"sqlite:///{target}"
        source = url.rsplit("/", 1)[1]
        return self._create(f'CREATE DATABASE "{self._name()}" TEMPLATE "{source}"')

    def _name(self) -> str:
        self.made.append(f"lm_bench_purge_{uuid.uuid4().hex[:10]}")
        return self.made[-1]

    def _create(self, statement: str) -> str:
        import psycopg
        from sqlalchemy import make_url

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(statement)
        url = make_url(POSTGRES_ADMIN_URL).set(database=self.made[-1])
        return url.render_as_string(hide_password=False)

    def drop(self) -> None:
        if self.backend != "postgres" or not self.made:
            return
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            for name in self.made:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def purge_through_participant(stub, cutoff, batch: int) -> tuple[int, float]:
    """The runner's Purge RPC (as the retention service calls it), each category until none is
    left: (rows deleted, seconds)."""
    deleted, started = 0, time.perf_counter()
    for name, _, _ in PURGED:
        request = rpb.PurgeRequest(category=name, batch_size=batch)
        request.cutoff.FromDatetime(cutoff)
        while True:
            reply = await stub.Purge(request, timeout=120)
            deleted += reply.rows_deleted
            if not reply.rows_still_expired:
                break
    return deleted, time.perf_counter() - started


async def purge_raw(url: str, cutoff) -> tuple[int, float, float]:
    """(rows, seconds of the DELETEs, seconds of giving the space back: SQLite's whole
    incremental_vacuum and a WAL checkpoint, shown apart)."""
    database = Database(create_service_engine(url))
    deleted, started = 0, time.perf_counter()
    try:
        async with database.write() as connection:
            for _, table, column in PURGED:
                result = await connection.execute(table.delete().where(table.c[column] < cutoff))
                deleted += result.rowcount
        deleting = time.perf_counter() - started
        started = time.perf_counter()
        if url.startswith("sqlite"):
            async with database.engine.connect() as connection:
                raw = (await connection.get_raw_connection()).driver_connection
                # executescript steps the pragma to its end (execute frees one page only).
                await raw.executescript("PRAGMA incremental_vacuum;")
                await raw.executescript("PRAGMA wal_checkpoint(TRUNCATE);")
        return deleted, deleting, time.perf_counter() - started
    finally:
        await database.dispose()


class Runner:
    """`python -m services.runner` on a database (no workers: only acceptance and purges), and
    stubs to it calling as the gateway and as the retention service."""

    def __init__(self, var: Path, url: str, log: Path | None = None) -> None:
        self.port = free_port()
        env = dict(
            os.environ, LEADMESH_VAR_DIR=str(var), RUNNER_PORT=str(self.port),
            RUNNER_DATABASE_URL=url, RUNNER_WORKERS="0", RUNNER_WEBHOOK_RATE_PER_SECOND="1000000",
            RUNNER_WEBHOOK_BURST="1000000", RUNNER_METRICS_PORT=str(free_port()),
            LEADMESH_LOG_LEVEL=os.environ.get("BENCH_RUNNER_LOG", "ERROR"),
            # No vault runs here: the webhooks come in unsealed (the rows purged are seeded).
            RUNNER_SEAL_EXECUTION_DATA=os.environ.get("RUNNER_SEAL_EXECUTION_DATA", "false"),
        )  # fmt: skip
        env.pop("REDIS_URL", None)
        # `log`: the runner's log there, at INFO at least (its "purge call" lines: `call_times`).
        self.log = None if log is None else log.open("w")
        if log is not None and env["LEADMESH_LOG_LEVEL"].upper() in ("ERROR", "WARNING"):
            env["LEADMESH_LOG_LEVEL"] = "INFO"
        self.process = subprocess.Popen(
            [sys.executable, "-m", RUNNER.module], cwd=ROOT, env=env, stderr=self.log
        )
        there = MeshSettings(var_dir=var, runner_addr=f"127.0.0.1:{self.port}", _env_file=None)
        self.channels = [open_channel(there, "runner", caller=c) for c in ("gateway", "retention")]
        self.api = runner_pb2_grpc.RunnerServiceStub(self.channels[0])
        self.retention = retention_pb2_grpc.RetentionParticipantStub(self.channels[1])

    async def ready(self) -> None:
        # Health, not ListPolicies: counting 2 million rows takes longer than a probe.
        health = health_pb2_grpc.HealthStub(self.channels[1])
        deadline = time.monotonic() + 60
        while True:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("the runner did not come up")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        self.process.terminate()
        self.process.wait(30)
        if self.log is not None:
            self.log.close()


def call_times(log: Path) -> tuple[float, float]:
    """(seconds of batches, seconds giving the space back) summed over the participant's
    "purge call" log lines: its own split of each call (services/kit/retention). The batches
    include the checkpoints that run alongside them; giving back is what follows a category's
    last batch (incremental_vacuum, checkpoints, the log truncated)."""
    batches = giving_back = 0.0
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "purge call":
            batches += entry["seconds_batches"]
            giving_back += entry["seconds_compacting"]
    return batches, giving_back


async def purge_alone(
    var: Path, url: str, cutoff, batch: int
) -> tuple[int, float, tuple[float, float]]:
    """The participant's purge with nothing else running, as the raw DELETE runs: (rows,
    seconds, its own split of them: `call_times`)."""
    log = var.parent / f"runner-{uuid.uuid4().hex[:8]}.log"
    runner = Runner(var, url, log)
    try:
        await runner.ready()
        deleted, seconds = await purge_through_participant(runner.retention, cutoff, batch)
    finally:
        await runner.stop()
    return deleted, seconds, call_times(log)


async def senders(stub, token: str, stop: asyncio.Event, latencies: list[float]) -> None:
    request = pb.IngestWebhookRequest(
        token=token, method="POST", body=b'{"email": "bob@example.com"}', source_ip="203.0.113.7",
        headers=[pb.Header(name="content-type", value="application/json")],
    )  # fmt: skip

    async def one() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await stub.IngestWebhook(request, timeout=30)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(SENDERS)))


async def bench(backend: str, rows: int, batch: int, idle_seconds: float) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="lm-bench-purge-"))
    store = Store(backend, directory)
    now = SystemClock().now()
    var = directory / "var"
    ensure_mesh_pki(var / "pki")
    try:
        url = store.fresh()
        migrate(url, RUNNER.migrations)
        started = time.perf_counter()
        await make_days(url, now)
        seed(url, rows, now)
        seeded = time.perf_counter() - started
        raw_url, tenth_url = store.copy(url, "raw"), store.copy(url, "tenth")
        quiet_url = store.copy(url, "quiet")
        half, tenth = now - SPAN / 2, now - SPAN * 0.9

        runner = Runner(var, url)
        try:
            await runner.ready()
            made = await runner.api.CreateConnection(
                pb.CreateConnectionRequest(
                    name="bench", trigger=pb.Trigger(type="webhook"),
                    action=pb.Action(type="http", method="POST", url="https://x.example/in"),
                ),
                metadata=user_metadata("bench-sender"),
            )  # fmt: skip
            idle: list[float] = []
            stop = asyncio.Event()
            sending = asyncio.create_task(senders(runner.api, made.webhook_token, stop, idle))
            await asyncio.sleep(idle_seconds)
            stop.set()
            await sending
            busy: list[float] = []
            stop = asyncio.Event()
            sending = asyncio.create_task(senders(runner.api, made.webhook_token, stop, busy))
            deleted, seconds = await purge_through_participant(runner.retention, half, batch)
            stop.set()
            await sending
        finally:
            await runner.stop()
        raw_deleted, raw_seconds, vacuum_seconds = await purge_raw(raw_url, half)
        quiet_deleted, quiet_seconds, split = await purge_alone(var, quiet_url, half, batch)
        tenth_deleted, tenth_seconds, _ = await purge_alone(var, tenth_url, tenth, batch)
        assert deleted == raw_deleted == quiet_deleted, (deleted, raw_deleted, quiet_deleted)
        return {
            "seeded": seeded, "deleted": deleted, "seconds": seconds, "quiet": quiet_seconds,
            "raw": raw_seconds,
            "idle_p99": percentile(idle, 0.99) * 1000, "busy_p99": percentile(busy, 0.99) * 1000,
            "busy_count": len(busy), "tenth_deleted": tenth_deleted, "tenth": tenth_seconds,
            "vacuum": vacuum_seconds, "batches": split[0], "giving_back": split[1],
        }  # fmt: skip
    finally:
        store.drop()
        shutil.rmtree(directory, ignore_errors=True)


def postgres_reachable() -> str | None:
    try:
        import psycopg

        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
        return None
    except Exception as error:
        return f"{type(error).__name__}: {error}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="expired rows (of 2 × ROWS)")
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    # RETENTION_BATCH_SIZE's default (the retention service asks its participants for it).
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    for backend in backends:
        if backend == "postgres" and (why := postgres_reachable()):
            print(f"postgres: skipped, not reachable ({why})")
            continue
        f = asyncio.run(bench(backend, args.rows, args.batch, args.idle_seconds))
        rate, raw_rate = f["deleted"] / f["quiet"], f["deleted"] / f["raw"]
        whole = f["deleted"] / (f["raw"] + f["vacuum"])
        target = 0.5 if backend == "sqlite" else 1.0
        print(f"{backend}: {3 * 2 * args.rows} rows seeded in {f['seeded']:.1f} s; purging "
              f"{f['deleted']} (runs, attempts, webhooks log; batch {args.batch})")  # fmt: skip
        print(f"  participant      {rate:10.0f} rows/s  ({f['quiet']:.2f} s, giving the space "
              f"back included)")  # fmt: skip
        print(f"  raw DELETE       {raw_rate:10.0f} rows/s  ({f['raw']:.2f} s; then giving the "
              f"space back {f['vacuum']:.2f} s)")  # fmt: skip
        print(f"  ratio            {rate / raw_rate:10.3f}        (target >= {target})")
        print(f"  ratio, space too {rate / whole:10.3f}        (against raw DELETE + giving "
              f"back: {whole:.0f} rows/s)")  # fmt: skip
        if f["batches"]:
            alone = f["deleted"] / f["batches"]
            print(f"  ratio, DELETEs   {alone / raw_rate:10.3f}        (participant's batches "
                  f"alone, {alone:.0f} rows/s: {f['batches']:.2f} s, then giving back "
                  f"{f['giving_back']:.2f} s; both sides without giving back)")  # fmt: skip
        print(f"  during ingest    {f['deleted'] / f['seconds']:10.0f} rows/s  "
              f"({f['seconds']:.2f} s)")  # fmt: skip
        print(f"  ingest p99 idle  {f['idle_p99']:10.1f} ms    during purge "
              f"{f['busy_p99']:.1f} ms ({f['busy_count']} webhooks): "
              f"{f['busy_p99'] / f['idle_p99']:.2f}x (target <= 3)")  # fmt: skip
        print(f"  10 % expired     {f['tenth']:10.2f} s ({f['tenth_deleted']} rows)  vs 50 %: "
              f"{f['quiet']:.2f} s; time ratio {f['tenth'] / f['quiet']:.2f} "
              f"(rows ratio {f['tenth_deleted'] / f['deleted']:.2f})")  # fmt: skip
        sys.stdout.flush()


if __name__ == "__main__":
    main()
