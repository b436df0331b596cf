"""The work queue. The database is the source of truth: a run is queued when its row says so.

- `DatabaseQueue` (no `REDIS_URL`): workers poll the runs table for due runs (woken at once in the
  process that queued them).
- `RedisQueue`: run ids travel on a Redis Stream read by a consumer group (XREADGROUP, XACK;
  XAUTOCLAIM takes over entries of a consumer that died). A reconciler pushes again whatever the
  database says is due but the stream may have lost (never pushed, pushed long ago, a flushed
  Redis), so Redis may lose everything without losing a run. A run pushed twice is claimed once:
  the claim is a conditional update of its row.

Polls run untraced (no database or Redis spans): an idle worker polls several times a second,
and a span per empty poll would bury every trace worth reading. A poll that finds work leaves one
`queue take` span saying how many runs it found.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from opentelemetry import trace

from services.kit.clock import Clock
from services.kit.metrics import gauge
from services.kit.telemetry import untraced
from services.runner.store import Store

log = logging.getLogger("leadmesh.runner.queue")
tracer = trace.get_tracer("leadmesh.runner.queue")

GROUP = "workers"


def _found(started_ns: int, candidates: list[Candidate]) -> list[Candidate]:
    """The poll's span, started when the poll did, only now that it found work."""
    if candidates:
        span = tracer.start_span("queue take", start_time=started_ns)
        span.set_attribute("leadmesh.runs", len(candidates))
        span.end()
    return candidates


