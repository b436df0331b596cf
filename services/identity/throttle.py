"""Brute-force rules for logins, on counters kept in Redis (REDIS_URL) or in this process.

Three rules, checked before a password is:
- one account from one address: `lockout_account_ip_limit` failures within the window hold that
  pair back until the window that began with its first failure has passed;
- one address across accounts: `lockout_ip_limit` failures within the window hold the address back;
- one account from anywhere: after `lockout_account_limit` consecutive failures (NIST SP 800-63B),
  each further attempt waits an exponential backoff (1 s, 2 s, 4 s, … capped), and addresses that
  have signed in to the account before are exempt — a stranger can slow an attacker's guesses but
  cannot keep the owner out.
Keys are SHA-256 digests: neither e-mail addresses nor IP addresses are stored in the counters.
Counting is by the normalised e-mail address, whether or not an account has it, so the rules never
reveal which addresses exist.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from services.kit.clock import Clock

PREFIX = "leadmesh:identity:"


class Counters(Protocol):
    async def hit(self, key: str, ttl_seconds: int, *, sliding: bool = False) -> int:
        """Adds one; the key expires `ttl_seconds` after its first hit (after every hit when
        sliding). Returns the new count."""

    async def peek(self, key: str) -> tuple[int, float]:
        """The count and the seconds until the key expires ((0, 0) when absent)."""

    async def reset(self, key: str) -> None: ...

    async def close(self) -> None: ...


class MemoryCounters:
    """One machine: counters in this process, timed by the service clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[int, datetime]] = {}

    def _live(self, key: str) -> tuple[int, datetime] | None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] <= self._clock.now():
            del self._entries[key]
            return None
        return entry

    def _prune(self) -> None:
        now = self._clock.now()
        for key in [k for k, (_, expires) in self._entries.items() if expires <= now]:
            del self._entries[key]

    async def hit(self, key: str, ttl_seconds: int, *, sliding: bool = False) -> int:
        if len(self._entries) > 100_000:
            self._prune()
        entry = self._live(key)
        now = self._clock.now()
        count = (entry[0] if entry else 0) + 1
        if entry is None or sliding:
            expires = now + timedelta(seconds=ttl_seconds)
        else:
            expires = entry[1]
        self._entries[key] = (count, expires)
        return count

    async def peek(self, key: str) -> tuple[int, float]:
        entry = self._live(key)
        if entry is None:
            return 0, 0.0
        return entry[0], (entry[1] - self._clock.now()).total_seconds()

    async def reset(self, key: str) -> None:
        self._entries.pop(key, None)

    async def close(self) -> None:
        self._entries.clear()


class RedisCounters:
    """Several gateways and identities agree: counters in Redis, expiring by Redis's own clock."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url)

    async def hit(self, key: str, ttl_seconds: int, *, sliding: bool = False) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            if sliding:
                pipe.expire(key, ttl_seconds)
            else:
                pipe.expire(key, ttl_seconds, nx=True)
            count, _ = await pipe.execute()
        return int(count)

    async def peek(self, key: str) -> tuple[int, float]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            raw, pttl = await pipe.execute()
        if raw is None or pttl < 0:
            return (int(raw), 0.0) if raw is not None else (0, 0.0)
        return int(raw), pttl / 1000

    async def reset(self, key: str) -> None:
        await self._redis.delete(key)

    async def close(self) -> None:
        await self._redis.aclose()


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


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


class LoginThrottle:
    def __init__(self, counters: Counters, limits: Limits) -> None:
        self.counters = counters
        self.limits = limits

    @staticmethod
    def _keys(email_key: str, ip: str) -> tuple[str, str, str]:
        account, address = digest(email_key), digest(ip)
        return (
            f"{PREFIX}pair:{account}:{address}",
            f"{PREFIX}ip:{address}",
            f"{PREFIX}account:{account}",
        )

    def backoff(self, failures: int) -> float:
        """Seconds an attempt waits after `failures` consecutive failures (0 below the limit)."""
        excess = failures - self.limits.account_limit
        if excess < 0:
            return 0.0
        return float(min(self.limits.backoff_cap_seconds, 2 ** min(excess, 32)))

    async def check(self, email_key: str, ip: str, *, known_address: bool = False) -> Hold | None:
        pair, address, account = self._keys(email_key, ip)
        count, ttl = await self.counters.peek(pair)
        if count >= self.limits.account_ip_limit:
            return Hold(max(ttl, 1.0), "account_ip")
        count, ttl = await self.counters.peek(address)
        if count >= self.limits.ip_limit:
            return Hold(max(ttl, 1.0), "ip")
        if known_address:
            return None
        count, ttl = await self.counters.peek(account)
        delay = self.backoff(count)
        if delay:
            since_last = self.limits.account_memory_seconds - ttl
            if since_last < delay:
                return Hold(max(delay - since_last, 1.0), "account")
        return None

    async def account_failures(self, email_key: str) -> int:
        count, _ = await self.counters.peek(self._keys(email_key, "")[2])
        return count

    async def failed(self, email_key: str, ip: str) -> None:
        pair, address, account = self._keys(email_key, ip)
        window = self.limits.window_seconds
        await self.counters.hit(pair, window)
        await self.counters.hit(address, window)
        await self.counters.hit(account, self.limits.account_memory_seconds, sliding=True)

    async def succeeded(self, email_key: str, ip: str) -> None:
        pair, _, account = self._keys(email_key, ip)
        await self.counters.reset(pair)
        await self.counters.reset(account)

    async def forgive(self, email_key: str) -> None:
        """The owner proved control of the address (a password reset): start afresh."""
        await self.counters.reset(self._keys(email_key, "")[2])
