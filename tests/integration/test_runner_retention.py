"""The runner as a retention participant, over real sockets with mTLS, on SQLite and PostgreSQL:
rows on both sides of every limit kept or purged exactly, details purged inside a run that stays
listed, purges in batches while webhooks keep coming, an erasure that leaves nothing of the user,
an export of the user's rows only, the caller matrix, and erased bytes gone from SQLite's files."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from leadmesh.retention.v1 import retention_pb2 as pb
from leadmesh.retention.v1 import retention_pb2_grpc
from leadmesh.runner.v1 import runner_pb2 as rpb
from sqlalchemy import insert, select

from services.kit.callers import user_metadata
from services.kit.config import MeshSettings
from services.kit.grpcclient import open_channel
from services.runner.tables import (
    attempts,
    idempotency_keys,
    metadata,
    notifications,
    runs,
    webhook_log,
    webhook_signatures,
)
from tests.integration.runner_support import RunnerMesh, runner_mesh
from tests.support.receiver import Receiver

A, B = "user-a", "user-b"
SERVICE = pb.DESCRIPTOR.services_by_name["RetentionParticipant"]
UNARY = ["ListPolicies", "Purge", "EraseSubject"]


@pytest.fixture
def receiver(tmp_path: Path):
    with Receiver(tmp_path / "receiver") as server:
        yield server


@pytest.fixture
async def rm(tmp_path: Path, mesh: MeshSettings, database_url: str, receiver, clock):
    async with runner_mesh(
        tmp_path, mesh.pki_dir, database_url, ca_file=str(receiver.ca_file), clock=clock
    ) as built:
        yield built


def participant(rm: RunnerMesh, caller: str) -> retention_pb2_grpc.RetentionParticipantStub:
    there = MeshSettings(var_dir=rm.var, runner_addr=f"127.0.0.1:{rm.runner.port}", _env_file=None)
    channel = open_channel(there, "runner", caller=caller)
    rm.channels.append(channel)
    return retention_pb2_grpc.RetentionParticipantStub(channel)


async def exported(stub, user_id: str = "", metadata=()) -> list[tuple[str, dict]]:
    records = stub.ExportSubject(pb.ExportSubjectRequest(user_id=user_id), metadata=metadata)
    return [(r.section, json.loads(r.json)) async for b in records for r in b.records]


async def purge_all(stub, now: datetime, batch_size: int = 0) -> dict[str, int]:
    """Every category with a max age purged as of `now`, called again while rows remain."""
    policies = (await stub.ListPolicies(pb.ListPoliciesRequest())).policies
    deleted: dict[str, int] = {}
    for policy in policies:
        if not policy.HasField("max_age"):
            continue
        cutoff = pb.PurgeRequest(category=policy.category, batch_size=batch_size)
        cutoff.cutoff.FromDatetime(now - policy.max_age.ToTimedelta())
        deleted[policy.category] = 0
        while True:
            reply = await stub.Purge(cutoff)
            deleted[policy.category] += reply.rows_deleted
            if not reply.rows_still_expired:
                break
    return deleted


def sign(secret: str, body: bytes, when: int) -> str:
    mac = hmac.new(secret.encode(), f"{when}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={when},v1={mac}"


async def rows(rm: RunnerMesh, table) -> list[dict]:
    async with rm.runner.parts.core.store.read() as tx:
        return await tx._all(select(table))


# --- caller matrix -----------------------------------------------------------------------------


async def outcome(stub, method: str, request=None, **kwargs):
    request = request or getattr(pb, f"{method}Request")()
    try:
        if method == "ExportSubject":
            return [r async for r in stub.ExportSubject(request, timeout=10, **kwargs)]
        return await getattr(stub, method)(request, timeout=10, **kwargs)
    except grpc.aio.AioRpcError as error:
        return error


def code(result) -> grpc.StatusCode:
    return result.code() if isinstance(result, grpc.aio.AioRpcError) else grpc.StatusCode.OK


async def test_retention_may_call_every_participant_rpc(rm):
    stub = participant(rm, "retention")
    assert code(await outcome(stub, "ListPolicies")) == grpc.StatusCode.OK
    # Past the access check: each refuses the empty request on its merits.
    assert code(await outcome(stub, "Purge")) == grpc.StatusCode.NOT_FOUND  # no category ""
    assert code(await outcome(stub, "EraseSubject")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(await outcome(stub, "ExportSubject")) == grpc.StatusCode.INVALID_ARGUMENT
    connections_purge = pb.PurgeRequest(category="connections")
    connections_purge.cutoff.GetCurrentTime()
    assert code(await outcome(stub, "Purge", connections_purge)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_the_gateway_exports_its_acting_user_only(rm):
    await rm.connection(A, "https://a.example.com/", trigger="webhook")
    await rm.connection(B, "https://b.example.com/", trigger="webhook")
    stub = participant(rm, "gateway")
    for method in UNARY:
        result = await outcome(stub, method, metadata=user_metadata(A))
        assert code(result) == grpc.StatusCode.PERMISSION_DENIED, method
    mine = await exported(stub, metadata=user_metadata(A))
    assert [s for s, _ in mine] == ["connections"] and mine[0][1]["user_id"] == A
    other = await outcome(
        stub, "ExportSubject", pb.ExportSubjectRequest(user_id=B), metadata=user_metadata(A)
    )
    assert code(other) == grpc.StatusCode.NOT_FOUND
    assert code(await outcome(stub, "ExportSubject")) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("caller", ["runner", "vault", "identity", "operator"])
async def test_no_one_else_may_call_a_participant_rpc(rm, caller: str):
    stub = participant(rm, caller)
    for method in [*UNARY, "ExportSubject"]:
        result = await outcome(stub, method)
        assert code(result) == grpc.StatusCode.PERMISSION_DENIED, (caller, method)


def test_the_caller_table_names_every_participant_rpc():
    from services.kit.retention import ALLOWED_CALLERS

    assert sorted(m.rsplit("/", 1)[1] for m in ALLOWED_CALLERS) == sorted(
        m.name for m in SERVICE.methods
    )


# --- purges ------------------------------------------------------------------------------------


async def seed(rm: RunnerMesh, user: str, when: datetime, label: str) -> str:
    """One row in each of the runner's tables with a time, all of them at `when`."""
    run_id, connection_id = f"run-{label}", f"conn-{user}"
    async with rm.runner.parts.core.store.begin() as tx:
        await tx.c.execute(
            insert(runs).values(
                id=run_id, user_id=user, connection_id=connection_id, trigger="webhook",
                status="succeeded", attempts=1, max_attempts=5, event={"body": label},
                create_time=when, next_attempt_time=when,
            )
        )  # fmt: skip
        await tx.c.execute(
            insert(attempts).values(
                run_id=run_id, user_id=user, number=1, start_time=when, finish_time=when,
                request={"body": label}, response_truncated=False,
            )
        )  # fmt: skip
        await tx.c.execute(
            insert(webhook_log).values(
                id=f"hook-{label}", user_id=user, connection_id=connection_id, run_id=run_id,
                receive_time=when, source_ip="203.0.113.9", method="POST", headers=[],
                query="", body_encoding="text", body=label,
            )
        )  # fmt: skip
        await tx.c.execute(
            insert(notifications).values(
                id=f"note-{label}", user_id=user, kind="run_failed", message=label,
                run_id=run_id, create_time=when,
            )
        )  # fmt: skip
        await tx.c.execute(
            insert(idempotency_keys).values(
                connection_id=connection_id, key_sha256=label, run_id=run_id, create_time=when
            )
        )
        await tx.c.execute(
            insert(webhook_signatures).values(
                connection_id=connection_id, signature_sha256=label, run_id=run_id,
                expire_time=when,
            )
        )  # fmt: skip
    return run_id


