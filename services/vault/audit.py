"""The audit log: every create, resolve, refresh, update and delete — when, which service, which
user, credential and connection, and the outcome; never secret material.

One queue, written in order by one writer task, in batches. A caller either waits until its event
is committed (`record`: creates, updates, deletes, refreshes, key operations) or, for the one
high-volume event — a resolve — goes on once the event is queued (`record(..., wait=False)`): the
writer commits queued resolves within `flush_seconds` (50 ms by default), all of them in one
transaction. That is what the audit trails of operating systems do (auditd's incremental flush)
and what keeps a resolve from costing a commit of its own; the price is that a crash of the vault
process can lose the resolves of its last `flush_seconds`. `flush_seconds = 0` makes every resolve
wait for its commit. The log fails closed: while events cannot be written, they are kept and
retried, and resolving is refused (AUDIT_UNAVAILABLE), so nothing is resolved unrecorded for longer
than one flush. A writer that is only slow is waited for: past `max_queued` queued events a resolve
waits for its commit, so the queue never grows without bound.

A resolve also moves its credential's `last_use_time`, to the minute: written at most once a
minute per credential (as sessions' idle deadlines are), not once per resolve.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from services.kit.appender import Appender
from services.kit.clock import Clock
from services.kit.errors import Unavailable
from services.kit.metrics import counter, gauge
from services.vault.store import Store
from services.vault.tables import audit_events

log = logging.getLogger("leadmesh.vault.audit")

USE_TIME_STEP = timedelta(minutes=1)
BATCH = 1000
# Queued events beyond which a resolve waits for its commit, as every other event does: the writer
# falling behind slows resolving down rather than growing the queue without bound.
MAX_QUEUED = 100_000
RETRY_SECONDS = 1.0
SHUTDOWN_SECONDS = 5.0
_NEVER = datetime.min.replace(tzinfo=UTC)
_COLUMNS = (
    "event_time", "caller", "user_id", "credential_id", "connection_id", "action", "outcome"
)  # fmt: skip


class Event(NamedTuple):
    """One audited action (immutable; a tuple, since one is made for every resolve)."""

    caller: str
    user_id: str
    action: str
    outcome: str = "ok"
    credential_id: str | None = None
    connection_id: str | None = None
    # Also set the credential's last_use_time (a resolve that succeeded).
    used: bool = False


@dataclass(slots=True)
class _Queued:
    event: Event | None  # None: a marker that only waits for what is ahead of it
    time: datetime = _NEVER
    done: asyncio.Future | None = None  # set once committed (callers that wait)


# Back-pressure: what is queued and unwritten (the newest audit log's, one per process), and the
# resolves that had to wait for their commit because the queue was full.
_waits = counter("leadmesh.vault.audit.waits")
_latest: list[AuditLog] = []
gauge("leadmesh.vault.audit.pending", lambda: [(len(audit._queue), {}) for audit in _latest[-1:]])


class AuditLog:
    def __init__(
        self, store: Store, clock: Clock, flush_seconds: float = 0.05, max_queued: int = MAX_QUEUED
    ) -> None:
        _latest[:] = [self]
        self._store = store
        self._max_queued = max_queued
        self._appender = Appender(store.database, [audit_events], "vault-audit")
        if self._appender.columns(audit_events) != list(_COLUMNS):  # the order of `_row`
            raise RuntimeError("audit_events' columns are not the ones _row writes")
        self._clock = clock
        self._flush_seconds = flush_seconds
        self._queue: list[_Queued] = []
        self._due: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task | None = None
        self._failing = False
        # When this process last wrote each credential's last_use_time.
        self._used_at: dict[str, datetime] = {}

    async def record(self, event: Event, *, wait: bool = True) -> None:
        """Queues the event; with `wait`, returns once it is committed (or raises why not)."""
        if not wait and self._flush_seconds > 0:
            if self._failing:
                raise Unavailable(
                    "AUDIT_UNAVAILABLE", "the audit log cannot be written; resolving is held"
                )
            if len(self._queue) >= self._max_queued:
                _waits.add(1)
                await self._enqueue_and_wait(_Queued(event, self._clock.now()))
                return
            # The request path only queues; the row is built when the batch is written.
            self._queue.append(_Queued(event, self._clock.now()))
            self._schedule(self._flush_seconds)
            return
        await self._enqueue_and_wait(_Queued(event, self._clock.now()))

    async def flush(self) -> None:
        """Returns once every event queued so far is committed."""
        if self._queue:
            await self._enqueue_and_wait(_Queued(None))

    async def _enqueue_and_wait(self, entry: _Queued) -> None:
        entry.done = asyncio.get_running_loop().create_future()
        self._queue.append(entry)
        self._schedule(0)
        await entry.done

    @staticmethod
    def _row(event: Event, time: datetime) -> tuple:
        """The event as a row of `audit_events`, its values in `_COLUMNS` order."""
        return (
            time,
            event.caller,
            event.user_id,
            event.credential_id,
            event.connection_id,
            event.action,
            event.outcome[:48],
        )

    def _schedule(self, delay: float) -> None:
        if delay > 0 and self._timer is not None:
            return  # a flush is already due (the busy path: one check per resolve)
        loop = asyncio.get_running_loop()
        if self._writer is None or self._writer.done():
            self._due = asyncio.Event()
            # An empty context: the writer serves every caller, it is in no request's trace.
            self._writer = loop.create_task(self._write_forever(), context=contextvars.Context())
        assert self._due is not None
        if delay <= 0:
            self._due.set()
        elif self._timer is None and not self._due.is_set():
            self._timer = loop.call_later(delay, self._due.set)

    async def _write_forever(self) -> None:
        assert self._due is not None
        while True:
            await self._due.wait()
            self._due.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            # What is queued now is due; what arrives meanwhile waits for its own flush.
            due = len(self._queue)
            while due:
                batch = self._queue[: min(due, BATCH)]
                if await self._write_batch(batch):
                    due -= len(batch)
                else:
                    await asyncio.sleep(RETRY_SECONDS)
                    due = len(self._queue)

    async def _write_batch(self, batch: list[_Queued]) -> bool:
        rows = [self._row(e.event, e.time) for e in batch if e.event is not None]
        try:
            await self._appender.append({audit_events.name: rows})
        except Exception as error:
            log.exception("audit write failed", extra={"events": len(rows)})
            # Callers that wait learn of it (their event is dropped: they fail with it); queued
            # resolves stay for the next attempt, and hold resolving until they are written.
            for entry in batch:
                if entry.done is not None and not entry.done.done():
                    entry.done.set_exception(error)
            self._queue[: len(batch)] = [e for e in batch if e.done is None]
            self._failing = bool(self._queue)
            return False
        self._failing = False
        del self._queue[: len(batch)]
        await self._touch(
            {e.event.credential_id for e in batch if e.event and e.event.used}  # type: ignore[misc]
        )
        for entry in batch:
            if entry.done is not None and not entry.done.done():
                entry.done.set_result(None)
        return True

    async def _touch(self, used: set[str]) -> None:
        now = self._clock.now()
        due = sorted(c for c in used if now - self._used_at.get(c, _NEVER) >= USE_TIME_STEP)
        if not due:
            return
        try:
            async with self._store.begin() as tx:
                await tx.touch_credentials(due, now)
        except Exception:  # metadata only: the events are written
            log.exception("marking credentials used failed")
            return
        if len(self._used_at) > 100_000:
            self._used_at.clear()
        self._used_at.update(dict.fromkeys(due, now))

    async def close(self) -> None:
        """Commits what is queued, then stops the writer."""
        if self._queue:
            try:
                await asyncio.wait_for(self.flush(), SHUTDOWN_SECONDS)
            except Exception:
                log.exception("audit events lost at shutdown", extra={"events": len(self._queue)})
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        self._appender.close()
