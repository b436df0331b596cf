"""The runner's execution data sealed at rest, with a real vault: both over real sockets with
mTLS, the runner on a real SQLite file and a real PostgreSQL. A marked lead e-mail is accepted,
delivered and shown, and found in no byte of the runner's database; during a vault outage a user
whose keys are in memory is still accepted and a user never seen is refused (UNAVAILABLE, with a
Retry-After), and everything accepted is delivered once the vault is back; a sealed value copied
into another row reads as purged, and so does every value of a destroyed day: never an error."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import grpc
import pytest
from leadmesh.runner.v1 import runner_pb2 as rpb
from leadmesh.vault.v1 import vault_pb2 as vpb
from sqlalchemy import select, update

from services.kit.callers import user_metadata
from services.kit.errors import from_rpc_error
from services.kit.sealing import is_sealed
from services.kit.timestamps import json_value
from services.runner.activity import PURGED_MESSAGE
from services.runner.tables import attempts, notifications, runs, webhook_log
from tests.integration import runner_support
from tests.integration.runner_support import RunnerMesh, runner_mesh
from tests.support.receiver import Receiver

receiver, rm = runner_support.receiver, runner_support.rm

USER, OTHER = "user-sealing-a", "user-sealing-b"
MARKED = "marked-lead-7f3a@example.com"
CATEGORIES = ("webhooks_log", "execution_details", "attempt_details", "notifications")


async def webhook_connection(rm: RunnerMesh, receiver: Receiver, user: str = USER, **fields):
    return await rm.connection(
        user,
        receiver.https_url("/leads"),
        trigger="webhook",
        body_template={"email": "{{ body.email }}"},
        **fields,
    )


async def stored(rm: RunnerMesh, table) -> list[dict]:
    async with rm.runner.parts.core.store.database.read() as connection:
        rows = await connection.execute(select(table).order_by(table.c.seq))
        return [dict(row._mapping) for row in rows]


async def test_a_marked_lead_is_delivered_shown_and_in_no_byte_of_the_database(
    rm: RunnerMesh, receiver: Receiver
):
    made = await webhook_connection(rm, receiver)
    failing = await webhook_connection(rm, receiver, name="failing", max_attempts=1)
    receiver.respond(422, body={"error": f"{MARKED} is already a contact"})
    failed = await rm.hook(failing.webhook_token, {"email": MARKED})
    assert (await rm.finished(USER, failed.run_id)).run.status == "failed"
    reply = await rm.hook(made.webhook_token, {"email": MARKED}, headers={"x-lead-from": MARKED})
    detail = await rm.finished(USER, reply.run_id)

    assert detail.run.status == "succeeded" and not detail.run.details_purged
    assert receiver.requests[-1].json() == {"email": MARKED}
    assert json_value(detail.event)["body"] == {"email": MARKED}
    assert MARKED in json.dumps(json_value(detail.attempts[0].request))
    entry = (await rm.webhook_log(USER))[0]
    assert json.loads(entry.body) == {"email": MARKED}
    assert ("x-lead-from", MARKED) in [(h.name, h.value) for h in entry.headers]
    refused = (await rm.detail(USER, failed.run_id)).attempts[0]
    assert MARKED in refused.response_body
    assert [n.kind for n in await rm.notifications(USER)] == ["run_failed"]

    for row in await stored(rm, runs):
        assert is_sealed(row["event"])
    for row in await stored(rm, webhook_log):
        assert all(is_sealed(row[c]) for c in ("headers", "query", "body"))
    for row in await stored(rm, attempts):
        assert is_sealed(row["request"]) and is_sealed(row["response_body"])
    for row in await stored(rm, notifications):
        assert is_sealed(row["message"])
    assert MARKED.encode() not in await rm.database_bytes()


async def test_during_a_vault_outage_known_users_are_accepted_and_nothing_accepted_is_lost(
    rm: RunnerMesh, receiver: Receiver
):
    made = await webhook_connection(rm, receiver)
    never_seen = await webhook_connection(rm, receiver, user=OTHER)
    first = await rm.hook(made.webhook_token, {"email": "first@example.com"})
    await rm.finished(USER, first.run_id)

    stopped = await rm.stop_vault()
    try:
        accepted = [
            (await rm.hook(made.webhook_token, {"email": f"lead-{n}@example.com"})).run_id
            for n in range(5)
        ]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await rm.hook(never_seen.webhook_token, {"email": "refused@example.com"})
        error = from_rpc_error(refused.value)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert error.reason == "EXECUTION_KEYS_UNAVAILABLE"
        assert error.retry_after and error.retry_after > 0
        # Refused means stored nowhere, in no form.
        assert b"refused@example.com" not in await rm.database_bytes()
    finally:
        await rm.restart_vault(stopped)

    for run_id in accepted:
        assert (await rm.finished(USER, run_id, timeout=30)).run.status == "succeeded"
    delivered = {r.json()["email"] for r in receiver.requests}
    assert {f"lead-{n}@example.com" for n in range(5)} <= delivered
    later = None
    for _ in range(100):  # the runner's channel reconnects to the vault
        try:
            later = await rm.hook(never_seen.webhook_token, {"email": "later@example.com"})
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    assert later is not None
    assert (await rm.finished(OTHER, later.run_id)).run.status == "succeeded"


async def test_a_sealed_value_copied_into_another_row_reads_as_purged(
    rm: RunnerMesh, receiver: Receiver
):
    made = await webhook_connection(rm, receiver, max_attempts=1)
    receiver.respond(500, times=2)
    ids = [(await rm.hook(made.webhook_token, {"email": f"{n}{MARKED}"})).run_id for n in (1, 2)]
    for run_id in ids:
        await rm.finished(USER, run_id)
    first, second = ids
    events = {row["id"]: row["event"] for row in await stored(rm, runs)}
    entries, notices = await stored(rm, webhook_log), await stored(rm, notifications)
    async with rm.runner.parts.core.store.database.write() as connection:
        await connection.execute(
            update(runs).where(runs.c.id == second).values(event=events[first])
        )
        await connection.execute(
            update(webhook_log)
            .where(webhook_log.c.id == entries[1]["id"])
            .values(body=entries[0]["body"])
        )
        await connection.execute(
            update(notifications)
            .where(notifications.c.id == notices[1]["id"])
            .values(message=notices[0]["message"])
        )

    moved = await rm.detail(USER, second)
    assert moved.run.details_purged and not moved.HasField("event") and not moved.attempts
    day_end = datetime.combine(moved.run.create_time.ToDatetime().date(), time.min, UTC)
    purged_at = moved.run.details_purge_time.ToDatetime(UTC)
    assert purged_at == day_end + timedelta(days=1 + 7)
    kept = await rm.detail(USER, first)
    assert not kept.run.details_purged and json_value(kept.event)["body"]["email"] == f"1{MARKED}"

    log = await rm.webhook_log(USER)  # newest first
    assert log[0].body == "" and log[0].headers == [] and json.loads(log[1].body)
    parts = rm.runner.parts
    entries, _ = await parts.activity.webhook_log(USER, "", 100, "")
    assert [e.details_purged for e in entries] == [True, False]
    listed = await rm.notifications(USER)
    assert [n.message == PURGED_MESSAGE for n in listed] == [True, False]


async def test_a_destroyed_day_key_reads_as_purged_through_every_endpoint(
    rm: RunnerMesh, receiver: Receiver
):
    made = await webhook_connection(rm, receiver, max_attempts=1)
    receiver.respond(500)
    run_id = (await rm.hook(made.webhook_token, {"email": MARKED})).run_id
    await rm.finished(USER, run_id)
    today = datetime.now(UTC).date()
    retention = rm.dial("vault", "retention")
    keys = rm.runner.parts.core.keys
    for category in CATEGORIES:
        before = (today + timedelta(days=1)).isoformat()
        destroyed = await retention.DestroyExpiredEpochKeys(
            vpb.DestroyExpiredEpochKeysRequest(
                participant="runner", category=category, before=before
            )
        )
        assert destroyed.keys_destroyed >= 1
        keys.forget_before(category, before)  # as retention's purge tells the runner

    detail = await rm.detail(USER, run_id)
    assert detail.run.details_purged and not detail.HasField("event") and not detail.attempts
    assert detail.run.details_purge_time.ToDatetime(UTC) == datetime.combine(
        today + timedelta(days=8), time.min, UTC
    )
    [entry] = await rm.webhook_log(USER)
    assert entry.body == "" and entry.query == "" and not entry.headers
    [notice] = await rm.notifications(USER)
    assert notice.message == PURGED_MESSAGE and notice.kind == "run_failed"
    read = await rm.stub.MarkNotificationRead(
        rpb.MarkNotificationReadRequest(id=notice.id),
        metadata=user_metadata(USER),
    )
    assert read.message == PURGED_MESSAGE
    activity = await rm.stub.ListActivity(
        rpb.ListRequest(page_size=10), metadata=user_metadata(USER)
    )
    assert [r.id for r in activity.runs] == [run_id]


async def test_with_sealing_off_payloads_are_plaintext_and_read_alike(
    tmp_path: Path, mesh, database_url: str, receiver: Receiver
):
    async with runner_mesh(
        tmp_path,
        mesh.pki_dir,
        database_url,
        ca_file=str(receiver.ca_file),
        seal_execution_data=False,
    ) as plain:
        made = await webhook_connection(plain, receiver)
        reply = await plain.hook(made.webhook_token, {"email": MARKED})
        detail = await plain.finished(USER, reply.run_id)
        assert json_value(detail.event)["body"] == {"email": MARKED}
        assert json.loads((await plain.webhook_log(USER))[0].body) == {"email": MARKED}
        assert not any(is_sealed(row["event"]) for row in await stored(plain, runs))
        assert MARKED.encode() in await plain.database_bytes()


class CountingVault:
    """The runner's real vault stub, counting its GetExecutionKeys calls."""

    def __init__(self, stub) -> None:
        self.stub, self.calls = stub, 0

    async def GetExecutionKeys(self, request, **kwargs):  # noqa: N802 - gRPC method name
        self.calls += 1
        return await self.stub.GetExecutionKeys(request, **kwargs)


async def test_a_page_of_rows_costs_one_key_request_not_one_per_row(
    rm: RunnerMesh, receiver: Receiver
):
    made = await webhook_connection(rm, receiver)
    ids = [(await rm.hook(made.webhook_token, {"email": f"{n}{MARKED}"})).run_id for n in range(30)]
    for run_id in ids:
        await rm.finished(USER, run_id)
    keys = rm.runner.parts.core.keys
    counting = keys.vault = CountingVault(keys.vault)
    keys.forget_user(USER)  # nothing in memory: every row's key must be asked for
    log = await rm.webhook_log(USER)
    assert len(log) == 30 and all(MARKED in e.body for e in log)
    assert counting.calls == 1
    keys.forget_user(USER)
    detail = await rm.detail(USER, ids[0])  # the event and the attempts: one call too
    assert detail.attempts and detail.HasField("event")
    assert counting.calls == 2
