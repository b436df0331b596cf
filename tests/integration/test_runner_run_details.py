"""A run's execution details as its owner reads them, from the runner (real sockets, mTLS, a
real database) to the gateway's JSON and OpenAPI schema: a fresh run keeps them and says so
(`details_purged` false); once retention purged them the run is still read and listed, says
when, and shows neither its event nor its attempts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from leadmesh.runner.v1 import runner_pb2 as pb
from sqlalchemy import update

from gateway.app import create_app
from gateway.routes.activity import Run, RunDetail
from gateway.settings import GatewaySettings
from services.kit.callers import user_metadata
from services.kit.config import MeshSettings
from services.runner.model import Attempt
from services.runner.tables import runs
from tests.integration.runner_support import runner_mesh

A = "user-a"
URL = "https://api.example.com/leads"
PURGED = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)


@pytest.fixture
async def rm(tmp_path: Path, mesh: MeshSettings, database_url: str):
    # No workers: the runs stay as made here.
    async with runner_mesh(tmp_path, mesh.pki_dir, database_url, workers=0) as built:
        yield built


async def _listed(rm, run_id: str) -> pb.Run:
    reply = await rm.stub.ListActivity(pb.ListRequest(page_size=100), metadata=user_metadata(A))
    [run] = [r for r in reply.runs if r.id == run_id]
    return run


async def test_a_fresh_run_keeps_its_details_and_says_so(rm):
    made = await rm.connection(A, URL)
    started = await rm.stub.StartRun(
        pb.StartRunRequest(connection_id=made.connection.id), metadata=user_metadata(A)
    )
    assert started.details_purged is False and not started.HasField("details_purge_time")
    detail = await rm.detail(A, started.id)
    assert detail.run.details_purged is False and not detail.run.HasField("details_purge_time")
    listed = await _listed(rm, started.id)
    assert listed.details_purged is False and not listed.HasField("details_purge_time")

    body = RunDetail.of(detail).model_dump(mode="json")
    assert body["details_purged"] is False and body["details_purge_time"] is None
    assert body["event"] is not None
    entry = Run(**Run.fields(listed)).model_dump(mode="json")
    assert entry["details_purged"] is False and entry["details_purge_time"] is None


async def test_a_run_whose_details_were_purged_is_read_and_listed_without_them(rm):
    made = await rm.connection(A, URL)
    run_id = await rm.run(A, made.connection.id, {"lead": "x"})
    core = rm.runner.parts.core
    async with core.store.begin() as tx:  # what a purge leaves, and an attempt it left behind
        await tx.attempts.add(
            [Attempt(run_id, A, 1, PURGED, {}, error="timeout", finish_time=PURGED)]
        )
        await tx.c.execute(
            update(runs).where(runs.c.id == run_id).values(event=None, details_purge_time=PURGED)
        )
    detail = await rm.detail(A, run_id)
    assert detail.run.details_purged is True
    assert detail.run.details_purge_time.ToDatetime(tzinfo=UTC) == PURGED
    assert list(detail.attempts) == [] and not detail.HasField("event")
    listed = await _listed(rm, run_id)
    assert listed.details_purged is True
    assert listed.details_purge_time.ToDatetime(tzinfo=UTC) == PURGED

    body = RunDetail.of(detail).model_dump(mode="json")
    assert body["details_purged"] is True and body["attempts"] == [] and body["event"] is None
    assert datetime.fromisoformat(body["details_purge_time"]) == PURGED
    entry = Run(**Run.fields(listed)).model_dump(mode="json")
    assert entry["details_purged"] is True
    assert datetime.fromisoformat(entry["details_purge_time"]) == PURGED


def test_the_openapi_schema_documents_details_purged(mesh: MeshSettings):
    schemas = create_app(GatewaySettings(mesh=mesh)).openapi()["components"]["schemas"]
    for name in ("Run", "RunDetail"):
        schema = schemas[name]
        assert {"details_purged", "details_purge_time"} <= set(schema["required"]), name
        purged = schema["properties"]["details_purged"]
        assert purged["type"] == "boolean"
        assert "kept 7 days" in purged["description"]
        assert "details_purged true" in purged["description"]
        when = schema["properties"]["details_purge_time"]
        assert {"type": "null"} in when["anyOf"]
        assert {"type": "string", "format": "date-time"} in when["anyOf"]