async def test_rows_on_both_sides_of_every_limit_are_kept_or_purged_exactly(rm, clock):
    now = clock.now()
    stub = participant(rm, "retention")
    policies = (await stub.ListPolicies(pb.ListPoliciesRequest())).policies
    limits = {p.category: p.max_age.ToTimedelta() for p in policies if p.HasField("max_age")}
    assert limits == {
        "attempt_details": timedelta(days=7), "execution_details": timedelta(days=7),
        "webhooks_log": timedelta(days=7), "notifications": timedelta(days=7),
        "idempotency_keys": timedelta(hours=24), "webhook_signatures": timedelta(days=1),
        "activity": timedelta(days=30),
    }  # fmt: skip
    ages = sorted({limit + d for limit in limits.values() for d in (-timedelta(minutes=1),
                   timedelta(minutes=1))})  # fmt: skip
    labels = {}
    for index, age in enumerate(ages):
        label = f"{index:02d}-{int(age.total_seconds())}"
        labels[label] = age
        await seed(rm, A if index % 2 else B, now - age, label)

    listed = {p.category: p for p in (await stub.ListPolicies(pb.ListPoliciesRequest())).policies}
    for name, limit in limits.items():
        expected = sum(1 for age in ages if age > limit)
        assert listed[name].expired_rows == expected, name
    await purge_all(stub, now)

    def kept(limit: timedelta) -> set[str]:
        return {label for label, age in labels.items() if age < limit}

    days7, day = timedelta(days=7), timedelta(days=1)
    assert {r["id"][4:] for r in await rows(rm, runs)} == kept(timedelta(days=30))
    assert {r["event"]["body"] for r in await rows(rm, runs) if r["event"]} == kept(days7)
    purged = [r for r in await rows(rm, runs) if r["event"] is None]
    assert purged and all(r["details_purge_time"] == now for r in purged)
    assert {r["request"]["body"] for r in await rows(rm, attempts)} == kept(days7)
    assert {r["body"] for r in await rows(rm, webhook_log)} == kept(days7)
    assert {r["message"] for r in await rows(rm, notifications)} == kept(days7)
    assert {r["key_sha256"] for r in await rows(rm, idempotency_keys)} == kept(day)
    assert {r["signature_sha256"] for r in await rows(rm, webhook_signatures)} == kept(day)
    after = (await stub.ListPolicies(pb.ListPoliciesRequest())).policies
    assert all(p.expired_rows == 0 for p in after)
    # A second purge finds nothing.
    assert set((await purge_all(stub, now)).values()) == {0}


