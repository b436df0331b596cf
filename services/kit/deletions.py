"""Deletion requests as every service that holds a user's processing honours them.

A service records each user whose deletion was requested in a `suspended_users` table of its own
(user_id, suspend_time) and refuses their work from then on; `SuspendedUsers` is that table and
its ids in memory (`users`: a set, so each hot path pays one lookup). Identity's record is the
truth: `requested_deletions` pages through its `ListDeletionRequests`, and `Reconciler` runs a
service's pass at start-up and then every few seconds, so a user whose deletion the service was
never told of directly (it was down, the gateway's call failed) is suspended within one interval.
A failed pass is logged and tried again at the next interval; it never stops the service.
A suspension is never lifted here: erasure (the retention service) ends the user's data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

import grpc
from leadmesh.identity.v1 import identity_pb2
from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError

from services.kit.clock import Clock
from services.kit.db import Store

log = logging.getLogger("leadmesh.deletions")

PAGE_SIZE = 500
# After a pass identity did not answer.
RETRY_SECONDS = 2.0


async def requested_deletions(identity) -> set[str]:
    """The id of every account whose deletion identity recorded (`identity`: its stub)."""
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
        # Only ever grows, and in place: the service's hot paths hold this very set.
        self.users: set[str] = set()

    async def load(self, *, traced: bool = True) -> int:
        """Reads the table into `users`; returns how many users were new to this process.
        Periodic reloads are not traced (a span each time that almost always finds nothing)."""
        if traced:
            found = await self._read()
        else:
            with suppress_instrumentation():
                found = await self._read()
        new = found - self.users
        self.users |= new
        return len(new)

    async def _read(self) -> set[str]:
        async with self.store.read() as tx:
            return {row[0] for row in await tx.c.execute(select(self.table.c.user_id))}

    async def suspend(self, user_ids: Iterable[str]) -> int:
        """Records the users (each at most once) and runs `also` in the same transaction;
        returns what `also` returns."""
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

    async def reconcile(self, identity) -> int:
        """One pass against identity's record (`identity`: its stub), after picking up what
        other processes of the service recorded; returns how many users were newly suspended."""
        await self.load(traced=False)
        missing = await requested_deletions(identity) - self.users
        if missing or (self.sweeps and self.users):
            await self.suspend(missing)
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
