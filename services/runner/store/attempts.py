"""The attempts repository: each delivery attempt of a run, in order."""

from __future__ import annotations

from sqlalchemy import insert, select

from services.kit.db import RowTx
from services.runner.model import Attempt
from services.runner.tables import attempts


class Attempts(RowTx):
    async def add(self, added: list[Attempt]) -> None:
        if added:
            await self.c.execute(insert(attempts), [attempt.values() for attempt in added])

    async def of_run(self, run_id: str) -> list[Attempt]:
        query = select(attempts).where(attempts.c.run_id == run_id).order_by(attempts.c.number)
        return [Attempt.from_row(row) for row in await self._all(query)]