class Backlog:
    """The queue as operators read it (`leadmesh.queue.depth`, `leadmesh.queue.oldest_age`):
    runs not finished and the oldest one's age, counted by the process that reconciles (the
    runner's API) at most once a second; the gauges read the last count, never the database."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._counted: tuple[int, datetime | None] | None = None
        self._next = 0.0

    async def refresh(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + 1.0
        with untraced():
            async with self.store.read() as tx:
                found = await tx.runs.backlog(self.clock.now())
        self._counted = (found.pending, found.oldest_create_time)
        global _backlog
        _backlog = self  # this process reconciles: it is the one that reports the queue

    def depth(self) -> list[tuple[float, dict[str, str]]]:
        return [] if self._counted is None else [(self._counted[0], {})]

    def oldest_age(self) -> list[tuple[float, dict[str, str]]]:
        if self._counted is None:
            return []
        oldest = self._counted[1]
        age = 0.0 if oldest is None else (self.clock.now() - oldest).total_seconds()
        return [(max(0.0, age), {})]


_backlog: Backlog | None = None
gauge("leadmesh.queue.depth", lambda: _backlog.depth() if _backlog else [])
gauge("leadmesh.queue.oldest_age", lambda: _backlog.oldest_age() if _backlog else [])


@dataclass(frozen=True)
class Candidate:
    run_id: str
    # The stream entry id (Redis); empty for the database queue.
    entry: str = ""


class Queue(Protocol):
    # Whether runs are pushed anywhere (runs.push_time is kept only then).
    pushes: bool

    async def push(self, run_ids: list[str]) -> None: ...

    async def take(self, worker: str, count: int, block: float) -> list[Candidate]: ...

    async def done(self, candidates: list[Candidate]) -> None: ...

    async def reconcile(self) -> int: ...

    async def close(self) -> None: ...


class DatabaseQueue:
    pushes = False

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.backlog = Backlog(store, clock)
        self._wake = asyncio.Event()

    async def push(self, run_ids: list[str]) -> None:
        self._wake.set()

    async def take(self, worker: str, count: int, block: float) -> list[Candidate]:
        for turn in range(2):
            started = time.time_ns()
            with untraced():
                async with self.store.read() as tx:
                    ids = await tx.runs.due(self.clock.now(), count)
            if ids or turn:
                return _found(started, [Candidate(i) for i in ids])
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), block)
            except TimeoutError:
                pass
        return []

    async def done(self, candidates: list[Candidate]) -> None:
        return None

    async def reconcile(self) -> int:
        """Nothing to repair: the database is the queue. Wakes workers for due retries."""
        self._wake.set()
        await self.backlog.refresh()
        return 0

    async def close(self) -> None:
        return None


class RedisQueue:
    pushes = True

    def __init__(
        self,
        url: str,
        store: Store,
        clock: Clock,
        *,
        lease_seconds: float,
        requeue_after_seconds: float,
        stream: str = "leadmesh:runner:runs",
    ) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(url)
        self.stream = stream
        # Set by the reconciler once it has pushed everything due; gone means a new or flushed
        # Redis, whoever recreated the consumer group since.
        self.marker = f"{stream}:reconciled"
        self.store = store
        self.clock = clock
        self.backlog = Backlog(store, clock)
        self.lease_ms = int(lease_seconds * 1000)
        self.requeue_after = timedelta(seconds=requeue_after_seconds)
        self._group_ready = False
        self._last_autoclaim = 0.0

    async def ensure_group(self) -> None:
        """Creates the stream and its consumer group unless they exist."""
        from redis.exceptions import ResponseError

        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    async def push(self, run_ids: list[str]) -> None:
        if not run_ids:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for run_id in run_ids:
                    pipe.xadd(self.stream, {"run": run_id}, maxlen=1_000_000, approximate=True)
                await pipe.execute()
        except Exception as error:  # the reconciler pushes it again; the run is safe in the DB
            log.warning("queue push failed", extra={"error": type(error).__name__})

    async def take(self, worker: str, count: int, block: float) -> list[Candidate]:
        started = time.time_ns()
        with untraced():
            return _found(started, await self._take(worker, count, block))

    async def _take(self, worker: str, count: int, block: float) -> list[Candidate]:
        from redis.exceptions import ConnectionError, ResponseError, TimeoutError

        try:
            if not self._group_ready:
                await self.ensure_group()
            loop = asyncio.get_running_loop()
            if loop.time() - self._last_autoclaim > self.lease_ms / 2000:
                self._last_autoclaim = loop.time()
                claimed = await self.redis.xautoclaim(
                    self.stream, GROUP, worker, self.lease_ms, "0-0", count=count
                )
                entries = claimed[1]
                if entries:
                    return _candidates(entries)
            reply = await self.redis.xreadgroup(
                GROUP, worker, {self.stream: ">"}, count=count, block=max(1, int(block * 1000))
            )
        except ResponseError as error:
            # Redis was flushed (the group is gone, or the stream under a blocked read): start
            # again; the reconciler pushes what was lost.
            if "NOGROUP" in str(error) or "UNBLOCKED" in str(error):
                self._group_ready = False
                return []
            raise
        except (ConnectionError, TimeoutError) as error:
            log.warning("queue unreachable", extra={"error": type(error).__name__})
            await asyncio.sleep(block)
            return []
        return _candidates(reply[0][1]) if reply else []

    async def done(self, candidates: list[Candidate]) -> None:
        entries = [c.entry for c in candidates if c.entry]
        if entries:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.xack(self.stream, GROUP, *entries)
                    pipe.xdel(self.stream, *entries)
                    await pipe.execute()
            except Exception as error:  # unacked entries are claimed again and found done
                log.warning("queue ack failed", extra={"error": type(error).__name__})

    async def reconcile(self) -> int:
        """Pushes due runs the stream may not hold; returns how many."""
        try:
            with untraced():
                await self.ensure_group()
                flushed = not await self.redis.exists(self.marker)
        except Exception as error:
            log.warning("queue unreachable", extra={"error": type(error).__name__})
            return 0
        now = self.clock.now()
        if flushed:
            # Whatever the stream held is gone: every queued run is to be pushed again.
            async with self.store.begin() as tx:
                await tx.runs.forget_pushes()
            await self.redis.set(self.marker, "1")
        stale = now - self.requeue_after
        with untraced():
            async with self.store.read() as tx:
                ids = await tx.runs.to_push(now, stale, 5000)
        if ids:
            await self.push(ids)
            async with self.store.begin() as tx:
                await tx.runs.mark_pushed(ids, now)
        await self.backlog.refresh()
        return len(ids)

    async def close(self) -> None:
        await self.redis.aclose()


def _candidates(entries) -> list[Candidate]:
    out = []
    for entry_id, fields in entries:
        if not fields:  # deleted while pending
            continue
        run = fields.get(b"run") or fields.get("run")
        if run:
            out.append(
                Candidate(
                    run.decode() if isinstance(run, bytes) else run,
                    entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                )
            )
    return out
