"""The webhooks log repository: what arrived (already redacted by ingest), newest first."""

from __future__ import annotations

from sqlalchemy import insert, select

from services.kit.db import RowTx
from services.runner.model import WebhookEntry
from services.runner.store.paging import page
from services.runner.tables import webhook_log


class WebhookLog(RowTx):
    async def add(self, entries: list[WebhookEntry]) -> None:
        await self.c.execute(insert(webhook_log), [entry.values() for entry in entries])

    async def page(
        self, user_id: str, connection_id: str | None, after: int | None, size: int
    ) -> list[WebhookEntry]:
        query = select(webhook_log).where(webhook_log.c.user_id == user_id)
        if connection_id:
            query = query.where(webhook_log.c.connection_id == connection_id)
        rows = await self._all(page(webhook_log, query, after, size))
        return [WebhookEntry.from_row(row) for row in rows]
