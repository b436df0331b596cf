"""Brute-force rules for logins, on counters kept in Redis (REDIS_URL) or in this process.

An attempt is *admitted* before its password is checked, and admission counts it, atomically, so
parallel guesses cannot all slip through between a check and a count:
- one account from one address: the attempts after `lockout_account_ip_limit` within the window
  (which begins with the first attempt) are held back until it passes; a success starts afresh;
- one address across accounts: likewise with `lockout_ip_limit`;
- one account from anywhere: after `lockout_account_limit` consecutive failures (NIST SP 800-63B)
  each failure locks the account for an exponential backoff (1 s, 2 s, 4 s, … capped); when it
  ends, one attempt is admitted (an atomic claim) and the others wait for its outcome. Addresses
  that have signed in to the account before are exempt: a stranger can slow an attacker's guesses
  but never keep the owner out.
Keys are SHA-256 digests: neither e-mail addresses nor IP addresses are stored in the counters.
Counting is by the normalised e-mail address, whether or not an account has it, so the rules never
reveal which addresses exist.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from services.kit.clock import Clock
from services.kit.tokens import sha256_hex

PREFIX = "leadmesh:identity:"


class Counters(Protocol):
    async def hit(self, key: str, ttl_seconds: float, *, sliding: bool = False) -> int:
        """Adds one; the key expires `ttl_seconds` after its first hit (after every hit when
        sliding). Returns the new count."""

    async def undo(self, key: str) -> None:
        """Takes one back (an admitted attempt that succeeded)."""

    async def peek(self, key: str) -> tuple[int, float]:
        """The count and the seconds until the key expires ((0, 0) when absent)."""

    async def claim(self, key: str, ttl_seconds: float) -> float | None:
        """Sets the key for `ttl_seconds` if it is absent (None: claimed), else returns the
        seconds it still has."""

    async def lock(self, key: str, ttl_seconds: float) -> None:
        """Sets the key for `ttl_seconds`, present or not."""

    async def reset(self, *keys: str) -> None: ...

    async def close(self) -> None: ...


class MemoryCounters:
    """One machine: counters in this process, timed by the service clock. Expired entries leave
    through a heap of deadlines, so the cost of a hit stays logarithmic however many are live."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[int, datetime]] = {}
        self._deadlines: list[tuple[datetime, str]] = []

    def _expire(self) -> None:
        now = self._clock.now()
        while self._deadlines and self._deadlines[0][0] <= now:
            expires, key = heapq.heappop(self._deadlines)
            entry = self._entries.get(key)
            if entry is not None and entry[1] == expires:
                del self._entries[key]

    def _set(self, key: str, count: int, expires: datetime) -> None:
        self._entries[key] = (count, expires)
        heapq.heappush(self._deadlines, (expires, key))

    async def hit(self, key: str, ttl_seconds: float, *, sliding: bool = False) -> int:
        self._expire()
        entry = self._entries.get(key)
        count = (entry[0] if entry else 0) + 1
        if entry is None or sliding:
            self._set(key, count, self._clock.now() + timedelta(seconds=ttl_seconds))
        else:
            self._entries[key] = (count, entry[1])
        return count

    async def undo(self, key: str) -> None:
        self._expire()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > 0:
            self._entries[key] = (entry[0] - 1, entry[1])

    async def peek(self, key: str) -> tuple[int, float]:
        self._expire()
        entry = self._entries.get(key)
        if entry is None:
            return 0, 0.0
        return entry[0], (entry[1] - self._clock.now()).total_seconds()

    async def claim(self, key: str, ttl_seconds: float) -> float | None:
        count, remaining = await self.peek(key)
        if count:
            return remaining
        self._set(key, 1, self._clock.now() + timedelta(seconds=ttl_seconds))
        return None

    async def lock(self, key: str, ttl_seconds: float) -> None:
        self._expire()
        self._set(key, 1, self._clock.now() + timedelta(seconds=ttl_seconds))

    async def reset(self, *keys: str) -> None:
        for key in keys:
            self._entries.pop(key, None)

    async def close(self) -> None:
        self._entries.clear()
        self._deadlines.clear()


