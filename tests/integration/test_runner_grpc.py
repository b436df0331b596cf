"""The runner over real sockets with mTLS: the caller matrix, one user never reaching another's
resources, webhook authenticity, idempotency and rate limits, and validation when saving."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from leadmesh.runner.v1 import runner_pb2 as pb
from sqlalchemy import select

from services.kit.callers import user_metadata
from services.kit.clock import SettableClock
from services.kit.config import MeshSettings
from services.kit.errors import from_rpc_error
from services.runner.api import ALLOWED_CALLERS
from services.runner.server import start as start_runner
from services.runner.tables import webhook_signatures
from tests.integration.grpc_support import call, refused
from tests.integration.runner_support import runner_mesh, runner_settings

SERVICE = pb.DESCRIPTOR.services_by_name["RunnerService"]
METHODS = [m.name for m in SERVICE.methods]
OPERATOR_METHODS = ["GetQueueStatus", "GetRunTrace"]
A, B = "user-a", "user-b"
URL = "https://api.example.com/leads"


@pytest.fixture
async def rm(tmp_path: Path, mesh: MeshSettings, database_url: str):
    # No workers: these tests look at what is accepted, not at deliveries.
    async with runner_mesh(
        tmp_path, mesh.pki_dir, database_url, workers=0, webhook_burst=5,
        webhook_rate_per_second=1,
    ) as built:  # fmt: skip
        yield built


def test_the_table_names_every_rpc():
    assert sorted(m.rsplit("/", 1)[1] for m in ALLOWED_CALLERS) == sorted(METHODS)


@pytest.mark.parametrize("caller", ["identity", "vault", "runner", "retention", "operator"])
async def test_only_the_gateway_may_call(rm, caller: str):
    stub = rm.dial("runner", caller)
    for method in METHODS:
        if method in OPERATOR_METHODS:
            continue
        outcome = await call(stub, SERVICE, method)
        assert refused(outcome, grpc.StatusCode.PERMISSION_DENIED), (caller, method, outcome)


@pytest.mark.parametrize("caller", ["gateway", "identity", "vault", "runner", "retention"])
async def test_only_the_operator_may_read_the_queue_and_a_runs_trace(rm, caller: str):
    stub = rm.dial("runner", caller)
    for method in OPERATOR_METHODS:
        outcome = await call(stub, SERVICE, method)
        assert refused(outcome, grpc.StatusCode.PERMISSION_DENIED), (caller, method, outcome)


async def test_the_operator_reads_the_queue_and_a_runs_trace_of_any_user(rm):
    operator = rm.dial("runner", "operator")
    empty = await operator.GetQueueStatus(pb.GetQueueStatusRequest())
    assert (empty.pending_runs, empty.due_runs) == (0, 0)
    assert not empty.HasField("oldest_pending_create_time")
    made = await rm.connection(A, URL, trigger="webhook")
    run_id = await rm.run(A, made.connection.id, {"x": 1})  # no workers: it stays queued
    queued = await operator.GetQueueStatus(pb.GetQueueStatusRequest())
    assert (queued.pending_runs, queued.due_runs) == (1, 1)
    assert queued.oldest_pending_create_time.ToDatetime() <= queued.read_time.ToDatetime()
    found = await operator.GetRunTrace(pb.GetRunTraceRequest(run_id=run_id))
    assert (found.run_id, found.status) == (run_id, "queued")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await operator.GetRunTrace(pb.GetRunTraceRequest(run_id="no-such-run"))
    assert from_rpc_error(unknown.value).reason == "RUN_NOT_FOUND"


async def test_user_b_never_reaches_user_a_resources(rm):
    made = await rm.connection(A, URL, trigger="webhook")
    connection_id = made.connection.id
    run_id = await rm.run(A, connection_id, {"x": 1})
    await rm.hook(made.webhook_token, {"y": 2})
    b = user_metadata(B)
    attempts = {
        "GetConnection": pb.GetConnectionRequest(id=connection_id),
        "UpdateConnection": pb.UpdateConnectionRequest(
            id=connection_id, name="mine", update_mask=field_mask_pb2.FieldMask(paths=["name"])
        ),
        "DeleteConnection": pb.DeleteConnectionRequest(id=connection_id),
        "RotateWebhookToken": pb.RotateWebhookTokenRequest(id=connection_id),
        "StartRun": pb.StartRunRequest(connection_id=connection_id),
        "GetRun": pb.GetRunRequest(id=run_id),
    }
    for method, request in attempts.items():
        outcome = await call(rm.stub, SERVICE, method, request, metadata=b)
        assert refused(outcome, grpc.StatusCode.NOT_FOUND), (method, outcome)
    lists = {
        "ListConnections": "connections",
        "ListActivity": "runs",
        "ListWebhookLog": "entries",
        "ListNotifications": "notifications",
    }
    for method, field in lists.items():
        reply = await call(rm.stub, SERVICE, method, metadata=b)
        assert list(getattr(reply, field)) == [], method
        if method != "ListConnections":  # filtered by A's connection: still nothing of A's
            request = pb.ListRequest(connection_id=connection_id)
            filtered = await call(rm.stub, SERVICE, method, request, metadata=b)
            assert list(getattr(filtered, field)) == [], method
    # A's things are all still there.
    assert (await rm.detail(A, run_id)).run.id == run_id
    mine = await rm.stub.ListActivity(pb.ListRequest(), metadata=user_metadata(A))
    assert len(mine.runs) == 2


async def test_a_notification_of_another_user_is_not_found(rm):
    outcome = await call(
        rm.stub, SERVICE, "MarkNotificationRead", pb.MarkNotificationReadRequest(id="nope"),
        metadata=user_metadata(B),
    )  # fmt: skip
    assert refused(outcome, grpc.StatusCode.NOT_FOUND)


def sign(secret: str, body: bytes, when: int | None = None) -> str:
    stamp = str(int(time.time()) if when is None else when)
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


async def test_signed_webhooks(rm):
    secret = "whsec_0123456789abcdef"
    made = await rm.connection(A, URL, trigger="webhook", signing_secret=secret)
    assert made.connection.has_signing_secret
    body = json.dumps({"email": "ann@example.com"}).encode()
    accepted = await rm.hook(made.webhook_token, body, {"X-Leadmesh-Signature": sign(secret, body)})
    assert accepted.run_id
    for header in (
        None,
        sign("another-secret-entirely", body),
        sign(secret, body + b" "),
        sign(secret, body, int(time.time()) - 301),  # outside the 5-minute replay window
        "t=abc,v1=00",
        "v1=" + "0" * 64,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await rm.hook(
                made.webhook_token, body, {"X-Leadmesh-Signature": header} if header else {}
            )
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert from_rpc_error(failed.value).reason == "SIGNATURE_INVALID"
    # Two v1 values (a secret being rotated): one match is enough.
    two = sign(secret, body) + ",v1=" + "0" * 64
    assert (await rm.hook(made.webhook_token, body, {"X-Leadmesh-Signature": two})).run_id


async def test_idempotency_key_answers_the_first_run(rm):
    made = await rm.connection(A, URL, trigger="webhook")
    first = await rm.hook(made.webhook_token, {"n": 1}, {"Idempotency-Key": "lead-77"})
    again = await rm.hook(made.webhook_token, {"n": 1}, {"Idempotency-Key": "lead-77"})
    other = await rm.hook(made.webhook_token, {"n": 2}, {"Idempotency-Key": "lead-78"})
    assert again.run_id == first.run_id and again.duplicate and not first.duplicate
    assert other.run_id != first.run_id
    runs = await rm.stub.ListActivity(pb.ListRequest(), metadata=user_metadata(A))
    assert len(runs.runs) == 2


async def test_a_replayed_signed_webhook_is_one_run_in_any_runner_and_after_a_restart(rm):
    """Three sends of one signed request (to two runner processes, then to one restarted in
    between) are one run: every answer is the first run_id, the log holds one entry."""
    secret = "whsec_0123456789abcdef"
    made = await rm.connection(A, URL, trigger="webhook", signing_secret=secret)
    body = json.dumps({"email": "ann@example.com"}).encode()
    signed = {"X-Leadmesh-Signature": sign(secret, body)}
    first = await rm.hook(made.webhook_token, body, signed)
    again = await rm.hook(made.webhook_token, body, signed)
    other = runner_settings(rm.var, rm.database_url, rm.vault.port, workers=0)
    for _ in range(2):  # another runner on the same database, then that one restarted
        elsewhere = await start_runner(other, port=0)
        try:
            stub = rm.dial("runner", "gateway", port=elsewhere.port)
            replayed = await stub.IngestWebhook(hook_request(made.webhook_token, body, signed))
        finally:
            await elsewhere.stop(grace=1)
        assert replayed.run_id == first.run_id and replayed.duplicate
    assert again.run_id == first.run_id and again.duplicate and not first.duplicate
    runs = await rm.stub.ListActivity(pb.ListRequest(), metadata=user_metadata(A))
    assert [r.id for r in runs.runs] == [first.run_id]
    log = await rm.stub.ListWebhookLog(pb.ListRequest(), metadata=user_metadata(A))
    assert [e.run_id for e in log.entries] == [first.run_id]
    # Another request (another time stamp) is another run.
    later = {"X-Leadmesh-Signature": sign(secret, body, int(time.time()) - 10)}
    assert (await rm.hook(made.webhook_token, body, later)).run_id != first.run_id


async def test_a_remembered_signature_is_forgotten_once_its_window_has_passed(
    tmp_path: Path, mesh: MeshSettings, database_url: str
):
    clock = SettableClock(datetime.now(UTC))
    async with runner_mesh(tmp_path, mesh.pki_dir, database_url, workers=0, clock=clock) as rm:
        secret = "whsec_0123456789abcdef"
        made = await rm.connection(A, URL, trigger="webhook", signing_secret=secret)

        async def signed_now() -> str:
            header = sign(secret, b"{}", int(clock.now().timestamp()))
            return (
                await rm.hook(made.webhook_token, b"{}", {"X-Leadmesh-Signature": header})
            ).run_id

        first = await signed_now()
        assert await remembered(rm) == [first]
        clock.advance(301)  # past the window (and the purge interval)
        second = await signed_now()
        assert await remembered(rm) == [second] and second != first


async def test_a_signature_row_past_its_window_is_replaced_not_answered(rm):
    """A row not purged yet (say the window setting grew) never answers for a new request."""
    now, digest = datetime.now(UTC), "a" * 64
    async with rm.runner.parts.core.store.begin() as tx:
        past = now - timedelta(seconds=1)
        assert await tx.signatures.remember("conn-1", digest, "run-1", past, now)
        assert await tx.signatures.first_run("conn-1", digest, now) == ""
        assert await tx.signatures.remember(
            "conn-1", digest, "run-2", now + timedelta(seconds=300), now
        )
        assert not await tx.signatures.remember("conn-1", digest, "run-3", now, now)
        assert await tx.signatures.first_run("conn-1", digest, now) == "run-2"


async def remembered(rm) -> list[str]:
    async with rm.runner.parts.core.store.read() as tx:
        return [row["run_id"] for row in await tx._all(select(webhook_signatures))]


def hook_request(
    token: str, body: bytes, headers: dict[str, str], query: str = ""
) -> pb.IngestWebhookRequest:
    pairs = {"content-type": "application/json", **headers}
    return pb.IngestWebhookRequest(
        token=token,
        method="POST",
        headers=[pb.Header(name=k, value=v) for k, v in pairs.items()],
        query=query,
        body=body,
        source_ip="203.0.113.9",
    )


async def test_odd_signature_headers_are_signature_invalid_not_internal(rm):
    made = await rm.connection(A, URL, trigger="webhook", signing_secret="whsec_0123456789")
    now = int(time.time())
    for header in ("t=²", "v1=é", f"t=²,v1={'0' * 64}", f"t={now},v1=é", f"t={now},v1={'é' * 64}"):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await rm.hook(made.webhook_token, b"{}", {"X-Leadmesh-Signature": header})
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED, header
        assert from_rpc_error(failed.value).reason == "SIGNATURE_INVALID"


async def test_secret_named_headers_and_query_values_are_redacted_and_listed(rm):
    made = await rm.connection(A, URL, trigger="webhook")
    request = hook_request(
        made.webhook_token,
        b'{"n": 1}',
        {"X-Shopify-Hmac-Sha256": "hmac-secret-1", "X-Access-Key": "key-secret-2",
         "X-Request-Source": "crm-7"},
        query="api_key=query-secret-3&token=query-secret-4&utm_source=ad",
    )  # fmt: skip
    accepted = await rm.stub.IngestWebhook(request)
    log = await rm.stub.ListWebhookLog(pb.ListRequest(), metadata=user_metadata(A))
    [entry] = log.entries
    assert entry.query == "api_key=[redacted]&token=[redacted]&utm_source=ad"
    assert list(entry.redacted) == ["x-shopify-hmac-sha256", "x-access-key", "api_key", "token"]
    headers = {h.name: h.value for h in entry.headers}
    assert headers["x-access-key"] == "[redacted]" and headers["x-request-source"] == "crm-7"
    detail = await rm.detail(A, accepted.run_id)
    everything = str(log) + str(detail)
    for n in range(1, 5):
        assert f"secret-{n}" not in everything
    event = json_format.MessageToDict(detail.event)
    assert event["query"] == {"api_key": "[redacted]", "token": "[redacted]", "utm_source": "ad"}
    assert event["headers"]["x-shopify-hmac-sha256"] == "[redacted]"


@pytest.mark.parametrize("method", ["ListConnections", "ListActivity", "ListWebhookLog",
                                    "ListNotifications"])  # fmt: skip
async def test_page_tokens_of_odd_digits_are_invalid_page_tokens(rm, method: str):
    for token in ("wrI", "MTLCsg", "=" * 5, "ü"):
        outcome = await call(
            rm.stub, SERVICE, method, pb.ListRequest(page_token=token), metadata=user_metadata(A)
        )
        assert refused(outcome, grpc.StatusCode.INVALID_ARGUMENT), (token, outcome)
        assert from_rpc_error(outcome).reason == "INVALID_PAGE_TOKEN"


async def test_unknown_paused_and_rate_limited_webhooks(rm):
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await rm.hook("no-such-token", {})
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    made = await rm.connection(A, URL, trigger="webhook")
    for _ in range(5):  # the burst
        await rm.hook(made.webhook_token, {})
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await rm.hook(made.webhook_token, {})
    remote = from_rpc_error(limited.value)
    assert remote.code == grpc.StatusCode.RESOURCE_EXHAUSTED and remote.reason == "RATE_LIMITED"
    assert 0 < remote.retry_after <= 1.0
    await rm.set_status(A, made.connection.id, "paused")
    with pytest.raises(grpc.aio.AioRpcError) as paused:
        await rm.hook(made.webhook_token, {})
    assert from_rpc_error(paused.value).reason == "CONNECTION_PAUSED"


async def test_rotating_the_token_retires_the_old_one(rm):
    made = await rm.connection(A, URL, trigger="webhook")
    rotated = await rm.stub.RotateWebhookToken(
        pb.RotateWebhookTokenRequest(id=made.connection.id), metadata=user_metadata(A)
    )
    assert rotated.webhook_token and rotated.webhook_token != made.webhook_token
    assert (await rm.hook(rotated.webhook_token, {})).run_id
    with pytest.raises(grpc.aio.AioRpcError) as old:
        await rm.hook(made.webhook_token, {})
    assert old.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("content_type", "body", "encoding", "value"),
    [
        ("application/json", b'{"a": [1, 2]}', "json", {"a": [1, 2]}),
        (
            "application/x-www-form-urlencoded",
            b"name=Ann&tag=a&tag=b",
            "form",
            {"name": "Ann", "tag": ["a", "b"]},
        ),
        ("text/plain", "héllo".encode(), "text", "héllo"),
        ("application/octet-stream", b"\xff\x00\xfe", "base64", "/wD+"),
    ],  # fmt: skip
)
async def test_any_content_type_is_kept(rm, content_type, body, encoding, value):
    made = await rm.connection(A, URL, trigger="webhook")
    accepted = await rm.hook(
        made.webhook_token, body, {"content-type": content_type, "Authorization": "Bearer s3cr3t"}
    )
    log = await rm.stub.ListWebhookLog(pb.ListRequest(), metadata=user_metadata(A))
    (entry,) = log.entries
    assert entry.run_id == accepted.run_id and entry.body_encoding == encoding
    assert entry.source_ip == "203.0.113.9"
    headers = {h.name: h.value for h in entry.headers}
    assert headers["authorization"] == "[redacted]" and "s3cr3t" not in str(entry)
    detail = await rm.detail(A, accepted.run_id)
    assert detail.run.status == "queued"
    from services.kit.timestamps import json_value

    assert json_value(detail.event)["body"] == value


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (
            {"body_template": {"a": {"b": "{{ body.[ }}"}}},
            "action.body_template.a.b",
            "INVALID_TEMPLATE",
        ),
        ({"body_template": "{{ body.email"}, "action.body_template", "INVALID_TEMPLATE"),
        ({"headers": {"X-A": "{{ nope( }}"}}, "action.headers.X-A", "INVALID_TEMPLATE"),
        # Once a RecursionError in the JMESPath parser: an INTERNAL error (500 at the gateway).
        (
            {"body_template": {"x": "{{ " + "(" * 600 + "a" + ")" * 600 + " }}"}},
            "action.body_template.x",
            "INVALID_TEMPLATE",
        ),
        (
            {"headers": {"X-A": "{{ " + "!" * 3000 + "a }}"}},
            "action.headers.X-A",
            "INVALID_TEMPLATE",
        ),
        ({"url": "ftp://example.com"}, "action.url", "INVALID_URL"),
        ({"url": "https://10.1.2.3/x"}, "action.url", "ADDRESS_REFUSED"),
        (
            {"trigger": {"type": "schedule", "cron": "61 * * * *"}},
            "trigger.cron",
            "INVALID_TRIGGER",
        ),
        ({"trigger": {"type": "schedule", "every_seconds": 0}}, "trigger", "INVALID_TRIGGER"),
        ({"trigger": {"type": "email"}}, "trigger.type", "INVALID_TRIGGER"),
        ({"method": "TRACE"}, "action.method", "INVALID_ACTION"),
        ({"name": "  "}, "name", "INVALID_NAME"),
        ({"signing_secret": "short"}, "signing_secret", "INVALID_SIGNING_SECRET"),
        ({"max_attempts": 50}, "max_attempts", "INVALID_MAX_ATTEMPTS"),
    ],  # fmt: skip
)
async def test_bad_connections_are_refused_when_saved(rm, change, field, reason):
    from google.protobuf import struct_pb2
    from google.protobuf.json_format import ParseDict

    action = pb.Action(
        type="http", method=change.get("method", "POST"), url=change.get("url", URL),
        headers=change.get("headers", {}),
    )  # fmt: skip
    if "body_template" in change:
        action.body_template.CopyFrom(ParseDict(change["body_template"], struct_pb2.Value()))
    trigger = change.get("trigger", {"type": "manual"})
    request = pb.CreateConnectionRequest(
        name=change.get("name", "ok"),
        trigger=pb.Trigger(**trigger),
        action=action,
        max_attempts=change.get("max_attempts", 0),
        signing_secret=change.get("signing_secret", ""),
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await rm.stub.CreateConnection(request, metadata=user_metadata(A))
    remote = from_rpc_error(failed.value)
    assert remote.code == grpc.StatusCode.INVALID_ARGUMENT, remote
    assert remote.reason == reason and remote.violations[0].field == field
    if reason == "INVALID_TEMPLATE":
        assert "position" in remote.message


async def test_lists_are_newest_first_and_paginate(rm):
    made = await rm.connection(A, URL)
    ids = [await rm.run(A, made.connection.id, {"i": i}) for i in range(5)]
    seen, token = [], ""
    while True:
        page = await rm.stub.ListActivity(
            pb.ListRequest(page_size=2, page_token=token), metadata=user_metadata(A)
        )
        seen += [r.id for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]
    bad = await call(
        rm.stub, SERVICE, "ListActivity", pb.ListRequest(page_token="garbage!"),
        metadata=user_metadata(A),
    )  # fmt: skip
    assert refused(bad, grpc.StatusCode.INVALID_ARGUMENT)
