"""What the operator reads of the runner: the queue's depth and age, and the trace a run's delivery
continued. Ids, counts and times only: never a run's event, its owner or its destination."""

from __future__ import annotations

from datetime import datetime

from services.kit.clock import Clock
from services.kit.errors import InvalidArgument, NotFound
from services.runner.model import Backlog, RunRecord
from services.runner.store import Store


class Operations:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def backlog(self) -> tuple[Backlog, datetime]:
        """The queue as of now, and that now (the runner's clock)."""
        now = self.clock.now()
        async with self.store.read() as tx:
            return await tx.runs.backlog(now), now

    async def run(self, run_id: str) -> RunRecord:
        if not run_id:
            raise InvalidArgument("RUN_ID_REQUIRED", "give the run's id")
        async with self.store.read() as tx:
            run = await tx.runs.any_owner(run_id)
        if run is None:
            raise NotFound("RUN_NOT_FOUND", "no such run (unknown, or past its retention)")
        return run
