"""Retrying a finished run: a new queued run of its connection carrying the same event, for as
long as retention keeps that event (the run's execution details). The first run is left as it
was, so the activity stream keeps both outcomes."""

from __future__ import annotations

from services.kit.errors import FailedPrecondition
from services.runner.activity import Activity
from services.runner.connections import Connections
from services.runner.ingest import Ingest
from services.runner.model import RunRecord

UNFINISHED = ("queued", "running")


class Retries:
    def __init__(self, activity: Activity, connections: Connections, ingest: Ingest) -> None:
        self.activity = activity
        self.connections = connections
        self.ingest = ingest

    async def retry(self, user_id: str, run_id: str) -> RunRecord:
        """RUN_NOT_FOUND, RUN_NOT_FINISHED, RUN_DETAILS_PURGED; the connection's own refusals
        (CONNECTION_NOT_FOUND once deleted, CONNECTION_PAUSED, ACCOUNT_DELETED)."""
        run, _ = await self.activity.run(user_id, run_id)  # opened: what its owner can read
        if run.status in UNFINISHED:
            raise FailedPrecondition("RUN_NOT_FINISHED", f"the run is still {run.status}")
        if run.event is None:
            raise FailedPrecondition(
                "RUN_DETAILS_PURGED",
                "the run's event was purged by retention: it can no longer be retried",
            )
        connection = await self.connections.get(user_id, run.connection_id)
        return await self.ingest.queue_event(connection, run.event, run.trigger)
