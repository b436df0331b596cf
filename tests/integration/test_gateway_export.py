"""The gateway's export over real participants: the kit's `Participant` on real SQLite files,
served over gRPC with mTLS as identity, vault and runner, read through the gateway's own
upstream channels. A 100 000-record export streams in bounded memory; a service failing before
the first byte is a problem, one failing after it leaves a document that says it is incomplete."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from leadmesh.retention.v1 import retention_pb2_grpc
from sqlalchemy import Column, Integer, MetaData, String, Table, Text

from gateway.routes.export import CHUNK_BYTES, ExportInterrupted, document, open_exports
from gateway.settings import GatewaySettings
from gateway.upstreams import UpstreamError, Upstreams
from services.kit.clock import SettableClock
from services.kit.config import MeshSettings
from services.kit.db import Database, create_service_engine
from services.kit.errors import Unavailable
from services.kit.grpcserver import RunningServer, start_server
from services.kit.retention import (
    ALLOWED_CALLERS,
    EXPORT_BATCH_RECORDS,
    SERVICE,
    Participant,
    TableCategory,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
BIG = 100_000
# At least the JSON text of one exported row of `_rows`.
RECORD_BYTES = 250
metadata = MetaData()
entries = Table(
    "entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(64), nullable=False, index=True),
    Column("body", Text, nullable=False),
    Column("secret", String(64), nullable=True),
)


@dataclass
class Served:
    server: RunningServer
    participant: Participant


def _category() -> TableCategory:
    return TableCategory(
        "entries", "test entries", "contract", entries, None,
        user_column="user_id", export_section="entries", secret_columns=("secret",),
    )  # fmt: skip


def _with_extra(extra_export: Callable) -> type[Participant]:
    """A participant exporting `extra_export(user_id)`'s (section, record) pairs after its rows:
    how a test makes a service fail in the middle of its stream."""

    class WithExtra(Participant):
        async def export(self, user_id):
            async for item in super().export(user_id):
                yield item
            async for item in extra_export(user_id):
                yield item

    return WithExtra


@pytest.fixture
async def serve(mesh: MeshSettings, tmp_path: Path):
    """serve(name, rows, extra_export=None): a participant named like a service, serving its
    rows on port 0; the gateway's upstreams dial every one of them."""
    running: list[Served] = []
    engines = []

    async def start(name: str, rows: list[dict], extra_export: Callable | None = None) -> Served:
        engine = create_service_engine(f"sqlite:///{tmp_path / name / f'{name}.db'}")
        engines.append(engine)
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
            if rows:
                await connection.execute(entries.insert(), rows)
        kind = Participant if extra_export is None else _with_extra(extra_export)
        participant = kind(name, Database(engine), [_category()], SettableClock(NOW))

        def register(server: grpc.aio.Server) -> None:
            retention_pb2_grpc.add_RetentionParticipantServicer_to_server(participant, server)

        server = await start_server(
            name=name, mesh=mesh, port=0, register=register, service_names=[SERVICE],
            allowed=ALLOWED_CALLERS,
        )  # fmt: skip
        running.append(Served(server, participant))
        return running[-1]

    yield start
    for served in running:
        await served.server.stop(grace=0.5)
    for engine in engines:
        await engine.dispose()


@pytest.fixture
async def gateway_upstreams(mesh: MeshSettings):
    opened: list[Upstreams] = []

    def dial(ports: dict[str, int]) -> Upstreams:
        there = mesh.model_copy(
            update={f"{name}_addr": f"127.0.0.1:{port}" for name, port in ports.items()}
        )
        opened.append(Upstreams(GatewaySettings(mesh=there)))
        return opened[-1]

    yield dial
    for upstreams in opened:
        await upstreams.close()


def _rows(user: str, count: int, label: str) -> list[dict]:
    return [
        {"user_id": user, "body": f"{label}-{i}-" + "x" * 200, "secret": f"secret-{label}"}
        for i in range(count)
    ]


async def _three(serve, gateway_upstreams, runner_extra=None) -> tuple[Upstreams, dict]:
    served = {
        "identity": await serve("identity", _rows("u1", 2, "account") + _rows("u2", 2, "other")),
        "vault": await serve("vault", _rows("u1", 1, "credential")),
        "runner": await serve(
            "runner", _rows("u1", 3, "run") + _rows("u2", 3, "other"), runner_extra
        ),
    }
    upstreams = gateway_upstreams({name: s.server.port for name, s in served.items()})
    return upstreams, served


async def _collect(chunks: AsyncIterator[bytes]) -> str:
    return b"".join([chunk async for chunk in chunks]).decode()


