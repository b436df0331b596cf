"""Brute-force rules on in-process counters, timed by a settable clock."""

from __future__ import annotations

import asyncio

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


async def fail(throttle: LoginThrottle, email: str, ip: str, known: bool = False):
    """One attempt with a wrong password: the hold, if it was held back."""
    hold = await throttle.admit(email, ip, known_address=known)
    if hold is None:
        await throttle.failed(email, ip)
    return hold


async def test_ten_failures_from_one_address_hold_that_pair_until_the_window_passes(
    throttle: LoginThrottle, clock: SettableClock
):
    for _ in range(9):
        assert await fail(throttle, "ann@example.com", "198.51.100.1") is None
    clock.advance(60)
    assert await fail(throttle, "ann@example.com", "198.51.100.1") is None  # the 10th
    hold = await throttle.admit("ann@example.com", "198.51.100.1")
    assert hold is not None and hold.rule == "account_ip"
    assert hold.retry_after == pytest.approx(900 - 60)
    # Another address, and another account from the same address, are not held.
    assert await throttle.admit("ann@example.com", "198.51.100.2") is None
    assert await throttle.admit("bob@example.com", "198.51.100.1") is None
    clock.advance(840)
    assert await throttle.admit("ann@example.com", "198.51.100.1") is None


async def test_parallel_guesses_cannot_slip_between_check_and_count(throttle: LoginThrottle):
    holds = await asyncio.gather(
        *(throttle.admit("ann@example.com", "198.51.100.1") for _ in range(60))
    )
    assert sum(h is None for h in holds) == 10  # exactly the limit is admitted


async def test_a_success_clears_the_pair(throttle: LoginThrottle):
    for _ in range(9):
        await fail(throttle, "ann@example.com", "198.51.100.1")
    assert await throttle.admit("ann@example.com", "198.51.100.1") is None
    await throttle.succeeded("ann@example.com", "198.51.100.1")
    for _ in range(10):
        assert await fail(throttle, "ann@example.com", "198.51.100.1") is None


async def test_an_address_failing_across_many_accounts_is_held(throttle: LoginThrottle):
    for n in range(100):
        assert await fail(throttle, f"user{n}@example.com", "203.0.113.9") is None
    hold = await throttle.admit("fresh@example.com", "203.0.113.9")
    assert hold is not None and hold.rule == "ip"
    assert await throttle.admit("fresh@example.com", "203.0.113.10") is None


async def test_successes_do_not_count_against_an_address(throttle: LoginThrottle):
    for n in range(150):  # an office behind one address, everyone signing in
        assert await throttle.admit(f"user{n}@example.com", "203.0.113.9") is None
        await throttle.succeeded(f"user{n}@example.com", "203.0.113.9")


async def test_after_100_consecutive_failures_the_account_backs_off_exponentially(
    throttle: LoginThrottle, clock: SettableClock
):
    for n in range(100):  # from 100 addresses: no per-pair or per-address rule fires
        assert await fail(throttle, "ann@example.com", f"10.0.{n // 250}.{n % 250}") is None
    hold = await throttle.admit("ann@example.com", "192.0.2.1")
    assert hold is not None and hold.rule == "account"
    assert hold.retry_after == pytest.approx(1.0)
    waits = []
    for attempt in range(14):
        address = f"192.0.2.{attempt + 10}"  # a fresh address each time: only the account rule
        clock.advance((await throttle.admit("ann@example.com", address)).retry_after)
        assert await fail(throttle, "ann@example.com", address) is None  # one attempt admitted
        waits.append((await throttle.admit("ann@example.com", address)).retry_after)
    assert waits[:4] == [2.0, 4.0, 8.0, 16.0]
    assert max(waits) == LIMITS.backoff_cap_seconds  # backoff, never a permanent lock


async def test_when_the_backoff_ends_one_attempt_is_admitted_not_a_crowd(
    throttle: LoginThrottle, clock: SettableClock
):
    for n in range(100):
        await fail(throttle, "ann@example.com", f"10.3.{n // 250}.{n % 250}")
    clock.advance(1)
    holds = await asyncio.gather(
        *(throttle.admit("ann@example.com", f"192.0.2.{n}") for n in range(20))
    )
    assert sum(h is None for h in holds) == 1


async def test_addresses_that_signed_in_before_are_not_kept_out(throttle: LoginThrottle):
    for n in range(100):
        await fail(throttle, "ann@example.com", f"10.1.{n // 250}.{n % 250}")
    assert await throttle.admit("ann@example.com", "192.0.2.1") is not None
    assert await throttle.admit("ann@example.com", "192.0.2.1", known_address=True) is None
    await throttle.succeeded("ann@example.com", "192.0.2.1")
    assert await throttle.admit("ann@example.com", "192.0.2.77") is None


async def test_counts_are_forgotten_a_day_after_the_last_failure(
    throttle: LoginThrottle, clock: SettableClock
):
    for n in range(100):
        await fail(throttle, "ann@example.com", f"10.2.{n // 250}.{n % 250}")
    clock.advance(86400)
    assert await throttle.account_failures("ann@example.com") == 0


async def test_counter_keys_hold_no_address(throttle: LoginThrottle):
    await fail(throttle, "ann@example.com", "198.51.100.1")
    keys = " ".join(throttle.counters._entries)
    assert "ann" not in keys and "198.51" not in keys


async def test_expired_counters_leave_memory(throttle: LoginThrottle, clock: SettableClock):
    for n in range(1000):
        await throttle.counters.hit(f"k{n}", 10)
    clock.advance(11)
    await throttle.counters.hit("fresh", 10)
    assert len(throttle.counters._entries) == 1
