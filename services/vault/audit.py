"""The audit log: every create, resolve, refresh, update and delete — when, which service, which
user, credential and connection, and the outcome; never secret material.

Writes are group-committed: concurrent callers' events go into one transaction, and each caller
returns only once its event is durable. Resolves under load then cost one commit per batch rather
than one each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.kit.batching import GroupCommit
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
        self._commits: GroupCommit[Event, None] = GroupCommit(self._write)

    async def record(self, event: Event) -> None:
        """Returns once the event is written; concurrent events share one transaction."""
        await self._commits.submit(event)

    async def _write(self, batch: list[Event]) -> None:
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
            for e in batch
        ]
        used = sorted({e.credential_id for e in batch if e.used and e.credential_id})
        try:
            async with self._store.begin() as tx:
                await tx.audit(rows)
                await tx.touch_credentials(used, now)
        except Exception:  # the callers fail with it: no event is silently lost
            log.exception("audit write failed")
            raise

    async def close(self) -> None:
        await self._commits.close()
