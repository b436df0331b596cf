"""Brute-force rules on in-process counters, timed by a settable clock."""

from __future__ import annotations

import pytest

from services.identity.throttle import Limits, LoginThrottle, MemoryCounters
from services.kit.clock import SettableClock

LIMITS = Limits(
    window_seconds=900,
    account_ip_limit=10,
    ip_limit=100,
    account_limit=100,
    backoff_cap_seconds=3600,
    account_memory_seconds=86400,
)


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
def throttle(clock: SettableClock) -> LoginThrottle:
    return LoginThrottle(MemoryCounters(clock), LIMITS)


async def test_ten_failures_from_one_address_hold_that_pair_until_the_window_passes(
    throttle: LoginThrottle, clock: SettableClock
):
    for _ in range(9):
        await throttle.failed("ann@example.com", "198.51.100.1")
    assert await throttle.check("ann@example.com", "198.51.100.1") is None
    clock.advance(60)
    await throttle.failed("ann@example.com", "198.51.100.1")
    hold = await throttle.check("ann@example.com", "198.51.100.1")
    assert hold is not None and hold.rule == "account_ip"
    assert hold.retry_after == pytest.approx(900 - 60)
    # Another address, and another account from the same address, are not held.
    assert await throttle.check("ann@example.com", "198.51.100.2") is None
    assert await throttle.check("bob@example.com", "198.51.100.1") is None
    clock.advance(840)
    assert await throttle.check("ann@example.com", "198.51.100.1") is None


async def test_a_success_clears_the_pair(throttle: LoginThrottle):
    for _ in range(9):
        await throttle.failed("ann@example.com", "198.51.100.1")
    await throttle.succeeded("ann@example.com", "198.51.100.1")
    await throttle.failed("ann@example.com", "198.51.100.1")
    assert await throttle.check("ann@example.com", "198.51.100.1") is None


async def test_an_address_failing_across_many_accounts_is_held(throttle: LoginThrottle):
    for n in range(100):
        await throttle.failed(f"user{n}@example.com", "203.0.113.9")
    hold = await throttle.check("fresh@example.com", "203.0.113.9")
    assert hold is not None and hold.rule == "ip"
    assert await throttle.check("fresh@example.com", "203.0.113.10") is None


async def test_after_100_consecutive_failures_the_account_backs_off_exponentially(
    throttle: LoginThrottle, clock: SettableClock
):
    for n in range(100):  # from 100 addresses: no per-pair or per-address rule fires
        await throttle.failed("ann@example.com", f"10.0.{n // 250}.{n % 250}")
    hold = await throttle.check("ann@example.com", "192.0.2.1")
    assert hold is not None and hold.rule == "account"
    assert hold.retry_after == pytest.approx(1.0)
    waits = []
    for attempt in range(14):
        address = f"192.0.2.{attempt}"  # a fresh address each time: only the account rule acts
        hold = await throttle.check("ann@example.com", address)
        clock.advance(hold.retry_after)
        assert await throttle.check("ann@example.com", address) is None
        await throttle.failed("ann@example.com", address)
        waits.append((await throttle.check("ann@example.com", address)).retry_after)
    assert waits[:4] == [2.0, 4.0, 8.0, 16.0]
    assert max(waits) == LIMITS.backoff_cap_seconds  # backoff, never a permanent lock


async def test_addresses_that_signed_in_before_are_not_kept_out(throttle: LoginThrottle):
    for n in range(100):
        await throttle.failed("ann@example.com", f"10.1.{n // 250}.{n % 250}")
    assert await throttle.check("ann@example.com", "192.0.2.1") is not None
    assert await throttle.check("ann@example.com", "192.0.2.1", known_address=True) is None
    await throttle.succeeded("ann@example.com", "192.0.2.1")
    assert await throttle.check("ann@example.com", "192.0.2.77") is None


async def test_counts_are_forgotten_a_day_after_the_last_failure(
    throttle: LoginThrottle, clock: SettableClock
):
    for n in range(100):
        await throttle.failed("ann@example.com", f"10.2.{n // 250}.{n % 250}")
    clock.advance(86400)
    assert await throttle.account_failures("ann@example.com") == 0


async def test_counter_keys_hold_no_address(throttle: LoginThrottle):
    await throttle.failed("ann@example.com", "198.51.100.1")
    keys = " ".join(throttle.counters._entries)
    assert "ann" not in keys and "198.51" not in keys
