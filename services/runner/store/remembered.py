"""Digests remembered per connection until a time, each answering the run it first made: the
Idempotency-Keys of the last `RUNNER_IDEMPOTENCY_HOURS` and the signatures still inside their
replay window. A digest is live while its row's time is at or after `bound` (for keys, the
start of the window: their time is when they were taken; for signatures, now: their time is
when their window ends). Never stores a key or a signature itself, only its SHA-256.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Table, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.runner.tables import idempotency_keys, webhook_signatures


class Remembered:
    def __init__(self, connection: AsyncConnection, table: Table, digest: str, time: str) -> None:
        self.c = connection
        self._table = table
        self._names = (digest, time)
        self._digest: Column = table.c[digest]
        self._time: Column = table.c[time]

    async def first_run(self, connection_id: str, digest: str, bound: datetime) -> str:
        """The run `digest` made on the connection, while live; "" for none."""
        found = (
            await self.c.execute(
                select(self._table.c.run_id).where(
                    self._table.c.connection_id == connection_id,
                    self._digest == digest,
                    self._time >= bound,
                )
            )
        ).first()
        return found[0] if found else ""

    async def remember(
        self, connection_id: str, digest: str, run_id: str, time: datetime, bound: datetime
    ) -> bool:
        """False when another request with this digest took it first (the caller then answers
        its run). A row past `bound` not purged yet is replaced."""
        digest_name, time_name = self._names
        row = {"connection_id": connection_id, digest_name: digest, "run_id": run_id,
               time_name: time}  # fmt: skip
        try:
            async with self.c.begin_nested():
                await self.c.execute(insert(self._table).values(**row))
            return True
        except IntegrityError:
            pass
        stale = await self.c.execute(
            delete(self._table).where(
                self._table.c.connection_id == connection_id,
                self._digest == digest,
                self._time < bound,
            )
        )
        if not stale.rowcount:
            return False
        await self.c.execute(insert(self._table).values(**row))
        return True

    async def forget(self, bound: datetime) -> int:
        """Drops every digest past `bound` (an index range: cheap when there are none)."""
        result = await self.c.execute(delete(self._table).where(self._time < bound))
        return result.rowcount or 0


def idempotency(connection: AsyncConnection) -> Remembered:
    return Remembered(connection, idempotency_keys, "key_sha256", "create_time")


def signatures(connection: AsyncConnection) -> Remembered:
    return Remembered(connection, webhook_signatures, "signature_sha256", "expire_time")