async def test_a_run_that_has_not_ended_keeps_its_event_and_row_past_every_limit(rm, clock):
    """A run not ended yet (its runner down for weeks) would be delivered with a null event, or
    vanish before delivery: a purge leaves it, and the category shows how old it is."""
    now = clock.now()
    run_id = await seed(rm, A, now - timedelta(days=40), "stuck")
    async with rm.runner.parts.core.store.begin() as tx:
        # Claimed by a worker elsewhere (leased well past the test), so none here takes it.
        await tx.c.execute(
            runs.update()
            .where(runs.c.id == run_id)
            .values(status="running", worker="elsewhere", lease_until=now + timedelta(days=1))
        )
    stub = participant(rm, "retention")
    await purge_all(stub, now)
    [row] = [r for r in await rows(rm, runs) if r["id"] == run_id]
    assert row["event"] == {"body": "stuck"} and row["details_purge_time"] is None
    listed = {p.category: p for p in (await stub.ListPolicies(pb.ListPoliciesRequest())).policies}
    assert listed["activity"].oldest_time.ToDatetime(UTC) == now - timedelta(days=40)
    assert listed["activity"].expired_rows == 0


async def test_an_old_run_stays_listed_without_its_details(rm, receiver, clock):
    now = clock.now()
    made = await rm.connection(A, receiver.https_url("/leads"), trigger="webhook")
    clock.set(now - timedelta(days=10))
    old = (await rm.hook(made.webhook_token, {"lead": "old"})).run_id
    assert len((await rm.finished(A, old)).attempts) == 1
    clock.set(now - timedelta(days=1))
    fresh = (await rm.hook(made.webhook_token, {"lead": "fresh"})).run_id
    assert len((await rm.finished(A, fresh)).attempts) == 1
    clock.set(now)

    await purge_all(participant(rm, "retention"), now)
    listed = await rm.stub.ListActivity(rpb.ListRequest(page_size=10), metadata=user_metadata(A))
    assert [r.id for r in listed.runs] == [fresh, old]
    [row] = [r for r in await rows(rm, runs) if r["id"] == old]
    assert row["event"] is None and row["details_purge_time"] == now
    detail = await rm.detail(A, old)
    assert detail.run.details_purged
    assert detail.run.details_purge_time.ToDatetime().timestamp() == now.timestamp()
    assert not detail.attempts and not detail.HasField("event")
    kept = await rm.detail(A, fresh)
    assert not kept.run.details_purged and len(kept.attempts) == 1
    log = await rm.stub.ListWebhookLog(rpb.ListRequest(page_size=10), metadata=user_metadata(A))
    assert [e.run_id for e in log.entries] == [fresh]


