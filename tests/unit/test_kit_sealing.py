"""The kit's sealing (services/kit/sealing.py) against a real in-process gRPC VaultService that
answers GetExecutionKeys the vault's way (HKDF of an owner key and a day key, both random;
DESTROYED, ABSENT, UNAVAILABLE when told to be down): values round-trip, are bound to their row,
column and owner, keys are cached by the clock, forgotten when told, fetched for tomorrow ahead of
midnight, and concurrent askers share one call."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from leadmesh.vault.v1 import vault_pb2 as vpb
from leadmesh.vault.v1 import vault_pb2_grpc

from services.kit.clock import SettableClock
from services.kit.sealing import (
    PREFIX,
    ExecutionKeys,
    KeysUnavailable,
    Place,
    SealedColumns,
    Unreadable,
    UserKeys,
    day_of,
    is_sealed,
)

NOON = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TODAY = "2026-03-10"
TOMORROW = "2026-03-11"
LOG = Place("webhooks_log", "webhook_log", "body")
ATTEMPTS = SealedColumns(
    "attempt_details",
    "attempts",
    ("request", "response_body"),
    "start_time",
    "user_id",
    id_columns=("run_id", "number"),
)


class KeyVault(vault_pb2_grpc.VaultServiceServicer):
    """GetExecutionKeys as the vault answers it, in memory; `calls` counts the calls."""

    def __init__(self) -> None:
        self.owners: dict[str, bytes] = {}
        self.days: dict[tuple[str, str], bytes] = {}
        self.destroyed: set[tuple[str, str]] = set()
        self.calls = 0
        self.down = False
        self.delay = 0.0

    async def GetExecutionKeys(self, request, context):  # noqa: N802 - gRPC method name
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        reply = vpb.GetExecutionKeysResponse()
        for ref in request.keys:
            pair = (ref.category, ref.day)
            answer = reply.keys.add(category=ref.category, day=ref.day)
            if pair in self.destroyed:
                answer.state = vpb.EXECUTION_KEY_STATE_DESTROYED
                continue
            if pair not in self.days and not request.create:
                answer.state = vpb.EXECUTION_KEY_STATE_ABSENT
                continue
            day_key = self.days.setdefault(pair, os.urandom(32))
            owner = self.owners.setdefault(request.user_id, os.urandom(32))
            info = f"leadmesh-execution|v1|runner|{ref.category}|{ref.day}|{request.user_id}"
            answer.state = vpb.EXECUTION_KEY_STATE_ACTIVE
            answer.key = HKDF(hashes.SHA256(), 32, None, info.encode()).derive(owner + day_key)
        return reply


@pytest.fixture
async def vault() -> AsyncIterator[tuple[KeyVault, vault_pb2_grpc.VaultServiceStub]]:
    servicer = KeyVault()
    server = grpc.aio.server()
    vault_pb2_grpc.add_VaultServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, vault_pb2_grpc.VaultServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0)


def keys_of(vault, clock=None, cache_seconds: float = 600.0) -> ExecutionKeys:
    return ExecutionKeys(vault[1], clock or SettableClock(NOON), cache_seconds)


async def test_a_sealed_value_opens_to_what_was_sealed_and_holds_no_plaintext(vault):
    keys = await keys_of(vault).for_user("u1", [("webhooks_log", TODAY)], create=True)
    value = {"email": "marked-lead-7f3a@example.com", "n": [1, 2.5, None], "é": "ü"}
    sealed = keys.seal(LOG, TODAY, "row-1", value)
    assert is_sealed(sealed) and sealed.startswith(PREFIX)
    assert "marked-lead" not in sealed and "7f3a" not in sealed
    assert keys.open(LOG, TODAY, "row-1", sealed) == value
    assert keys.seal(LOG, TODAY, "row-1", value) != sealed  # a fresh nonce each time


async def test_a_value_moved_to_another_row_column_or_user_does_not_open(vault):
    keys = await keys_of(vault).for_user("u1", [("webhooks_log", TODAY)], create=True)
    sealed = keys.seal(LOG, TODAY, "row-1", "marked-lead-7f3a@example.com")
    with pytest.raises(Unreadable) as moved:
        keys.open(LOG, TODAY, "row-2", sealed)
    assert moved.value.reason == "tampered"
    other_column = Place("webhooks_log", "webhook_log", "query")
    with pytest.raises(Unreadable, match="tampered"):
        keys.open(other_column, TODAY, "row-1", sealed)
    # Even under the very same key, another owner's associated data refuses it.
    same_key_other_user = UserKeys(
        "u2", {("webhooks_log", TODAY): keys._keys[("webhooks_log", TODAY)]}
    )
    with pytest.raises(Unreadable, match="tampered"):
        same_key_other_user.open(LOG, TODAY, "row-1", sealed)
    # And the other user's own key does not open it either.
    theirs = await keys_of(vault).for_user("u2", [("webhooks_log", TODAY)], create=True)
    with pytest.raises(Unreadable, match="tampered"):
        theirs.open(LOG, TODAY, "row-1", sealed)
    altered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(Unreadable, match="tampered"):
        keys.open(LOG, TODAY, "row-1", altered)


async def test_plaintext_written_before_sealing_reads_as_it_is(vault):
    keys = await keys_of(vault).for_user("u1", [], create=False)
    assert keys.open(LOG, TODAY, "row-1", "plain body") == "plain body"
    assert keys.open(LOG, TODAY, "row-1", {"a": 1}) == {"a": 1}
    row = {"run_id": "r", "number": 1, "start_time": NOON, "request": {"url": "x"}}
    assert ATTEMPTS.open_row(keys, row) == {"request": {"url": "x"}}


async def test_a_row_seals_and_opens_by_its_columns_and_composite_id(vault):
    keys = await keys_of(vault).for_user("u1", [("attempt_details", TODAY)], create=True)
    row = {"run_id": "run-1", "number": 2, "start_time": NOON, "user_id": "u1"}
    row |= {"request": {"body": "marked"}, "response_body": "ok", "response_headers": None}
    sealed = ATTEMPTS.seal_row(keys, row)
    assert set(sealed) == {"request", "response_body"} and all(map(is_sealed, sealed.values()))
    opened = ATTEMPTS.open_row(keys, {**row, **sealed})
    assert opened == {"request": {"body": "marked"}, "response_body": "ok"}
    with pytest.raises(Unreadable, match="tampered"):  # the attempt's number is its id too
        ATTEMPTS.open_row(keys, {**row, **sealed, "number": 3})


async def test_a_destroyed_day_reads_as_destroyed_and_seals_nothing(vault):
    servicer, _ = vault
    keys = await keys_of(vault).for_user("u1", [("webhooks_log", TODAY)], create=True)
    sealed = keys.seal(LOG, TODAY, "row-1", "marked")
    servicer.destroyed.add(("webhooks_log", TODAY))
    fresh = await keys_of(vault).for_user("u1", [("webhooks_log", TODAY)], create=True)
    with pytest.raises(Unreadable) as gone:
        fresh.open(LOG, TODAY, "row-1", sealed)
    assert gone.value.reason == "destroyed"
    with pytest.raises(Unreadable, match="destroyed"):
        fresh.seal(LOG, TODAY, "row-2", "x")
    assert not fresh.can_seal([("webhooks_log", TODAY)])


async def test_keys_stay_in_memory_for_the_cache_period_by_the_clock(vault):
    servicer, _ = vault
    clock = SettableClock(NOON)
    keys = keys_of(vault, clock, cache_seconds=600)
    refs = [("webhooks_log", TODAY), ("execution_details", TODAY)]
    await keys.for_user("u1", refs, create=True)
    await keys.for_user("u1", refs[:1])
    clock.advance(599)
    await keys.for_user("u1", refs)
    assert servicer.calls == 1
    servicer.down = True  # in memory: the vault is not needed
    cached = await keys.for_user("u1", refs)
    assert cached.can_seal(refs)
    clock.advance(2)
    with pytest.raises(KeysUnavailable):
        await keys.for_user("u1", refs)
    servicer.down = False
    await keys.for_user("u1", refs)
    assert servicer.calls == 3


async def test_a_user_never_seen_is_unavailable_while_the_vault_is_down(vault):
    servicer, _ = vault
    keys = keys_of(vault)
    await keys.for_user("seen", [("webhooks_log", TODAY)], create=True)
    servicer.down = True
    assert (await keys.for_user("seen", [("webhooks_log", TODAY)], create=True)).can_seal(
        [("webhooks_log", TODAY)]
    )
    with pytest.raises(KeysUnavailable):
        await keys.for_user("never-seen", [("webhooks_log", TODAY)], create=True)


async def test_forget_before_and_forget_user_drop_keys_at_once(vault):
    servicer, _ = vault
    keys = keys_of(vault)
    old, new = ("webhooks_log", "2026-03-01"), ("webhooks_log", TODAY)
    await keys.for_user("u1", [old, new], create=True)
    await keys.for_user("u2", [new], create=True)
    assert servicer.calls == 2
    keys.forget_before("webhooks_log", "2026-03-05")
    await keys.for_user("u1", [new])  # still in memory
    assert servicer.calls == 2
    await keys.for_user("u1", [old])
    assert servicer.calls == 3
    keys.forget_user("u2")
    await keys.for_user("u1", [new])
    await keys.for_user("u2", [new])
    assert servicer.calls == 4


async def test_tomorrows_keys_are_fetched_within_15_minutes_of_midnight(vault):
    servicer, _ = vault
    clock = SettableClock(NOON)
    keys = keys_of(vault, clock, cache_seconds=600)
    await keys.for_user("u1", [("webhooks_log", TODAY)], create=True)
    await keys.for_user("u2", [("notifications", TODAY)])  # read only: not prefetched
    assert await keys.prefetch_tomorrow() == 0  # noon: too early
    clock.set(datetime(2026, 3, 10, 23, 44, tzinfo=UTC))
    assert await keys.prefetch_tomorrow() == 0
    clock.set(datetime(2026, 3, 10, 23, 50, tzinfo=UTC))
    calls = servicer.calls
    assert await keys.prefetch_tomorrow() == 1
    assert servicer.calls == calls + 1
    assert ("webhooks_log", TOMORROW) in servicer.days
    assert await keys.prefetch_tomorrow() == 0  # already held for tomorrow
    # The vault goes down at midnight: tomorrow's key serves a cache period from its day's start.
    servicer.down = True
    clock.set(datetime(2026, 3, 11, 0, 9, tzinfo=UTC))
    held = await keys.for_user("u1", [("webhooks_log", TOMORROW)], create=True)
    assert held.can_seal([("webhooks_log", TOMORROW)])
    clock.set(datetime(2026, 3, 11, 0, 10, 1, tzinfo=UTC))
    with pytest.raises(KeysUnavailable):
        await keys.for_user("u1", [("webhooks_log", TOMORROW)], create=True)


async def test_twenty_concurrent_askers_share_one_call(vault):
    servicer, _ = vault
    servicer.delay = 0.1
    keys = keys_of(vault)
    refs = [("webhooks_log", TODAY), ("execution_details", TODAY)]
    found = await asyncio.gather(*(keys.for_user("u1", refs, create=True) for _ in range(20)))
    assert servicer.calls == 1
    sealed = found[0].seal(LOG, TODAY, "row-1", "x")
    assert all(k.open(LOG, TODAY, "row-1", sealed) == "x" for k in found)


async def test_a_concurrent_outage_reaches_every_asker(vault):
    servicer, _ = vault
    servicer.delay, servicer.down = 0.05, True
    keys = keys_of(vault)
    results = await asyncio.gather(
        *(keys.for_user("u1", [("webhooks_log", TODAY)], create=True) for _ in range(5)),
        return_exceptions=True,
    )
    assert servicer.calls == 1
    assert all(isinstance(r, KeysUnavailable) for r in results)


def test_a_rows_day_is_its_utc_day() -> None:
    assert day_of(datetime(2026, 3, 10, 23, 59, tzinfo=UTC)) == TODAY
    assert day_of(datetime(2026, 3, 11, 1, 0, tzinfo=UTC) - timedelta(hours=2)) == TODAY
    assert day_of(datetime(2026, 3, 10, 23, 30)) == TODAY  # naive: stored as UTC (SQLite)
