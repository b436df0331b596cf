"""What a delivery leaves behind, written durably in group commits: many concurrent deliveries
share one transaction, each waits until its own outcome is committed.

An outcome updates its run (only while its worker still holds it), adds its attempts, and counts
the connection's failures: the Nth failed run in a row pauses the connection and tells the owner.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.kit.batching import GroupCommit
from services.kit.clock import Clock
from services.runner.store import Store, Tx

log = logging.getLogger("leadmesh.runner.recorder")


@dataclass
class Outcome:
    run: dict[str, Any]  # id, worker and the new values of the run's row
    connection_id: str
    user_id: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # "succeeded", "failed" (the run's last word), or "" (it goes on later)
    final: str = ""
    # Notifications besides the failure count's: e.g. a credential that needs reconnecting.
    notices: list[dict[str, Any]] = field(default_factory=list)


class Recorder:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        pause_after: int,
        on_notices: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.pause_after = pause_after
        self.on_notices = on_notices
        self._commits: GroupCommit[Outcome, None] = GroupCommit(
            self._write_and_tell, name="outcome write"
        )

    async def record(self, outcome: Outcome) -> None:
        """Returns once the outcome is durable; concurrent outcomes share one transaction."""
        await self._commits.submit(outcome)

    async def _write_and_tell(self, outcomes: list[Outcome]) -> None:
        notices = await self._write(outcomes)
        if notices and self.on_notices is not None:
            try:
                await self.on_notices(notices)
            except Exception as error:  # e-mail is best effort; the notice is stored
                log.warning("notice delivery failed", extra={"error": type(error).__name__})

    async def _write(self, outcomes: list[Outcome]) -> list[dict[str, Any]]:
        notices: list[dict[str, Any]] = []
        async with self.store.begin() as tx:
            await tx.finish_runs([o.run for o in outcomes])
            await tx.add_attempts([a for o in outcomes for a in o.attempts])
            succeeded = {o.connection_id for o in outcomes if o.final == "succeeded"}
            if succeeded:
                await tx.clear_failures(succeeded)
            for outcome in outcomes:
                notices.extend(outcome.notices)
                if outcome.final == "failed":
                    notices.extend(await self._failed(tx, outcome))
            for notice in notices:
                await tx.add_notification(notice)
        return notices

    async def _failed(self, tx: Tx, outcome: Outcome) -> list[dict[str, Any]]:
        now = self.clock.now()
        connection = await tx.count_failure(outcome.connection_id)
        out = [
            self.notice(
                outcome.user_id,
                outcome.connection_id,
                "run_failed",
                f"A run failed after {outcome.run.get('attempts', 0)} attempt(s): "
                f"{outcome.run.get('error') or 'unknown error'}",
                run_id=outcome.run["id"],
            )
        ]
        if connection is None or connection["status"] != "active":
            return out
        if connection["consecutive_failures"] >= self.pause_after:
            reason = f"{connection['consecutive_failures']} runs failed in a row"
            await tx.update_connection(
                connection["id"], status="paused", pause_reason=reason, update_time=now
            )
            out.append(
                self.notice(
                    outcome.user_id,
                    outcome.connection_id,
                    "connection_paused",
                    f"The connection {connection['name']!r} was paused: {reason}. "
                    "Fix the cause and activate it again.",
                )
            )
        return out

    def notice(
        self,
        user_id: str,
        connection_id: str | None,
        kind: str,
        message: str,
        *,
        run_id: str | None = None,
        credential_id: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "user_id": user_id,
            "connection_id": connection_id,
            "kind": kind,
            "message": message[:1000],
            "run_id": run_id,
            "credential_id": credential_id,
            "create_time": self.clock.now(),
            "read_time": None,
        }
