"""One purge of a category at a time, across retention replicas: a Redis lock (redis-py's `Lock`,
SET NX PX with a token checked on release) when REDIS_URL is set, a lease row otherwise.

A lease is taken without waiting (`try_hold`: the other replica is purging that category now, so
this one skips its run) or waiting a while (`hold`: an operator's erasure pass waits for the
scheduled one). While it is held it is renewed every third of its length, so a long purge keeps
it and a crashed replica's lease ends within `seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Protocol

from services.kit.clock import Clock
from services.kit.errors import Unavailable
from services.retention.store import Store

log = logging.getLogger("leadmesh.retention")

POLL_SECONDS = 0.1


class Leases(Protocol):
    def try_hold(self, name: str) -> contextlib.AbstractAsyncContextManager[bool]: ...

    def hold(self, name: str, wait: float) -> contextlib.AbstractAsyncContextManager[None]: ...

    async def close(self) -> None: ...


class _Base:
    seconds: float

    async def _take(self, name: str, holder: str) -> bool:
        raise NotImplementedError

    async def _renew(self, name: str, holder: str) -> bool:
        raise NotImplementedError

    async def _release(self, name: str, holder: str) -> None:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def try_hold(self, name: str) -> AsyncIterator[bool]:
        holder = uuid.uuid4().hex
        if not await self._take(name, holder):
            yield False
            return
        async with self._renewing(name, holder):
            yield True

    @contextlib.asynccontextmanager
    async def hold(self, name: str, wait: float) -> AsyncIterator[None]:
        holder = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not await self._take(name, holder):
            if loop.time() > deadline:
                raise Unavailable("LEASE_BUSY", f"another replica holds {name}; try again")
            await asyncio.sleep(POLL_SECONDS)
        async with self._renewing(name, holder):
            yield

    @contextlib.asynccontextmanager
    async def _renewing(self, name: str, holder: str) -> AsyncIterator[None]:
        async def renew() -> None:
            while True:
                await asyncio.sleep(self.seconds / 3)
                try:
                    if not await self._renew(name, holder):
                        log.warning("lease lost while held", extra={"lease": name})
                except Exception:
                    log.exception("renewing a lease failed", extra={"lease": name})

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            try:
                await self._release(name, holder)
            except Exception:  # it ends by itself within `seconds`
                log.exception("releasing a lease failed", extra={"lease": name})


class DatabaseLeases(_Base):
    def __init__(self, store: Store, clock: Clock, seconds: float) -> None:
        self._store, self._clock, self.seconds = store, clock, seconds

    async def _take(self, name: str, holder: str) -> bool:
        now = self._clock.now()
        async with self._store.begin() as tx:
            return await tx.acquire_lease(name, holder, now, now + timedelta(seconds=self.seconds))

    _renew = _take  # the holder's own lease is extended by taking it again

    async def _release(self, name: str, holder: str) -> None:
        async with self._store.begin() as tx:
            await tx.release_lease(name, holder)

    async def close(self) -> None:
        return None


class RedisLeases(_Base):
    def __init__(self, url: str, seconds: float) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url)
        self.seconds = seconds
        self._locks: dict[tuple[str, str], object] = {}

    async def _take(self, name: str, holder: str) -> bool:
        lock = self._redis.lock(f"leadmesh:retention:lease:{name}", timeout=self.seconds)
        if not await lock.acquire(blocking=False, token=holder):
            return False
        self._locks[(name, holder)] = lock
        return True

    async def _renew(self, name: str, holder: str) -> bool:
        from redis.exceptions import LockError

        try:
            await self._locks[(name, holder)].reacquire()  # type: ignore[attr-defined]
        except LockError:
            return False
        return True

    async def _release(self, name: str, holder: str) -> None:
        from redis.exceptions import LockError

        lock = self._locks.pop((name, holder))
        try:
            await lock.release()  # type: ignore[attr-defined]
        except LockError:  # it expired while held; someone else may hold it now
            pass

    async def close(self) -> None:
        await self._redis.aclose()
