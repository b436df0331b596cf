"""The runner's RPCs for the web app, over mTLS on SQLite and PostgreSQL: a page of connections
with their last runs in a fixed number of queries, the activity stream's filters under page
tokens, unread notifications, retries, and the preview's refusals as field violations."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.json_format import ParseDict
from leadmesh.runner.v1 import runner_pb2 as pb
from sqlalchemy import event

from services.kit.callers import user_metadata
from services.kit.config import MeshSettings
from services.kit.errors import from_rpc_error
from tests.integration.runner_support import runner_mesh

A, B = "user-a", "user-b"
URL = "https://api.example.com/leads"


@pytest.fixture
async def rm(tmp_path: Path, mesh: MeshSettings, database_url: str):
    # No workers: runs stay queued, and what the RPCs read is what the tests wrote.
    async with runner_mesh(tmp_path, mesh.pki_dir, database_url, workers=0) as built:
        yield built


def _statements(rm) -> list[str]:
    seen: list[str] = []
    engine = rm.runner.parts.core.store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


async def _reason(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    remote = from_rpc_error(raised.value)
    return remote.code, remote.reason


async def test_a_page_of_connections_reads_their_last_runs_in_one_query(rm):
    me = user_metadata(A)
    made = [(await rm.connection(A, URL, name=f"c{n}")).connection.id for n in range(6)]
    last = {}
    for connection_id in made[:4]:
        await rm.run(A, connection_id, {"n": 1})
        last[connection_id] = await rm.run(A, connection_id, {"n": 2})
    seen = _statements(rm)

    async def listed(size: int) -> tuple[pb.ListConnectionsResponse, int]:
        """A page and the statements it took: the fewest of three tries, since the runner's
        background tasks (deletion reconciles, partitions) may run a statement meanwhile."""
        counts = []
        for _ in range(3):
            seen.clear()
            reply = await rm.stub.ListConnections(
                pb.ListConnectionsRequest(page_size=size), metadata=me
            )
            counts.append(len(seen))
        return reply, min(counts)

    small, few = await listed(2)
    page, many = await listed(6)
    assert many == few  # as many queries for six as for two: none per connection
    assert len(small.connections) == 2
    by_id = {c.id: c for c in page.connections}
    for connection_id in made:
        shown = by_id[connection_id]
        if connection_id in last:
            assert shown.last_run.id == last[connection_id]
            assert shown.last_run.status == "queued"
        else:
            assert not shown.HasField("last_run")
    one = await rm.stub.GetConnection(pb.GetConnectionRequest(id=made[0]), metadata=me)
    assert one.last_run.id == last[made[0]]


async def test_the_activity_filters_keep_their_page_tokens(rm):
    me = user_metadata(A)
    connection_id = (await rm.connection(A, URL)).connection.id
    runs = [await rm.run(A, connection_id, {"n": n}) for n in range(5)]
    first = await rm.detail(A, runs[0])
    since = first.run.create_time.ToDatetime() + timedelta(microseconds=1)

    async def every(**fields) -> list[str]:
        found, token = [], ""
        while True:
            request = pb.ListRequest(page_size=2, page_token=token, **fields)
            reply = await rm.stub.ListActivity(request, metadata=me)
            found += [r.id for r in reply.runs]
            if not (token := reply.next_page_token):
                return found

    newest_first = list(reversed(runs))
    assert await every(status="queued") == newest_first
    assert await every(status="succeeded") == []
    later = pb.ListRequest()
    later.since.FromDatetime(since)
    assert await every(since=later.since) == newest_first[:-1]
    earlier = pb.ListRequest()
    earlier.until.FromDatetime(since)
    assert await every(until=earlier.until) == [runs[0]]
    refused = rm.stub.ListActivity(pb.ListRequest(status="exploded"), metadata=me)
    assert await _reason(refused) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_STATUS")
    theirs = await rm.stub.ListActivity(pb.ListRequest(status="queued"), metadata=user_metadata(B))
    assert list(theirs.runs) == []


async def test_a_queued_run_is_not_retried_and_anothers_is_not_found(rm):
    connection_id = (await rm.connection(A, URL)).connection.id
    run_id = await rm.run(A, connection_id, {"n": 1})
    queued = rm.stub.RetryRun(pb.RetryRunRequest(id=run_id), metadata=user_metadata(A))
    assert await _reason(queued) == (grpc.StatusCode.FAILED_PRECONDITION, "RUN_NOT_FINISHED")
    theirs = rm.stub.RetryRun(pb.RetryRunRequest(id=run_id), metadata=user_metadata(B))
    assert await _reason(theirs) == (grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND")


async def test_no_unread_notifications_count_zero(rm):
    count = await rm.stub.GetUnreadNotificationCount(
        pb.GetUnreadNotificationCountRequest(), metadata=user_metadata(A)
    )
    assert count.unread_count == 0
    unread = await rm.stub.ListNotifications(pb.ListRequest(unread=True), metadata=user_metadata(A))
    assert list(unread.notifications) == []


async def test_a_preview_refusal_is_a_field_violation(rm):
    template = ParseDict("line one\n{{ body.( }}", struct_pb2.Value())
    request = pb.PreviewDeliveryRequest(
        action=pb.Action(type="http", method="POST", url=URL, body_template=template)
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await rm.stub.PreviewDelivery(request, metadata=user_metadata(A))
    remote = from_rpc_error(raised.value)
    assert remote.reason == "INVALID_TEMPLATE"
    [violation] = remote.violations
    assert violation.field == "action.body_template"
    assert violation.description.endswith("at line 2, column 9")
    shown = await rm.stub.PreviewDelivery(
        pb.PreviewDeliveryRequest(
            action=pb.Action(type="http", method="GET", url=URL), credential_kind="login"
        ),
        metadata=user_metadata(A),
    )
    assert shown.request["headers"]["Authorization"] == "[redacted]"
    assert shown.request["url"] == URL