async def test_a_large_purge_goes_in_batches_while_webhooks_keep_coming(rm, clock):
    now = clock.now()
    made = await rm.connection(B, "https://b.example.com/", trigger="webhook")
    old = now - timedelta(days=40)
    count = 6000
    async with rm.runner.parts.core.store.begin() as tx:
        await tx.c.execute(
            insert(runs),
            [dict(id=str(uuid.uuid4()), user_id=A, connection_id="conn-a", trigger="webhook",
                  status="succeeded", attempts=1, max_attempts=5, event={"body": i},
                  create_time=old, next_attempt_time=old) for i in range(count)],
        )  # fmt: skip
    stub = participant(rm, "retention")
    request = pb.PurgeRequest(category="activity", batch_size=200)
    request.cutoff.FromDatetime(now - timedelta(days=30))

    async def purge() -> tuple[int, int]:
        deleted = batches = 0
        while True:
            reply = await stub.Purge(request)
            deleted, batches = deleted + reply.rows_deleted, batches + reply.batches
            if not reply.rows_still_expired:
                return deleted, batches

    async def ingest() -> int:
        accepted = 0
        for i in range(20):
            await asyncio.wait_for(rm.hook(made.webhook_token, {"i": i}), timeout=10)
            accepted += 1
        return accepted

    (deleted, batches), accepted = await asyncio.gather(purge(), ingest())
    assert deleted == count and batches >= count // 200
    assert accepted == 20
    assert {r["user_id"] for r in await rows(rm, runs)} == {B}


# --- erasure and export ------------------------------------------------------------------------


async def a_user_with_everything(rm: RunnerMesh, receiver: Receiver, user: str) -> dict:
    """Connections of each kind, runs delivered and failed, idempotency keys, signatures."""
    secret = f"whsec_{user}_0123456789"
    hook = await rm.connection(user, receiver.https_url(f"/{user}"), trigger="webhook",
                               signing_secret=secret, max_attempts=1)  # fmt: skip
    await rm.connection(
        user, receiver.https_url("/s"), trigger="schedule", every_seconds=3600, name="hourly"
    )
    body = json.dumps({"who": f"body-of-{user}"}).encode()
    stamp = int(rm.runner.parts.core.clock.now().timestamp())
    signed = await rm.hook(
        hook.webhook_token,
        body,
        {"X-Leadmesh-Signature": sign(secret, body, stamp), "Idempotency-Key": f"key-{user}"},
    )
    await rm.finished(user, signed.run_id)
    receiver.respond(400)
    stamp += 1
    failed = await rm.hook(
        hook.webhook_token, body, {"X-Leadmesh-Signature": sign(secret, body, stamp)}
    )
    assert (await rm.finished(user, failed.run_id)).run.status == "failed"
    return {"connection": hook.connection.id, "runs": {signed.run_id, failed.run_id}}


def everything_of(dump: dict[str, list[dict]], user: str, ids: set[str]) -> list[str]:
    """Where the user's id or one of their ids still appears."""
    found = []
    for table, table_rows in dump.items():
        for row in table_rows:
            text = json.dumps(row, default=str)
            if user in text or any(i in text for i in ids):
                found.append(table)
    return found


async def dump_all(rm: RunnerMesh) -> dict[str, list[dict]]:
    return {name: await rows(rm, table) for name, table in metadata.tables.items()}


async def test_erasure_leaves_nothing_of_the_user_and_everyone_else_intact(rm, receiver):
    mine = await a_user_with_everything(rm, receiver, A)
    theirs = await a_user_with_everything(rm, receiver, B)
    before = await dump_all(rm)
    for table in ("runs", "attempts", "webhook_log", "notifications", "idempotency_keys",
                  "webhook_signatures", "failure_mails", "connections"):  # fmt: skip
        assert everything_of({table: before[table]}, A, {mine["connection"]}), table
    ids = {mine["connection"], *mine["runs"]}
    schedule_jobs = {job.id for job in rm.runner.parts.schedules.scheduler.get_jobs()}

    stub = participant(rm, "retention")
    reply = await stub.EraseSubject(pb.EraseSubjectRequest(user_id=A, case_id="case-1"))
    erased = {c.category: c.rows_erased for c in reply.categories}
    assert erased["connections"] == 2 and erased["activity"] == 2
    assert erased["idempotency_keys"] == 1 and erased["webhook_signatures"] == 2
    assert erased["attempt_details"] == 2 and erased["webhooks_log"] == 2
    assert erased["notifications"] >= 1 and erased["failure_mails"] == 1
    assert all(c.rows_kept == 0 for c in reply.categories)

    after = await dump_all(rm)
    assert everything_of(after, A, ids) == []
    assert everything_of(after, B, {theirs["connection"]})
    for table in metadata.tables:  # every row not of the user is still there, as it was
        others = [r for r in before[table] if not everything_of({table: [r]}, A, ids)]
        assert all(r in after[table] for r in others), table
    left = {job.id for job in rm.runner.parts.schedules.scheduler.get_jobs()}
    assert len(left) == len(schedule_jobs) - 1
    # Idempotent; and the user's webhook is gone with the connection.
    again = await stub.EraseSubject(pb.EraseSubjectRequest(user_id=A, case_id="case-1"))
    assert all(c.rows_erased == 0 for c in again.categories)
    assert await exported(stub, A) == []


