"""One refresh of a credential at a time, across processes: a Redis lock (redis-py's `Lock`,
a SET NX PX with a token checked on release) when REDIS_URL is set, a lease row otherwise.
Whoever waits gets the lease after the holder and finds its result already stored."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Protocol

from services.kit.clock import Clock
from services.kit.errors import Unavailable
from services.vault.store import Store

POLL_SECONDS = 0.05


def _busy() -> Unavailable:
    return Unavailable("REFRESH_BUSY", "another refresh of this credential is taking too long")


class Leases(Protocol):
    def hold(self, name: str) -> AsyncIterator[None]: ...

    async def close(self) -> None: ...


class DatabaseLeases:
    def __init__(self, store: Store, clock: Clock, seconds: int) -> None:
        self._store, self._clock, self._seconds = store, clock, seconds
        self._holder = uuid.uuid4().hex

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._seconds
        holder = f"{self._holder}:{uuid.uuid4().hex[:8]}"
        while True:
            now = self._clock.now()
            async with self._store.begin() as tx:
                until = now + timedelta(seconds=self._seconds)
                if await tx.acquire_lease(name, holder, now, until):
                    break
            if loop.time() > deadline:
                raise _busy()
            await asyncio.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            async with self._store.begin() as tx:
                await tx.release_lease(name, holder)

    async def close(self) -> None:
        return None


class RedisLeases:
    def __init__(self, url: str, seconds: int) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url)
        self._seconds = seconds

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        from redis.exceptions import LockError

        lock = self._redis.lock(
            f"leadmesh:vault:lease:{name}",
            timeout=self._seconds,
            sleep=POLL_SECONDS,
            blocking_timeout=self._seconds,
        )
        if not await lock.acquire():
            raise _busy()
        try:
            yield
        finally:
            try:
                await lock.release()
            except LockError:  # it expired while we held it; someone else may hold it now
                pass

    async def close(self) -> None:
        await self._redis.aclose()
