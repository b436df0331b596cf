"""Retention's persistence: every query, each inside a transaction (`Store.begin()` → `Tx`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from services.kit.clock import as_utc
from services.kit.db import RowTx
from services.kit.db import Store as KitStore
from services.retention.tables import erasure_cases, leases, purge_ledger, schedule_state

ACTIVE = ("open", "executing")


class Tx(RowTx):
    # ledger
    async def add_ledger_entry(self, values: dict[str, Any]) -> None:
        await self.c.execute(insert(purge_ledger).values(**values))

    async def ledger_page(
        self,
        after: tuple[datetime, str] | None,
        limit: int,
        participant: str = "",
        category: str = "",
    ) -> list[dict[str, Any]]:
        query = select(purge_ledger)
        if participant:
            query = query.where(purge_ledger.c.participant == participant)
        if category:
            query = query.where(purge_ledger.c.category == category)
        if after is not None:
            time, last_id = after
            query = query.where(
                or_(
                    purge_ledger.c.start_time < time,
                    and_(purge_ledger.c.start_time == time, purge_ledger.c.id < last_id),
                )
            )
        query = query.order_by(purge_ledger.c.start_time.desc(), purge_ledger.c.id.desc())
        return await self._all(query.limit(limit))

    async def last_purges(self) -> dict[tuple[str, str], datetime]:
        """{(participant, category): end of its newest successful purge}."""
        query = (
            select(
                purge_ledger.c.participant,
                purge_ledger.c.category,
                func.max(purge_ledger.c.end_time),
            )
            .where(purge_ledger.c.outcome == "ok")
            .group_by(purge_ledger.c.participant, purge_ledger.c.category)
        )
        return {(p, c): as_utc(t) for p, c, t in await self.c.execute(query)}

    # schedule
    async def last_runs(self) -> dict[str, datetime]:
        rows = await self._all(select(schedule_state))
        return {row["job"]: row["last_run_time"] for row in rows}

    async def set_last_run(self, job: str, when: datetime) -> None:
        done = await self.c.execute(
            update(schedule_state).where(schedule_state.c.job == job).values(last_run_time=when)
        )
        if done.rowcount == 0:
            try:
                async with self.c.begin_nested():
                    await self.c.execute(insert(schedule_state).values(job=job, last_run_time=when))
            except IntegrityError:  # another replica recorded it meanwhile
                await self.c.execute(
                    update(schedule_state)
                    .where(schedule_state.c.job == job)
                    .values(last_run_time=when)
                )

    # leases
    async def acquire_lease(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        """Takes the lease if free, expired or already ours; True when held by `holder`."""
        taken = await self.c.execute(
            update(leases)
            .where(
                leases.c.name == name,
                or_(leases.c.expire_time < now, leases.c.holder == holder),
            )
            .values(holder=holder, expire_time=until)
        )
        if taken.rowcount:
            return True
        try:
            async with self.c.begin_nested():
                await self.c.execute(
                    insert(leases).values(name=name, holder=holder, expire_time=until)
                )
        except IntegrityError:
            return False
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        await self.c.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))

    # erasure cases
    async def add_case(self, values: dict[str, Any]) -> bool:
        try:
            async with self.c.begin_nested():
                await self.c.execute(insert(erasure_cases).values(**values))
        except IntegrityError:  # another replica opened it meanwhile
            return False
        return True

    async def case(self, case_id: str) -> dict[str, Any] | None:
        return await self._one(select(erasure_cases).where(erasure_cases.c.id == case_id))

    async def active_cases(self) -> list[dict[str, Any]]:
        query = select(erasure_cases).where(erasure_cases.c.state.in_(ACTIVE))
        return await self._all(query.order_by(erasure_cases.c.open_time, erasure_cases.c.id))

    async def subjects_with_cases(self, refs: list[str]) -> set[str]:
        """The subject references among `refs` with a case that is not cancelled."""
        found: set[str] = set()
        for start in range(0, len(refs), 500):
            query = select(erasure_cases.c.subject_ref).where(
                erasure_cases.c.subject_ref.in_(refs[start : start + 500]),
                erasure_cases.c.state != "cancelled",
            )
            found.update(row[0] for row in await self.c.execute(query))
        return found

    async def update_case(self, case_id: str, **values: Any) -> None:
        await self.c.execute(
            update(erasure_cases).where(erasure_cases.c.id == case_id).values(**values)
        )

    async def cases_page(self, after: tuple[datetime, str] | None, limit: int) -> list[dict]:
        query = select(erasure_cases)
        if after is not None:
            time, last_id = after
            query = query.where(
                or_(
                    erasure_cases.c.open_time < time,
                    and_(erasure_cases.c.open_time == time, erasure_cases.c.id < last_id),
                )
            )
        query = query.order_by(erasure_cases.c.open_time.desc(), erasure_cases.c.id.desc())
        return await self._all(query.limit(limit))


class Store(KitStore[Tx]):
    tx_class = Tx