async def test_an_erasure_waits_for_a_delivery_under_way_and_leaves_nothing_after_it(rm, receiver):
    made = await rm.connection(A, receiver.https_url("/slow"), trigger="webhook", max_attempts=3)
    receiver.respond(503, delay=1.5)  # under way when the erasure comes, then retried
    run_id = (await rm.hook(made.webhook_token, {"lead": 1})).run_id
    for _ in range(500):  # the request has arrived: the delivery is under way
        if receiver.requests:
            break
        await asyncio.sleep(0.02)
    reply = await participant(rm, "retention").EraseSubject(pb.EraseSubjectRequest(user_id=A))
    erased = {c.category: c.rows_erased for c in reply.categories}
    # The attempt the delivery recorded after the erasure began was erased with the rest.
    assert erased["activity"] == 1 and erased["attempt_details"] == 1
    await asyncio.sleep(1.0)  # a retry would have been due by now
    assert len(receiver.requests) == 1
    assert everything_of(await dump_all(rm), A, {made.connection.id, run_id}) == []


async def test_the_export_holds_the_users_rows_and_nobody_elses(rm, receiver):
    mine = await a_user_with_everything(rm, receiver, A)
    await a_user_with_everything(rm, receiver, B)
    records = await exported(participant(rm, "retention"), A)
    sections = {section for section, _ in records}
    assert {"connections", "runs", "attempts", "webhook_log", "notifications"} <= sections
    # All the records of a section are consecutive.
    order = [s for i, (s, _) in enumerate(records) if i == 0 or records[i - 1][0] != s]
    assert len(order) == len(sections)
    assert all(B not in json.dumps(record) for _, record in records)
    assert all(record["user_id"] == A for _, record in records)
    for _, record in (r for r in records if r[0] == "connections"):
        assert "signing_secret" not in record and "webhook_token_sha256" not in record
    exported_runs = {r["id"]: r for s, r in records if s == "runs"}
    assert set(exported_runs) == mine["runs"]
    assert all(r["event"]["body"] == {"who": "body-of-user-a"} for r in exported_runs.values())
    by_gateway = await exported(participant(rm, "gateway"), metadata=user_metadata(A))
    assert by_gateway == records


# --- the files ---------------------------------------------------------------------------------


def in_files(directory: Path, value: str) -> list[str]:
    needle = value.encode()
    return [p.name for p in directory.glob("service.db*") if needle in p.read_bytes()]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_purged_and_erased_values_leave_the_sqlite_files(
    mesh, database_url, receiver, clock, tmp_path
):
    # Plaintext rows (written before sealing existed, or with sealing off): a sealed value is in
    # no file to begin with (test_runner_sealing.py), a plaintext one must leave them.
    async with runner_mesh(
        tmp_path, mesh.pki_dir, database_url, ca_file=str(receiver.ca_file), clock=clock,
        seal_execution_data=False,
    ) as rm:  # fmt: skip
        await _values_leave_the_files(rm, clock, receiver, tmp_path)


async def _values_leave_the_files(rm, clock, receiver, tmp_path) -> None:
    now = clock.now()
    made = await rm.connection(A, receiver.https_url("/a"), trigger="webhook")
    other = await rm.connection(B, receiver.https_url("/b"), trigger="webhook")
    purged_value, erased_value = f"purged-{uuid.uuid4().hex}", f"erased-{uuid.uuid4().hex}"
    clock.set(now - timedelta(days=10))
    old = await rm.hook(made.webhook_token, {"secret": purged_value})
    await rm.finished(A, old.run_id)
    clock.set(now)
    erased = await rm.hook(other.webhook_token, {"secret": erased_value})
    await rm.finished(B, erased.run_id)
    assert in_files(tmp_path, purged_value) and in_files(tmp_path, erased_value)

    stub = participant(rm, "retention")
    await purge_all(stub, now)
    assert in_files(tmp_path, purged_value) == []
    await stub.EraseSubject(pb.EraseSubjectRequest(user_id=B, case_id="case-2"))
    assert in_files(tmp_path, erased_value) == []
    assert in_files(tmp_path, B) == []
