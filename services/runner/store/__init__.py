"""Runner's persistence: every query, inside a transaction (`Store.begin()`/`read()` → `Tx`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from services.kit.db import RowTx, row_dict
from services.kit.db import Store as KitStore
from services.runner.tables import (
    attempts,
    connections,
    failure_mails,
    idempotency_keys,
    notifications,
    runs,
    webhook_log,
    webhook_signatures,
)

# What a worker needs of a run; the event is loaded with it.
_RUN_WORK = [runs.c.id, runs.c.user_id, runs.c.connection_id, runs.c.trigger, runs.c.attempts,
             runs.c.max_attempts, runs.c.event, runs.c.create_time,
             runs.c.trace_parent]  # fmt: skip


def _page(table, query, after: int | None, size: int):
    if after is not None:
        query = query.where(table.c.seq < after)
    return query.order_by(table.c.seq.desc()).limit(size)


class Tx(RowTx):
    # connections
    async def add_connection(self, values: dict[str, Any]) -> None:
        await self.c.execute(insert(connections).values(**values))

    async def connection(self, user_id: str | None, connection_id: str) -> dict[str, Any] | None:
        query = select(connections).where(connections.c.id == connection_id)
        if user_id is not None:
            query = query.where(connections.c.user_id == user_id)
        return await self._one(query)

    async def connections_by_id(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        rows = await self._all(select(connections).where(connections.c.id.in_(ids)))
        return {r["id"]: r for r in rows}

    async def connection_by_token(self, token_sha256: str) -> dict[str, Any] | None:
        return await self._one(
            select(connections).where(connections.c.webhook_token_sha256 == token_sha256)
        )

    async def connections_page(
        self, user_id: str, after: int | None, size: int
    ) -> list[dict[str, Any]]:
        query = select(connections).where(connections.c.user_id == user_id)
        return await self._all(_page(connections, query, after, size))

    async def scheduled_connections(self) -> list[dict[str, Any]]:
        return [
            r
            for r in await self._all(select(connections).where(connections.c.status == "active"))
            if r["trigger"].get("type") == "schedule"
        ]

    async def update_connection(self, connection_id: str, **values: Any) -> None:
        await self.c.execute(
            update(connections).where(connections.c.id == connection_id).values(**values)
        )

    async def delete_connection(self, user_id: str, connection_id: str) -> bool:
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

    async def count_failure(self, connection_id: str) -> dict[str, Any] | None:
        await self.c.execute(
            update(connections)
            .where(connections.c.id == connection_id)
            .values(consecutive_failures=connections.c.consecutive_failures + 1)
        )
        return await self.connection(None, connection_id)

    # runs
    async def add_runs(self, values: list[dict[str, Any]]) -> None:
        await self.c.execute(insert(runs), values)

    async def run(self, user_id: str, run_id: str) -> dict[str, Any] | None:
        return await self._one(select(runs).where(runs.c.id == run_id, runs.c.user_id == user_id))

    async def runs_page(
        self, user_id: str, connection_id: str | None, after: int | None, size: int
    ) -> list[dict[str, Any]]:
        query = select(*[c for c in runs.c if c.name != "event"]).where(runs.c.user_id == user_id)
        if connection_id:
            query = query.where(runs.c.connection_id == connection_id)
        return await self._all(_page(runs, query, after, size))

    async def due_runs(self, now: datetime, limit: int) -> list[str]:
        """Queued runs whose time has come and running runs whose worker went silent."""
        query = (
            select(runs.c.id)
            .where(
                or_(
                    and_(runs.c.status == "queued", runs.c.next_attempt_time <= now),
                    and_(runs.c.status == "running", runs.c.lease_until < now),
                )
            )
            .order_by(runs.c.next_attempt_time)
            .limit(limit)
        )
        return [r[0] for r in await self.c.execute(query)]

    async def runs_to_push(self, now: datetime, stale: datetime, limit: int) -> list[str]:
        """For the Redis queue: due runs never pushed since they became due, pushed so long ago
        that the stream must have lost them, or claimed by a worker that went silent."""
        query = (
            select(runs.c.id)
            .where(
                or_(
                    and_(
                        runs.c.status == "queued",
                        runs.c.next_attempt_time <= now,
                        or_(runs.c.push_time.is_(None), runs.c.push_time < stale),
                    ),
                    and_(runs.c.status == "running", runs.c.lease_until < now),
                )
            )
            .order_by(runs.c.next_attempt_time)
            .limit(limit)
        )
        return [r[0] for r in await self.c.execute(query)]

    async def release_held(self, connection_id: str, now: datetime) -> None:
        """Runs held while their connection was paused go out now."""
        await self.c.execute(
            update(runs)
            .where(runs.c.connection_id == connection_id, runs.c.status == "queued")
            .values(next_attempt_time=now, push_time=None)
        )

    async def forget_pushes(self) -> None:
        await self.c.execute(update(runs).where(runs.c.status == "queued").values(push_time=None))

    async def mark_pushed(self, run_ids: list[str], now: datetime) -> None:
        await self.c.execute(
            update(runs)
            .where(runs.c.id.in_(run_ids), runs.c.status == "queued")
            .values(push_time=now)
        )

    async def claim(
        self, run_ids: list[str], now: datetime, lease_until: datetime, worker: str
    ) -> list[dict[str, Any]]:
        """Claims those of `run_ids` that are still claimable; the rest belong to someone else
        or are done. The condition is evaluated again under the row lock, so a run is claimed by
        one worker at a time."""
        statement = (
            update(runs)
            .where(
                runs.c.id.in_(run_ids),
                or_(
                    and_(runs.c.status == "queued", runs.c.next_attempt_time <= now),
                    and_(runs.c.status == "running", runs.c.lease_until < now),
                ),
            )
            .values(
                status="running",
                lease_until=lease_until,
                worker=worker,
                start_time=func.coalesce(runs.c.start_time, now),
            )
            .returning(*_RUN_WORK)
        )
        return [row_dict(r) for r in await self.c.execute(statement)]  # type: ignore[misc]

    async def renew_leases(self, run_ids: list[str], worker: str, until: datetime) -> None:
        await self.c.execute(
            update(runs)
            .where(runs.c.id.in_(run_ids), runs.c.worker == worker, runs.c.status == "running")
            .values(lease_until=until)
        )

    async def finish_runs(self, results: list[dict[str, Any]]) -> None:
        """Each result: id, worker, and the run's new values (status, attempts, error, …); a run
        is changed only while `worker` still holds it. One executemany per shape of change."""
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for result in results:
            shapes.setdefault(tuple(sorted(result)), []).append(result)
        for shape, rows in shapes.items():
            values = {k: bindparam(f"v_{k}") for k in shape if k not in ("id", "worker")}
            statement = (
                update(runs)
                .where(runs.c.id == bindparam("v_id"), runs.c.worker == bindparam("v_worker"))
                .values(**values)
            )
            await self.c.execute(statement, [{f"v_{k}": v for k, v in r.items()} for r in rows])

    # attempts
    async def add_attempts(self, values: list[dict[str, Any]]) -> None:
        if values:
            await self.c.execute(insert(attempts), values)

    async def attempts(self, run_id: str) -> list[dict[str, Any]]:
        return await self._all(
            select(attempts).where(attempts.c.run_id == run_id).order_by(attempts.c.number)
        )

    # webhooks log
    async def add_webhook_logs(self, values: list[dict[str, Any]]) -> None:
        await self.c.execute(insert(webhook_log), values)

    async def webhook_log_page(
        self, user_id: str, connection_id: str | None, after: int | None, size: int
    ) -> list[dict[str, Any]]:
        query = select(webhook_log).where(webhook_log.c.user_id == user_id)
        if connection_id:
            query = query.where(webhook_log.c.connection_id == connection_id)
        return await self._all(_page(webhook_log, query, after, size))

    # notifications
    async def add_notification(self, values: dict[str, Any]) -> None:
        await self.c.execute(insert(notifications).values(**values))

    async def notifications_page(
        self, user_id: str, connection_id: str | None, after: int | None, size: int
    ) -> list[dict[str, Any]]:
        query = select(notifications).where(notifications.c.user_id == user_id)
        if connection_id:
            query = query.where(notifications.c.connection_id == connection_id)
        return await self._all(_page(notifications, query, after, size))

    async def mark_read(self, user_id: str, notification_id: str, now: datetime) -> dict | None:
        await self.c.execute(
            update(notifications)
            .where(
                notifications.c.id == notification_id,
                notifications.c.user_id == user_id,
                notifications.c.read_time.is_(None),
            )
            .values(read_time=now)
        )
        return await self._one(
            select(notifications).where(
                notifications.c.id == notification_id, notifications.c.user_id == user_id
            )
        )

    # failure e-mails, gathered per connection
    async def gather_failure(
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
                return await self.gather_failure(user_id, connection_id, message, now, since)
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

    async def due_failure_mails(self, since: datetime, limit: int) -> list[dict[str, Any]]:
        """Connections with failures not mailed yet whose window (last mail before `since`)
        has ended."""
        return await self._all(
            select(failure_mails)
            .where(failure_mails.c.pending > 0, failure_mails.c.last_mail_time <= since)
            .limit(limit)
        )

    async def take_failure_mail(self, row: dict[str, Any], now: datetime, since: datetime) -> bool:
        """Takes a due mail for sending, unless another process took it (or a failure was
        counted) meanwhile: the condition is evaluated again under the row lock."""
        taken = await self.c.execute(
            update(failure_mails)
            .where(
                failure_mails.c.connection_id == row["connection_id"],
                failure_mails.c.pending == row["pending"],
                failure_mails.c.last_mail_time <= since,
            )
            .values(pending=0, last_mail_time=now)
        )
        return taken.rowcount == 1

    # idempotency
    async def idempotent_run(self, connection_id: str, key_sha256: str, since: datetime) -> str:
        found = (
            await self.c.execute(
                select(idempotency_keys.c.run_id).where(
                    idempotency_keys.c.connection_id == connection_id,
                    idempotency_keys.c.key_sha256 == key_sha256,
                    idempotency_keys.c.create_time >= since,
                )
            )
        ).first()
        return found[0] if found else ""

    async def remember_key(
        self, connection_id: str, key_sha256: str, run_id: str, now: datetime, since: datetime
    ) -> bool:
        """False when another request took the key first (the caller then answers its run)."""
        await self.c.execute(
            delete(idempotency_keys).where(
                idempotency_keys.c.connection_id == connection_id,
                idempotency_keys.c.key_sha256 == key_sha256,
                idempotency_keys.c.create_time < since,
            )
        )
        try:
            async with self.c.begin_nested():
                await self.c.execute(
                    insert(idempotency_keys).values(
                        connection_id=connection_id,
                        key_sha256=key_sha256,
                        run_id=run_id,
                        create_time=now,
                    )
                )
        except IntegrityError:
            return False
        return True

    # signed webhooks, for their replay window
    async def signed_run(self, connection_id: str, signature_sha256: str, now: datetime) -> str:
        found = (
            await self.c.execute(
                select(webhook_signatures.c.run_id).where(
                    webhook_signatures.c.connection_id == connection_id,
                    webhook_signatures.c.signature_sha256 == signature_sha256,
                    webhook_signatures.c.expire_time >= now,
                )
            )
        ).first()
        return found[0] if found else ""

    async def remember_signature(
        self,
        connection_id: str,
        signature_sha256: str,
        run_id: str,
        now: datetime,
        expire_time: datetime,
    ) -> bool:
        """False when another request with this signature took it first."""
        row = dict(connection_id=connection_id, signature_sha256=signature_sha256, run_id=run_id,
                   expire_time=expire_time)  # fmt: skip
        try:
            async with self.c.begin_nested():
                await self.c.execute(insert(webhook_signatures).values(**row))
            return True
        except IntegrityError:
            pass
        # Rarely, the row holding it is past its window and not purged yet: it is replaced.
        stale = await self.c.execute(
            delete(webhook_signatures).where(
                webhook_signatures.c.connection_id == connection_id,
                webhook_signatures.c.signature_sha256 == signature_sha256,
                webhook_signatures.c.expire_time < now,
            )
        )
        if not stale.rowcount:
            return False
        await self.c.execute(insert(webhook_signatures).values(**row))
        return True

    async def forget_signatures(self, now: datetime) -> int:
        """Drops signatures past their window (an index range: cheap when there are none)."""
        result = await self.c.execute(
            delete(webhook_signatures).where(webhook_signatures.c.expire_time < now)
        )
        return result.rowcount or 0


class Store(KitStore[Tx]):
    tx_class = Tx
