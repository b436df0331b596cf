"""The runs repository: the queue's truth. Claims and leases are conditional updates of a run's
row, so a run is never held by two workers at once; a worker's result changes a run only while
that worker still holds it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update

from services.kit.clock import as_utc
from services.kit.db import RowTx, row_dict
from services.runner.model import Backlog, NewRun, Run, RunFilter, RunRecord, RunResult
from services.runner.store.paging import page
from services.runner.tables import connections, runs

# What a worker needs of a run; the event is loaded with it.
_RUN_WORK = [runs.c.id, runs.c.user_id, runs.c.connection_id, runs.c.trigger, runs.c.attempts,
             runs.c.max_attempts, runs.c.event, runs.c.create_time,
             runs.c.trace_parent]  # fmt: skip
ALL_RUNS = RunFilter()
# What the owner reads of a run in a listing: all but the event (execution details, read alone).
_LISTED = [c for c in runs.c if c.name != "event"]


class Runs(RowTx):
    async def add(self, added: list[NewRun]) -> None:
        await self.c.execute(insert(runs), [run.values() for run in added])

    async def get(self, user_id: str, run_id: str) -> RunRecord | None:
        row = await self._one(select(runs).where(runs.c.id == run_id, runs.c.user_id == user_id))
        return None if row is None else RunRecord.from_row(row)

    async def any_owner(self, run_id: str) -> RunRecord | None:
        """For the operator: the run whoever owns it (its event left out)."""
        row = await self._one(select(*_LISTED).where(runs.c.id == run_id))
        return None if row is None else RunRecord.from_row(row)

    async def backlog(self, now: datetime) -> Backlog:
        """Runs not finished, those of them due now, and the oldest one's creation time (UTC:
        SQLite's min() of a time column comes back without its zone)."""
        pending = runs.c.status.in_(("queued", "running"))
        due = and_(runs.c.status == "queued", runs.c.next_attempt_time <= now)
        query = select(
            func.count(),
            func.coalesce(func.sum(case((due, 1), else_=0)), 0),
            func.min(runs.c.create_time),
        ).where(pending)
        count, due_count, oldest = (await self.c.execute(query)).one()
        return Backlog(int(count), int(due_count), None if oldest is None else as_utc(oldest))

    async def page(
        self,
        user_id: str,
        connection_id: str | None,
        after: int | None,
        size: int,
        only: RunFilter = ALL_RUNS,
    ) -> list[RunRecord]:
        query = select(*_LISTED).where(runs.c.user_id == user_id)
        if connection_id:
            query = query.where(runs.c.connection_id == connection_id)
        if only.status:
            query = query.where(runs.c.status == only.status)
        if only.since is not None:
            query = query.where(runs.c.create_time >= only.since)
        if only.until is not None:
            query = query.where(runs.c.create_time < only.until)
        return [RunRecord.from_row(row) for row in await self._all(page(runs, query, after, size))]

    async def newest_of(self, connection_ids: list[str]) -> dict[str, RunRecord]:
        """Each connection's newest run, for a page of connections in one query: a max(seq)
        per connection is one probe of the (connection_id, seq) index, where a GROUP BY would
        read every run of theirs."""
        if not connection_ids:
            return {}
        newest_seq = (
            select(func.max(runs.c.seq))
            .where(runs.c.connection_id == connections.c.id)
            .scalar_subquery()
        )
        newest = select(newest_seq).where(connections.c.id.in_(connection_ids))
        rows = await self._all(select(*_LISTED).where(runs.c.seq.in_(newest)))
        return {row["connection_id"]: RunRecord.from_row(row) for row in rows}

    async def due(self, now: datetime, limit: int) -> list[str]:
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

    async def to_push(self, now: datetime, stale: datetime, limit: int) -> list[str]:
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
    ) -> list[Run]:
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
        return [Run.from_row(row_dict(r)) for r in await self.c.execute(statement)]  # type: ignore[arg-type]

    async def renew_leases(self, run_ids: list[str], worker: str, until: datetime) -> None:
        await self.c.execute(
            update(runs)
            .where(runs.c.id.in_(run_ids), runs.c.worker == worker, runs.c.status == "running")
            .values(lease_until=until)
        )

    async def finish(self, results: list[RunResult]) -> None:
        """Each result changes its run only while its worker still holds it. One executemany
        per shape of change (a run that ends, a run that goes out again)."""
        shapes: dict[tuple[str, ...], list[dict[str, object]]] = {}
        for result in results:
            changes = result.changes()
            params = {f"v_{k}": v for k, v in changes.items()}
            params["v_id"], params["v_worker"] = result.id, result.worker
            shapes.setdefault(tuple(sorted(changes)), []).append(params)
        for shape, rows in shapes.items():
            statement = (
                update(runs)
                .where(runs.c.id == bindparam("v_id"), runs.c.worker == bindparam("v_worker"))
                .values(**{k: bindparam(f"v_{k}") for k in shape})
            )
            await self.c.execute(statement, rows)
