"""What the owner reads: runs with their attempts, the activity stream, the webhooks log and
notifications, each newest first, another user's never (NOT_FOUND). A run whose execution
details were purged (retention) is still read and listed, without its event and attempts."""

from __future__ import annotations

from dataclasses import replace

from services.kit.clock import Clock
from services.kit.errors import NotFound
from services.runner.connections import next_page, page_args
from services.runner.model import Attempt, Notification, RunRecord
from services.runner.store import Store


class Activity:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def run(self, user_id: str, run_id: str) -> tuple[RunRecord, list[Attempt]]:
        async with self.store.read() as tx:
            run = await tx.runs.get(user_id, run_id)
            if run is None:
                raise NotFound("RUN_NOT_FOUND", "no such run")
            if run.details_purge_time is not None:  # purged: no details, whatever is left
                return replace(run, event=None), []
            return run, await tx.attempts.of_run(run_id)

    async def runs(
        self, user_id: str, connection_id: str, size: int, token: str
    ) -> tuple[list[RunRecord], str]:
        size, after = page_args(size, token)
        async with self.store.read() as tx:
            rows = await tx.runs.page(user_id, connection_id or None, after, size + 1)
        return next_page(rows, size)

    async def webhook_log(self, user_id: str, connection_id: str, size: int, token: str):
        size, after = page_args(size, token)
        async with self.store.read() as tx:
            rows = await tx.webhook_log.page(user_id, connection_id or None, after, size + 1)
        return next_page(rows, size)

    async def notifications(self, user_id: str, connection_id: str, size: int, token: str):
        size, after = page_args(size, token)
        async with self.store.read() as tx:
            rows = await tx.notifications.page(user_id, connection_id or None, after, size + 1)
        return next_page(rows, size)

    async def mark_read(self, user_id: str, notification_id: str) -> Notification:
        async with self.store.begin() as tx:
            row = await tx.notifications.mark_read(user_id, notification_id, self.clock.now())
        if row is None:
            raise NotFound("NOTIFICATION_NOT_FOUND", "no such notification")
        return row
