"""The attempts repository: each delivery attempt of a run, in order."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from services.kit.db import RowTx
from services.runner.tables import attempts


class Attempts(RowTx):
    async def add(self, values: list[dict[str, Any]]) -> None:
        if values:
            await self.c.execute(insert(attempts), values)

    async def of_run(self, run_id: str) -> list[dict[str, Any]]:
        return await self._all(
            select(attempts).where(attempts.c.run_id == run_id).order_by(attempts.c.number)
        )
