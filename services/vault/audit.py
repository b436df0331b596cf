"""The audit log: every create, resolve, refresh, update and delete — when, which service, which
user, credential and connection, and the outcome; never secret material.

Writes are group-committed: concurrent callers' events go into one transaction, and each caller
returns only once its event is durable. Resolves under load then cost one commit per batch rather
than one each.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.kit.clock import Clock
from services.vault.store import Store

log = logging.getLogger("leadmesh.vault.audit")


@dataclass(frozen=True)
class Event:
    caller: str
    user_id: str
    action: str
    outcome: str = "ok"
    credential_id: str | None = None
    connection_id: str | None = None
    # Also set the credential's last_use_time (a resolve that succeeded).
    used: bool = False


class AuditLog:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._pending: list[tuple[Event, asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task | None = None

    async def record(self, event: Event) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        self._wakeup.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_forever())
        await future

    async def _write_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[tuple[Event, asyncio.Future]]) -> None:
        now = self._clock.now()
        rows = [
            {
                "event_time": now,
                "caller": e.caller,
                "user_id": e.user_id,
                "credential_id": e.credential_id,
                "connection_id": e.connection_id,
                "action": e.action,
                "outcome": e.outcome[:48],
            }
            for e, _ in batch
        ]
        used = sorted({e.credential_id for e, _ in batch if e.used and e.credential_id})
        try:
            async with self._store.begin() as tx:
                await tx.audit(rows)
                await tx.touch_credentials(used, now)
        except Exception as error:  # the callers fail with it: no event is silently lost
            log.exception("audit write failed")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def close(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            await self._write(batch)
        if self._writer is not None:
            self._writer.cancel()