async def test_an_export_is_one_document_of_every_service_and_only_the_user(
    serve, gateway_upstreams
):
    upstreams, _ = await _three(serve, gateway_upstreams)
    sources = await open_exports(upstreams, "u1")
    text = await _collect(document(sources, "u1", NOW, upstreams.idle_timeout))
    exported = json.loads(text)
    assert exported["format_version"] == 1 and exported["complete"] is True
    assert exported["generated_at"] == "2026-12-03T12:00:00Z"
    assert exported["subject"] == {"user_id": "u1"}
    assert list(exported["services"]) == ["identity", "vault", "runner"]
    bodies = {
        service: [r["body"].split("-x")[0] for r in part["entries"]]
        for service, part in exported["services"].items()
    }
    assert bodies == {
        "identity": ["account-0", "account-1"],
        "vault": ["credential-0"],
        "runner": ["run-0", "run-1", "run-2"],
    }
    assert "other" not in text and "secret" not in text
    assert list(exported) == ["format_version", "generated_at", "subject", "services", "complete"]


async def test_a_service_with_nothing_of_the_user_is_an_empty_part(serve, gateway_upstreams):
    identity = await serve("identity", _rows("u1", 1, "account"))
    vault = await serve("vault", [])
    runner = await serve("runner", _rows("u2", 2, "other"))
    upstreams = gateway_upstreams(
        {"identity": identity.server.port, "vault": vault.server.port,
         "runner": runner.server.port}
    )  # fmt: skip
    sources = await open_exports(upstreams, "u1")
    exported = json.loads(await _collect(document(sources, "u1", NOW, 5)))
    assert exported["services"]["vault"] == {} and exported["services"]["runner"] == {}
    assert exported["complete"] is True


# What is held at once depends on how far the producer runs ahead (gRPC's flow-control window),
# which another test process on the same cores changes: measured alone.
@pytest.mark.serial
async def test_100_000_records_stream_in_bounded_memory(serve, gateway_upstreams, tmp_path):
    identity = await serve("identity", _rows("u1", 1, "account"))
    vault = await serve("vault", [])
    runner = await serve("runner", _rows("u1", BIG, "activity"))
    upstreams = gateway_upstreams(
        {"identity": identity.server.port, "vault": vault.server.port,
         "runner": runner.server.port}
    )  # fmt: skip
    out = tmp_path / "export.json"
    sources = await open_exports(upstreams, "u1")
    chunks = largest = size = 0
    # Memory is traced over a window of the stream (a fifth of it: tracing slows every
    # allocation down): what the window's records take must be given back as they go.
    window = (BIG // 10 * RECORD_BYTES, BIG * 3 // 10 * RECORD_BYTES)
    with out.open("wb") as file:
        async for chunk in document(sources, "u1", NOW, upstreams.idle_timeout):
            chunks += 1
            largest = max(largest, len(chunk))
            size += len(chunk)
            file.write(chunk)
            if window[0] <= size and not tracemalloc.is_tracing() and size < window[1]:
                tracemalloc.start()
            elif size >= window[1] and tracemalloc.is_tracing():
                current, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
    assert size > BIG * RECORD_BYTES
    # Chunks of about CHUNK_BYTES, never the document at once; the window's 20 000 records
    # (5 MB of JSON text) are never held together (the participant serving in this same
    # process is traced too).
    assert chunks > size // (2 * CHUNK_BYTES)
    assert largest < 2 * CHUNK_BYTES
    assert current < 1_000_000 and peak < 2_000_000, (current, peak)
    exported = json.loads(out.read_text())
    assert len(exported["services"]["runner"]["entries"]) == BIG
    assert exported["complete"] is True


async def test_a_service_down_before_the_first_byte_is_an_upstream_error(serve, gateway_upstreams):
    upstreams, served = await _three(serve, gateway_upstreams)
    # The vault goes away: the export does not start at all (a 503 problem at the route).
    await served["vault"].server.stop(grace=0)
    with pytest.raises(UpstreamError) as refused:
        await open_exports(upstreams, "u1")
    assert refused.value.remote.code == grpc.StatusCode.UNAVAILABLE


async def test_a_service_failing_mid_stream_leaves_an_incomplete_document(serve, gateway_upstreams):
    async def then_fail(user_id: str):
        for n in range(EXPORT_BATCH_RECORDS + 1):  # one batch sent, the next one fails
            yield "notifications", {"n": n}
        raise Unavailable("DATABASE_GONE", "the database went away")

    upstreams, _ = await _three(serve, gateway_upstreams, runner_extra=then_fail)
    sources = await open_exports(upstreams, "u1")
    chunks: list[bytes] = []
    with pytest.raises(ExportInterrupted):
        async for chunk in document(sources, "u1", NOW, upstreams.idle_timeout):
            chunks.append(chunk)
    exported = json.loads(b"".join(chunks))
    assert exported["complete"] is False
    assert exported["error"] == {"service": "runner", "code": "UNAVAILABLE"}
    assert len(exported["services"]["identity"]["entries"]) == 2
    # What arrived before the failure is there, closed as JSON.
    sent = exported["services"]["runner"]["notifications"]
    assert sent and sent == [{"n": n} for n in range(len(sent))]
