"""Deletion requests as every service that holds a user's processing honours them.

A service records each user whose deletion was requested in a `suspended_users` table of its own
(user_id, suspend_time) and refuses their work from then on; `SuspendedUsers` is that table and
its ids in memory (`users`: a set, so each hot path pays one lookup). Identity's record is the
truth: `requested_deletions` pages through its `ListDeletionRequests`, and `Reconciler` runs a
service's pass at start-up and then every few seconds, so a user whose deletion the service was
never told of directly (it was down, the gateway's call failed) is suspended within one interval.
A failed pass is logged and tried again at the next interval; it never stops the service.

A suspension is lifted when identity no longer lists the user: the deletion was cancelled (or the
account is erased, and its data with it). Only a complete listing lifts anything — every page
answered — so an identity outage or a failed page never lifts anyone; and only suspensions older
than the listing by `LIFT_MARGIN`, so one recorded by another process while the listing was read
(a SuspendUser racing the pass) waits for the next pass. Processes that only read the table
(`load`, the runner's worker processes) drop what another process lifted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta

import grpc
from leadmesh.identity.v1 import identity_pb2
from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import Table, delete, insert, select
from sqlalchemy.exc import IntegrityError

from services.kit.clock import Clock, as_utc
from services.kit.db import Store

log = logging.getLogger("leadmesh.deletions")

PAGE_SIZE = 500
# After a pass identity did not answer.
RETRY_SECONDS = 2.0
# A suspension is lifted only when recorded this long before the listing that no longer names
# the user began: more than the clock skew between the mesh's machines (NTP keeps it well under a
# second; a cancelled deletion waits this long, plus a pass, to take effect).
LIFT_MARGIN = timedelta(seconds=10)
LIFT_CHUNK = 500


async def requested_deletions(identity) -> set[str]:
    """The id of every account whose deletion identity recorded (`identity`: its stub): the whole
    listing, or the error of the page that failed (never a partial set)."""
    found: set[str] = set()
    token = ""
    while True:
        reply = await identity.ListDeletionRequests(
            identity_pb2.ListDeletionRequestsRequest(page_size=PAGE_SIZE, page_token=token)
        )
        found.update(d.account_id for d in reply.deletions)
        token = reply.next_page_token
        if not token:
            return found


class SuspendedUsers:
    """A service's `suspended_users` table and, in `users`, its ids in this process."""

    # Whether every reconcile pass runs `also` even when no user is new (the runner cancels runs
    # that a delivery under way re-queued after the suspension).
    sweeps = False

    def __init__(self, store: Store, clock: Clock, table: Table) -> None:
        self.store = store
        self.clock = clock
        self.table = table
        # Changed only in place: the service's hot paths hold this very set.
        self.users: set[str] = set()
        # Loading, suspending and lifting in this process one at a time: a load that read the
        # table just before a suspension committed must not drop the user it added.
        self._changing = asyncio.Lock()

    async def load(self, *, traced: bool = True) -> int:
        """Makes `users` the table's ids (another process may have suspended or lifted some);
        returns how many users were new to this process. Periodic reloads are not traced (a span
        each time that almost always finds nothing)."""
        async with self._changing:
            if traced:
                found = set(await self._read())
            else:
                with suppress_instrumentation():
                    found = set(await self._read())
            new, gone = found - self.users, self.users - found
            self.users |= new
            self.users -= gone
        return len(new)

    async def _read(self) -> dict[str, datetime]:
        """{user id: suspend time} of the table."""
        table = self.table
        async with self.store.read() as tx:
            rows = await tx.c.execute(select(table.c.user_id, table.c.suspend_time))
            return {user_id: as_utc(when) for user_id, when in rows}

    async def suspend(self, user_ids: Iterable[str]) -> int:
        """Records the users (each at most once) and runs `also` in the same transaction;
        returns what `also` returns."""
        async with self._changing:
            return await self._suspend(user_ids)

    async def _suspend(self, user_ids: Iterable[str]) -> int:
        ids = [u for u in dict.fromkeys(user_ids) if u and u not in self.users]
        now = self.clock.now()
        async with self.store.begin() as tx:
            for user_id in ids:
                try:
                    # One savepoint each: another process may record the same user meanwhile.
                    async with tx.c.begin_nested():
                        await tx.c.execute(
                            insert(self.table).values(user_id=user_id, suspend_time=now)
                        )
                except IntegrityError:
                    continue
                log.info("user suspended", extra={"user_id": user_id})
            done = await self.also(tx, now)
        self.users.update(ids)
        return done

    async def also(self, tx, now: datetime) -> int:
        """What the service does with its suspended users' work when one is suspended."""
        return 0

    async def lift(self, listed: set[str], listing_start: datetime) -> list[str]:
        """Lifts the suspension of every user not in `listed` (identity's complete listing, read
        from `listing_start` on) whose suspension is older than the listing by LIFT_MARGIN;
        returns their ids."""
        table = self.table
        async with self._changing:
            recorded = await self._read()
            lifted = sorted(
                user_id
                for user_id, when in recorded.items()
                if user_id not in listed and when < listing_start - LIFT_MARGIN
            )
            for start in range(0, len(lifted), LIFT_CHUNK):
                chunk = lifted[start : start + LIFT_CHUNK]
                async with self.store.begin() as tx:
                    await tx.c.execute(delete(table).where(table.c.user_id.in_(chunk)))
            self.users.difference_update(lifted)
        for user_id in lifted:
            log.info("suspension lifted", extra={"user_id": user_id})
        return lifted

    async def reconcile(self, identity) -> int:
        """One pass against identity's record (`identity`: its stub), after picking up what
        other processes of the service recorded: suspends whom it lists, lifts whom it no
        longer lists; returns how many users were newly suspended."""
        await self.load(traced=False)
        started = self.clock.now()
        listed = await requested_deletions(identity)  # raises unless every page answered
        missing = listed - self.users
        if missing or (self.sweeps and self.users):
            await self.suspend(missing)
        await self.lift(listed, started)
        return len(missing)


class Reconciler:
    """Runs `reconcile` (returning how many users it newly suspended) now and every `every`
    seconds in the background until `stop()`."""

    def __init__(self, name: str, every: float, reconcile: Callable[[], Awaitable[int]]) -> None:
        self.name = name
        self.every = every
        self.reconcile = reconcile
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"{self.name} reconciler")

    async def _loop(self) -> None:
        failures = 0
        while True:
            wait = self.every
            try:
                count = await self.reconcile()
                if count:
                    log.info("users suspended", extra={"count": count, "by": self.name})
                if failures:
                    log.info("deletion requests available again", extra={"after": failures})
                failures = 0
            except grpc.aio.AioRpcError as error:
                # Identity not up yet (processes start together) or restarting: soon again, so a
                # deletion made while this service was down is honoured soon after it starts;
                # backing off to the interval, and one warning per outage, not one per retry.
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(
                    level, "deletion requests unavailable", extra={"grpc_code": error.code().name}
                )
                wait = min(self.every, RETRY_SECONDS * 2 ** min(failures - 1, 10))
            except Exception:
                log.exception("reconciling deletion requests failed")
            await asyncio.sleep(wait)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
