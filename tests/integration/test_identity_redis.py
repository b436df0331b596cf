"""Lockout counters in a real Redis: shared by every identity process, expiring by Redis time."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.identity.throttle import Limits, LoginThrottle, RedisCounters

pytestmark = pytest.mark.redis


@pytest.fixture
async def counters(redis_server: str):
    first, second = RedisCounters(redis_server), RedisCounters(redis_server)
    yield first, second
    await first.close()
    await second.close()


async def test_counts_expire_slide_claim_and_undo(counters):
    redis, _ = counters
    key = f"leadmesh:test:{uuid.uuid4().hex}"
    assert await redis.hit(key, 2) == 1
    assert await redis.hit(key, 100) == 2  # fixed window: the first hit set the expiry
    count, ttl = await redis.peek(key)
    assert count == 2 and 0 < ttl <= 2
    await redis.undo(key)
    assert (await redis.peek(key))[0] == 1
    await asyncio.sleep(2.1)
    assert await redis.peek(key) == (0, 0.0)
    await redis.undo(key)  # never resurrects an expired key
    assert await redis.peek(key) == (0, 0.0)
    await redis.hit(key, 1, sliding=True)
    await redis.hit(key, 50, sliding=True)
    assert (await redis.peek(key))[1] > 40
    assert await redis.claim(f"{key}:slot", 30) is None
    assert 0 < await redis.claim(f"{key}:slot", 30) <= 30
    await redis.reset(key, f"{key}:slot")
    assert await redis.peek(key) == (0, 0.0)


async def test_two_processes_share_one_lockout_and_admit_exactly_the_limit(counters):
    limits = Limits(
        window_seconds=60,
        account_ip_limit=10,
        ip_limit=100,
        account_limit=100,
        backoff_cap_seconds=3600,
        account_memory_seconds=86400,
    )
    one, two = (LoginThrottle(c, limits) for c in counters)
    email = f"{uuid.uuid4().hex}@example.com"
    holds = await asyncio.gather(
        *((one if n % 2 else two).admit(email, "192.0.2.44") for n in range(40))
    )
    assert sum(h is None for h in holds) == 10
    hold = await two.admit(email, "192.0.2.44")
    assert hold is not None and hold.rule == "account_ip" and 0 < hold.retry_after <= 60
    await one.succeeded(email, "192.0.2.44")
    assert await two.admit(email, "192.0.2.44") is None
