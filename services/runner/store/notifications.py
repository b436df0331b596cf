"""The notifications repository: in-app notifications, one per event, read or purged on their
own (the failure e-mails gathered per connection are `failure_mails.py`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, select, update

from services.kit.db import RowTx
from services.runner.model import Notification
from services.runner.store.paging import page
from services.runner.tables import notifications


class Notifications(RowTx):
    async def add(self, notification: Notification) -> None:
        await self.c.execute(insert(notifications).values(**notification.values()))

    async def page(
        self,
        user_id: str,
        connection_id: str | None,
        after: int | None,
        size: int,
        unread: bool = False,
    ) -> list[Notification]:
        query = select(notifications).where(notifications.c.user_id == user_id)
        if connection_id:
            query = query.where(notifications.c.connection_id == connection_id)
        if unread:
            query = query.where(notifications.c.read_time.is_(None))
        return [
            Notification.from_row(r)
            for r in await self._all(page(notifications, query, after, size))
        ]

    async def unread_count(self, user_id: str) -> int:
        query = select(func.count()).where(
            notifications.c.user_id == user_id, notifications.c.read_time.is_(None)
        )
        return int((await self.c.execute(query)).scalar_one())

    async def mark_read(
        self, user_id: str, notification_id: str, now: datetime
    ) -> Notification | None:
        await self.c.execute(
            update(notifications)
            .where(
                notifications.c.id == notification_id,
                notifications.c.user_id == user_id,
                notifications.c.read_time.is_(None),
            )
            .values(read_time=now)
        )
        row = await self._one(
            select(notifications).where(
                notifications.c.id == notification_id, notifications.c.user_id == user_id
            )
        )
        return None if row is None else Notification.from_row(row)
