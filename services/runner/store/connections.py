"""The connections repository: a user's connections, by id, by webhook token, scheduled ones,
and their consecutive-failure count. Never checks who may see a connection beyond `user_id`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update

from services.kit.db import RowTx
from services.runner.model import Connection
from services.runner.store.paging import page
from services.runner.tables import connections


class Connections(RowTx):
    async def add(self, connection: Connection) -> None:
        await self.c.execute(insert(connections).values(**connection.values()))

    async def get(self, user_id: str | None, connection_id: str) -> Connection | None:
        query = select(connections).where(connections.c.id == connection_id)
        if user_id is not None:
            query = query.where(connections.c.user_id == user_id)
        return _connection(await self._one(query))

    async def by_ids(self, ids: list[str]) -> dict[str, Connection]:
        rows = await self._all(select(connections).where(connections.c.id.in_(ids)))
        return {r["id"]: Connection.from_row(r) for r in rows}

    async def by_token(self, token_sha256: str) -> Connection | None:
        return _connection(
            await self._one(
                select(connections).where(connections.c.webhook_token_sha256 == token_sha256)
            )
        )

    async def page(self, user_id: str, after: int | None, size: int) -> list[Connection]:
        query = select(connections).where(connections.c.user_id == user_id)
        return [
            Connection.from_row(r) for r in await self._all(page(connections, query, after, size))
        ]

    async def scheduled(self) -> list[Connection]:
        return [
            Connection.from_row(r)
            for r in await self._all(select(connections).where(connections.c.status == "active"))
            if r["trigger"].get("type") == "schedule"
        ]

    async def update(self, connection_id: str, **values: Any) -> None:
        await self.c.execute(
            update(connections).where(connections.c.id == connection_id).values(**values)
        )

    async def delete(self, user_id: str, connection_id: str) -> bool:
        result = await self.c.execute(
            delete(connections).where(
                connections.c.id == connection_id, connections.c.user_id == user_id
            )
        )
        return result.rowcount == 1

    async def clear_failures(self, connection_ids: set[str]) -> None:
        await self.c.execute(
            update(connections)
            .where(connections.c.id.in_(connection_ids), connections.c.consecutive_failures != 0)
            .values(consecutive_failures=0)
        )

    async def count_failure(self, connection_id: str) -> Connection | None:
        await self.c.execute(
            update(connections)
            .where(connections.c.id == connection_id)
            .values(consecutive_failures=connections.c.consecutive_failures + 1)
        )
        return await self.get(None, connection_id)


def _connection(row: dict[str, Any] | None) -> Connection | None:
    return None if row is None else Connection.from_row(row)
