"""Schedule triggers: APScheduler fires each active scheduled connection (cron in UTC, or every N
seconds); each firing queues a run like a manual one. Jobs follow connection changes; a user
whose deletion was requested (suspensions.py) has no schedule fire again."""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from services.runner.ingest import Ingest
from services.runner.model import Connection
from services.runner.store import Store

log = logging.getLogger("leadmesh.runner.schedules")


class Schedules:
    def __init__(
        self, store: Store, ingest: Ingest, suspended: Container[str] = frozenset()
    ) -> None:
        self.store = store
        self.ingest = ingest
        self.suspended = suspended
        self.scheduler = AsyncIOScheduler(timezone="UTC")

    async def start(self) -> None:
        async with self.store.read() as tx:
            rows = await tx.connections.scheduled()
        self.scheduler.start()
        for row in rows:
            if row.user_id not in self.suspended:
                self._add(row)

    async def changed(self, connection_id: str, row: Connection | None) -> None:
        if self.scheduler.get_job(connection_id):
            self.scheduler.remove_job(connection_id)
        if row is not None and row.status == "active" and row.trigger["type"] == "schedule":
            self._add(row)

    def stop(self, connection_ids: Iterable[str]) -> int:
        """Removes these connections' jobs (a user being erased); returns how many there were.
        Jobs hold connection ids only, so nothing of the user stays in the scheduler."""
        stopped = 0
        for connection_id in connection_ids:
            if self.scheduler.get_job(connection_id):
                self.scheduler.remove_job(connection_id)
                stopped += 1
        return stopped

    def _add(self, row: Connection) -> None:
        trigger = row.trigger
        when = (
            CronTrigger.from_crontab(trigger["cron"], timezone="UTC")
            if trigger.get("cron")
            else IntervalTrigger(seconds=int(trigger["every_seconds"]), timezone="UTC")
        )
        self.scheduler.add_job(
            self._fire,
            when,
            args=[row.id],
            id=row.id,
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=60,
        )

    async def _fire(self, connection_id: str) -> None:
        async with self.store.read() as tx:
            row = await tx.connections.get(None, connection_id)
        if row is not None and row.user_id in self.suspended:
            if self.scheduler.get_job(connection_id):
                self.scheduler.remove_job(connection_id)
            log.info("schedule of a suspended user stopped", extra={"connection_id": row.id})
            return
        if row is None:  # deleted (or erased) by another process: this job is done too
            self.stop([connection_id])
            return
        if row.status != "active":
            return
        try:
            run = await self.ingest.manual(row, None, "schedule")
        except Exception:
            log.exception("a scheduled run could not be queued", extra={"connection_id": row.id})
            return
        log.info("scheduled run queued", extra={"run_id": run.id, "connection_id": row.id})

    async def close(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
