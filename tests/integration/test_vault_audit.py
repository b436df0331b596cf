"""The vault's audit log on a real SQLite file and a real PostgreSQL: resolves committed within
the flush interval and in order with everything else, a log that fails closed, and last use
written once a minute."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from services.kit.errors import Unavailable
from services.vault.audit import AuditLog
from services.vault.server import Parts, build, migrate_database
from tests.integration.vault_support import SECRETS, vault_settings


async def _events(parts: Parts, user_id: str = "user-a") -> list[dict]:
    async with parts.store.read() as tx:
        return await tx.audit_events(user_id)


async def _wait_for_events(parts: Parts, count: int, seconds: float = 2.0) -> list[dict]:
    deadline = time.monotonic() + seconds
    while True:
        events = await _events(parts)
        if len(events) >= count or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.01)


async def _credential(parts: Parts) -> str:
    created = await parts.credentials.create(
        "gateway", "user-a", "key", "api_key", "acme", SECRETS["api_key"]
    )
    return created["id"]


async def test_a_resolve_is_committed_within_the_flush_without_anyone_waiting(vault_parts: Parts):
    credential_id = await _credential(vault_parts)
    started = time.monotonic()
    await vault_parts.resolver.resolve("runner", "user-a", credential_id, "conn-1")
    events = await _wait_for_events(vault_parts, 2)
    assert [(e["action"], e["outcome"], e["connection_id"]) for e in events] == [
        ("create", "ok", None),
        ("resolve", "ok", "conn-1"),
    ]
    # Committed by the writer's flush (50 ms), not by the next synchronous event.
    assert time.monotonic() - started < 1.5


async def test_the_log_keeps_the_order_of_queued_and_awaited_events(vault_parts: Parts):
    vault = vault_parts
    credential_id = await _credential(vault_parts)
    for n in range(5):
        await vault.resolver.resolve("runner", "user-a", credential_id, f"conn-{n}")
    await vault.credentials.delete(
        "gateway", "user-a", credential_id
    )  # waits: what is ahead goes first
    events = await _events(vault_parts)
    assert [e["action"] for e in events] == ["create"] + ["resolve"] * 5 + ["delete"]
    assert [e["connection_id"] for e in events[1:6]] == [f"conn-{n}" for n in range(5)]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)


async def test_with_no_flush_interval_a_resolve_returns_once_committed(
    tmp_path: Path, database_url: str
):
    settings = vault_settings(tmp_path, database_url, audit_flush_seconds=0)
    migrate_database(settings)
    parts = build(settings)
    try:
        credential_id = await _credential(parts)
        await parts.resolver.resolve("runner", "user-a", credential_id, "conn-1")
        assert [e["action"] for e in await _events(parts)] == ["create", "resolve"]
    finally:
        await parts.close()


async def test_stopping_commits_what_is_queued(tmp_path: Path, database_url: str):
    settings = vault_settings(tmp_path, database_url, audit_flush_seconds=5)
    migrate_database(settings)
    parts = build(settings)
    credential_id = await _credential(parts)
    for _ in range(3):
        await parts.resolver.resolve("runner", "user-a", credential_id, "conn-1")
    await parts.close()
    again = build(settings)
    try:
        assert [e["action"] for e in await _events(again)] == ["create"] + ["resolve"] * 3
    finally:
        await again.close()


async def _rename_audit_table(parts: Parts, old: str, new: str) -> None:
    async with parts.store.begin() as tx:
        await tx.c.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


async def test_the_log_fails_closed_and_catches_up(vault_parts: Parts):
    """While events cannot be written, resolving is refused (nothing resolved unrecorded beyond
    one flush); once they can, the held events are written and resolving goes on."""
    vault = vault_parts
    credential_id = await _credential(vault_parts)
    await _rename_audit_table(vault_parts, "audit_events", "audit_events_away")
    try:
        await vault.resolver.resolve("runner", "user-a", credential_id, "conn-held")
        refused = None
        deadline = time.monotonic() + 3
        while refused is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            try:
                await vault.resolver.resolve("runner", "user-a", credential_id, "conn-later")
            except Unavailable as error:
                refused = error
        assert refused is not None and refused.reason == "AUDIT_UNAVAILABLE"
    finally:
        await _rename_audit_table(vault_parts, "audit_events_away", "audit_events")
    deadline = time.monotonic() + 5
    while True:  # the writer retries every second
        try:
            await vault.resolver.resolve("runner", "user-a", credential_id, "conn-after")
            break
        except Unavailable:
            assert time.monotonic() < deadline, "resolving never resumed"
            await asyncio.sleep(0.1)
    await vault.audit.flush()
    connections = [e["connection_id"] for e in await _events(vault_parts)]
    assert "conn-held" in connections and connections[-1] == "conn-after"


async def test_an_awaited_event_that_cannot_be_written_fails_its_caller(vault_parts: Parts):
    await _credential(vault_parts)
    await _rename_audit_table(vault_parts, "audit_events", "audit_events_away")
    try:
        with pytest.raises(Exception):  # noqa: B017 - the driver's own error, whichever it is
            await vault_parts.credentials.create(
                "gateway", "user-a", "other", "api_key", "acme", SECRETS["api_key"]
            )
    finally:
        await _rename_audit_table(vault_parts, "audit_events_away", "audit_events")


async def test_last_use_is_written_once_a_minute(vault_parts: Parts, clock):
    vault = vault_parts
    credential_id = await _credential(vault_parts)
    assert (await vault.credentials.get("user-a", credential_id))["last_use_time"] is None
    await vault.resolver.resolve("runner", "user-a", credential_id, "conn-1")
    await vault.audit.flush()
    first = (await vault.credentials.get("user-a", credential_id))["last_use_time"]
    assert first == clock.now()
    clock.advance(30)
    await vault.resolver.resolve("runner", "user-a", credential_id, "conn-1")
    await vault.audit.flush()
    assert (await vault.credentials.get("user-a", credential_id))["last_use_time"] == first
    clock.advance(31)
    await vault.resolver.resolve("runner", "user-a", credential_id, "conn-1")
    await vault.audit.flush()
    assert (await vault.credentials.get("user-a", credential_id))["last_use_time"] == clock.now()


async def test_a_writer_that_falls_behind_slows_resolving_rather_than_queueing_without_end(
    vault_parts: Parts,
):
    """Past `max_queued` queued events a resolve waits for its own commit (back-pressure): the
    queue is bounded, and nothing is refused while the log can be written."""
    vault = vault_parts
    credential_id = await _credential(vault_parts)
    await vault.audit.close()  # the vault's own log, for one that flushes only when made to
    vault.audit = vault.resolver.audit = AuditLog(
        vault.store, vault.resolver.clock, flush_seconds=30, max_queued=3
    )
    for n in range(3):
        await vault.resolver.resolve("runner", "user-a", credential_id, f"conn-{n}")
    assert [e["action"] for e in await _events(vault_parts)] == ["create"]  # queued only
    await vault.resolver.resolve(
        "runner", "user-a", credential_id, "conn-3"
    )  # waits: the queue is full
    events = await _events(vault_parts)
    assert [e["connection_id"] for e in events[1:]] == [f"conn-{n}" for n in range(4)]
