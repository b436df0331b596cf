"""The notifications repositories: in-app notifications (one per event, read or purged on their
own) and the failure e-mails gathered per connection (at most one per window)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from services.kit.db import RowTx
from services.runner.model import FailureMail, Notification
from services.runner.store.paging import page
from services.runner.tables import failure_mails, notifications


class Notifications(RowTx):
    async def add(self, notification: Notification) -> None:
        await self.c.execute(insert(notifications).values(**notification.values()))

    async def page(
        self, user_id: str, connection_id: str | None, after: int | None, size: int
    ) -> list[Notification]:
        query = select(notifications).where(notifications.c.user_id == user_id)
        if connection_id:
            query = query.where(notifications.c.connection_id == connection_id)
        return [
            Notification.from_row(r)
            for r in await self._all(page(notifications, query, after, size))
        ]

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


class FailureMails(RowTx):
    async def gather(
        self, user_id: str, connection_id: str, message: str, now: datetime, since: datetime
    ) -> int:
        """Counts a failed run towards its connection's next failure e-mail. Returns how many
        failures to mail now (this one and any still pending) when the connection was last
        mailed before `since` (or never), else 0: the mail waits for the window's end."""
        counted = await self.c.execute(  # the row lock orders concurrent recorders (PostgreSQL)
            update(failure_mails)
            .where(failure_mails.c.connection_id == connection_id)
            .values(pending=failure_mails.c.pending + 1, last_message=message)
        )
        if counted.rowcount == 0:
            try:
                async with self.c.begin_nested():
                    await self.c.execute(
                        insert(failure_mails).values(
                            connection_id=connection_id,
                            user_id=user_id,
                            last_mail_time=None,
                            pending=1,
                            last_message=message,
                        )
                    )
            except IntegrityError:  # another recorder made it first
                return await self.gather(user_id, connection_id, message, now, since)
        row = await self._one(
            select(failure_mails).where(failure_mails.c.connection_id == connection_id)
        )
        assert row is not None
        if row["last_mail_time"] is not None and row["last_mail_time"] > since:
            return 0
        await self.c.execute(
            update(failure_mails)
            .where(failure_mails.c.connection_id == connection_id)
            .values(pending=0, last_mail_time=now)
        )
        return row["pending"]

    async def due(self, since: datetime, limit: int) -> list[FailureMail]:
        """Connections with failures not mailed yet whose window (last mail before `since`)
        has ended."""
        query = (
            select(failure_mails)
            .where(failure_mails.c.pending > 0, failure_mails.c.last_mail_time <= since)
            .limit(limit)
        )
        return [FailureMail.from_row(row) for row in await self._all(query)]

    async def take(self, due: FailureMail, now: datetime, since: datetime) -> bool:
        """Takes a due mail for sending, unless another process took it (or a failure was
        counted) meanwhile: the condition is evaluated again under the row lock."""
        taken = await self.c.execute(
            update(failure_mails)
            .where(
                failure_mails.c.connection_id == due.connection_id,
                failure_mails.c.pending == due.pending,
                failure_mails.c.last_mail_time <= since,
            )
            .values(pending=0, last_mail_time=now)
        )
        return taken.rowcount == 1
