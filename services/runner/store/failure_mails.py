"""The failure e-mails repository: failed runs gathered per connection, so that its owner gets
at most one e-mail per window (`recorder.py`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from services.kit.db import RowTx
from services.runner.model import FailureMail
from services.runner.tables import failure_mails


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
                    first = FailureMail(
                        connection_id=connection_id,
                        user_id=user_id,
                        last_mail_time=None,
                        pending=1,
                        last_message=message,
                    )
                    await self.c.execute(insert(failure_mails).values(**first.values()))
            except IntegrityError:  # another recorder made it first
                return await self.gather(user_id, connection_id, message, now, since)
        row = await self._one(
            select(failure_mails).where(failure_mails.c.connection_id == connection_id)
        )
        assert row is not None
        gathered = FailureMail.from_row(row)
        if gathered.last_mail_time is not None and gathered.last_mail_time > since:
            return 0
        await self.c.execute(
            update(failure_mails)
            .where(failure_mails.c.connection_id == connection_id)
            .values(pending=0, last_mail_time=now)
        )
        return gathered.pending

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