class RedisCounters:
    """Several identity processes agree: counters in Redis, expiring by Redis's own clock."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url)

    async def hit(self, key: str, ttl_seconds: float, *, sliding: bool = False) -> int:
        milliseconds = max(1, int(ttl_seconds * 1000))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            if sliding:
                pipe.pexpire(key, milliseconds)
            else:
                pipe.pexpire(key, milliseconds, nx=True)
            count, _ = await pipe.execute()
        return int(count)

    async def undo(self, key: str) -> None:
        # Only where it still exists: a DECR on an expired key would create one that never ends.
        await self._redis.eval(
            "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end",
            1,
            key,
        )

    async def peek(self, key: str) -> tuple[int, float]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            raw, pttl = await pipe.execute()
        if raw is None:
            return 0, 0.0
        return int(raw), max(pttl, 0) / 1000

    async def claim(self, key: str, ttl_seconds: float) -> float | None:
        milliseconds = max(1, int(ttl_seconds * 1000))
        if await self._redis.set(key, 1, px=milliseconds, nx=True):
            return None
        return max(await self._redis.pttl(key), 0) / 1000

    async def lock(self, key: str, ttl_seconds: float) -> None:
        await self._redis.set(key, 1, px=max(1, int(ttl_seconds * 1000)))

    async def reset(self, *keys: str) -> None:
        if keys:
            await self._redis.delete(*keys)

    async def close(self) -> None:
        await self._redis.aclose()


@dataclass(frozen=True)
class Limits:
    window_seconds: int
    account_ip_limit: int
    ip_limit: int
    account_limit: int
    backoff_cap_seconds: int
    account_memory_seconds: int


@dataclass(frozen=True)
class Hold:
    """An attempt held back, and for how long."""

    retry_after: float
    rule: str


@dataclass(frozen=True)
class _Keys:
    pair: str
    address: str
    account: str
    slot: str


class LoginThrottle:
    def __init__(self, counters: Counters, limits: Limits) -> None:
        self.counters = counters
        self.limits = limits

    @staticmethod
    def _keys(email_key: str, ip: str) -> _Keys:
        account, address = sha256_hex(email_key), sha256_hex(ip)
        return _Keys(
            pair=f"{PREFIX}pair:{account}:{address}",
            address=f"{PREFIX}ip:{address}",
            account=f"{PREFIX}account:{account}",
            slot=f"{PREFIX}slot:{account}",
        )

    def backoff(self, failures: int) -> float:
        """Seconds the account is locked after `failures` consecutive failures (0 below the
        limit): 1 s at the limit, doubling with each further failure, capped."""
        excess = failures - self.limits.account_limit
        if excess < 0:
            return 0.0
        return float(min(self.limits.backoff_cap_seconds, 2 ** min(excess, 32)))

    async def admit(self, email_key: str, ip: str, *, known_address: bool = False) -> Hold | None:
        """Counts the attempt and says whether it may check a password (None) or must wait."""
        keys, window = self._keys(email_key, ip), self.limits.window_seconds
        if await self.counters.hit(keys.pair, window) > self.limits.account_ip_limit:
            return Hold(max((await self.counters.peek(keys.pair))[1], 1.0), "account_ip")
        if await self.counters.hit(keys.address, window) > self.limits.ip_limit:
            await self.counters.undo(keys.pair)
            return Hold(max((await self.counters.peek(keys.address))[1], 1.0), "ip")
        if known_address:
            return None
        failures, _ = await self.counters.peek(keys.account)
        if failures >= self.limits.account_limit:
            # The lock set by the last failure has ended: one attempt claims the next turn.
            waiting = await self.counters.claim(keys.slot, self.backoff(failures))
            if waiting is not None:
                return Hold(max(waiting, 1.0), "account")
        return None

    async def account_failures(self, email_key: str) -> int:
        count, _ = await self.counters.peek(self._keys(email_key, "").account)
        return count

    async def failed(self, email_key: str, ip: str) -> None:
        """An admitted attempt's password was wrong."""
        keys = self._keys(email_key, ip)
        memory = self.limits.account_memory_seconds
        failures = await self.counters.hit(keys.account, memory, sliding=True)
        if failures >= self.limits.account_limit:
            await self.counters.lock(keys.slot, self.backoff(failures))

    async def succeeded(self, email_key: str, ip: str) -> None:
        """An admitted attempt's password was right: its counts are taken back."""
        keys = self._keys(email_key, ip)
        await self.counters.reset(keys.pair, keys.account, keys.slot)
        await self.counters.undo(keys.address)

    async def forgive(self, email_key: str) -> None:
        """The owner proved control of the address (a password reset): start afresh."""
        keys = self._keys(email_key, "")
        await self.counters.reset(keys.account, keys.slot)
