"""`GET /v1/me/export`: everything the mesh holds of the signed-in person as one JSON document
(GDPR Art. 15 access, Art. 20 portability), each service's part from its `ExportSubject` stream.

The document is written as the records arrive and sent in chunks of about 64 KiB, so an account
with 100 000 activity entries never sits in the gateway's memory at once; the services page
their own reads the same way.

A truncated export must never pass for a whole one. Once the first byte is sent, the status is
200 and can no longer become a problem, so:

- before the head is sent, every service's stream must answer its first record (or end empty): a
  service that is down, slow or refusing is a problem+json (503, 504, …) like every other failed
  call, and nothing has been written;
- the document's last member is `"complete": true`, written only after every stream ended well;
- a service failing later ends the document with `"complete": false` and an `"error"` naming the
  service and its gRPC status (never its message), and the transfer is then aborted (the chunked
  body gets no last chunk), so HTTP clients and browsers report the download as failed as well.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from leadmesh.retention.v1 import retention_pb2
from pydantic import BaseModel, ConfigDict
from starlette.background import BackgroundTask

from gateway.auth import clock
from gateway.deps import CurrentUser, Services
from gateway.upstreams import UpstreamError, Upstreams
from services.kit.callers import user_metadata
from services.kit.errors import RemoteError, from_rpc_error

log = logging.getLogger("leadmesh.gateway")

router = APIRouter(prefix="/me", tags=["me"])

FORMAT_VERSION = 1
# A chunk goes out once this much is written (a send per record would cost more than the JSON).
CHUNK_BYTES = 64 * 1024

EXAMPLE = {
    "format_version": 1,
    "generated_at": "2026-12-03T12:00:00Z",
    "subject": {"user_id": "3f0c6c1e-7a51-4c4e-9d55-0c2f1d7f9a10"},
    "services": {
        "identity": {
            "account": [{"id": "3f0c6c1e-…", "email": "ada@example.com", "plan": "free"}],
            "login_history": [{"time": "2026-12-01T08:14:03Z", "outcome": "succeeded"}],
        },
        "vault": {"credentials": [{"id": "9b1e…", "name": "CRM key", "kind": "api_key"}]},
        "runner": {
            "connections": [{"id": "51aa…", "name": "Leads to CRM"}],
            "runs": [{"id": "c2d4…", "status": "succeeded"}],
        },
    },
    "complete": True,
}


class ExportSubject(BaseModel):
    user_id: str


class ExportFailure(BaseModel):
    service: str
    # The gRPC status the service's stream ended with (UNAVAILABLE, DEADLINE_EXCEEDED, …).
    code: str


class Export(BaseModel):
    """The document: per service, per section (a kind of record), the records as JSON objects.
    Whole only when `complete` is true; `error` says which service failed otherwise."""

    model_config = ConfigDict(json_schema_extra={"example": EXAMPLE})

    format_version: int
    generated_at: datetime
    subject: ExportSubject
    services: dict[str, dict[str, list[dict[str, Any]]]]
    complete: bool
    error: ExportFailure | None = None


@router.get(
    "/export",
    response_model=Export,
    responses={
        200: {
            "description": "The export, as an attachment, streamed; whole only when it ends "
            'with `"complete": true`.',
            "headers": {
                "Content-Disposition": {
                    "description": 'attachment; filename="leadmesh-export-<date>.json"',
                    "schema": {"type": "string"},
                }
            },
        },
    },
)
async def export(request: Request, who: CurrentUser, mesh: Services) -> StreamingResponse:
    """Everything leadmesh holds of you, from every service, as one JSON document to download
    (credentials without their secrets). Streamed: if a service fails once the download has
    started, the document ends with `"complete": false` and the transfer is cut short."""
    now = clock(request).now()
    sources = await open_exports(mesh, who.account_id)
    filename = f"leadmesh-export-{now.date().isoformat()}.json"
    return StreamingResponse(
        document(sources, who.account_id, now, mesh.idle_timeout),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        # Runs once the response is over; the streams are normally done or cancelled by then.
        background=BackgroundTask(_cancel, sources),
    )


# --- the streams ---------------------------------------------------------------------------


@dataclass
class Source:
    service: str
    stream: Any  # grpc.aio.UnaryStreamCall
    # The first batch of records, read before the head is sent; None when the stream ended empty.
    first: retention_pb2.ExportBatch | None


class ExportInterrupted(Exception):
    """A service failed after the export started: the document ends incomplete."""

    def __init__(self, service: str, code: str) -> None:
        super().__init__(f"{service}: {code}")
        self.service, self.code = service, code


async def open_exports(mesh: Upstreams, user_id: str) -> list[Source]:
    """Every participant's stream, each having answered its first record, or UpstreamError
    (rendered as a problem) with every stream cancelled."""
    request = retention_pb2.ExportSubjectRequest(user_id=user_id)
    metadata = user_metadata(user_id)
    streams = {
        name: stub.ExportSubject(request, metadata=metadata)
        for name, stub in mesh.participants.items()
    }

    async def first(stream) -> retention_pb2.ExportBatch | None:
        async with asyncio.timeout(mesh.idle_timeout):
            message = await stream.read()
        return None if message is grpc.aio.EOF else message

    try:
        outcomes = await asyncio.gather(*map(first, streams.values()), return_exceptions=True)
    except BaseException:  # the client went away meanwhile
        for stream in streams.values():
            stream.cancel()
        raise
    failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
    if failure is not None:
        for stream in streams.values():
            stream.cancel()
        if isinstance(failure, grpc.aio.AioRpcError):
            raise UpstreamError(from_rpc_error(failure))
        if isinstance(failure, TimeoutError):
            raise UpstreamError(
                RemoteError(grpc.StatusCode.DEADLINE_EXCEEDED, "the export did not start in time")
            )
        raise failure
    return [
        Source(name, stream, outcome)  # type: ignore[arg-type]
        for (name, stream), outcome in zip(streams.items(), outcomes, strict=True)
    ]


async def _cancel(sources: list[Source]) -> None:
    for source in sources:
        source.stream.cancel()


async def _records(source: Source, idle: float) -> AsyncIterator[retention_pb2.ExportRecord]:
    if source.first is None:
        return
    for record in source.first.records:
        yield record
    while True:
        try:
            async with asyncio.timeout(idle):  # no task per read, as wait_for would make
                message = await source.stream.read()
        except grpc.aio.AioRpcError as error:
            raise ExportInterrupted(source.service, error.code().name) from None
        except TimeoutError:
            raise ExportInterrupted(
                source.service, grpc.StatusCode.DEADLINE_EXCEEDED.name
            ) from None
        if message is grpc.aio.EOF:
            return
        for record in message.records:
            yield record


# --- the document --------------------------------------------------------------------------


async def document(
    sources: list[Source], user_id: str, now: datetime, idle: float
) -> AsyncIterator[bytes]:
    """The export as chunks of JSON text; see the module docstring for how it ends."""
    head = {
        "format_version": FORMAT_VERSION,
        "generated_at": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "subject": {"user_id": user_id},
    }
    parts = [json.dumps(head)[:-1], ',"services":{']
    size = 0
    open_section = False
    try:
        for number, source in enumerate(sources):
            parts.append(("," if number else "") + json.dumps(source.service) + ":{")
            section, seen = None, set()
            async for record in _records(source, idle):
                if record.section != section:
                    if record.section in seen:  # a participant's records must stay together
                        raise ExportInterrupted(source.service, "SECTION_SPLIT")
                    parts.append(("]," if section is not None else "") + json.dumps(record.section))
                    parts.append(":[")
                    section, open_section = record.section, True
                    seen.add(section)
                else:
                    parts.append(",")
                text = record.json  # compact, strict JSON: the kit's participant writes it
                parts.append(text)
                size += len(text)
                if size >= CHUNK_BYTES:
                    yield "".join(parts).encode()
                    parts, size = [], 0
            parts.append("]}" if open_section else "}")
            open_section = False
        parts.append('},"complete":true}')
        yield "".join(parts).encode()
    except ExportInterrupted as failure:
        log.warning("export interrupted", extra={"service": failure.service, "error": failure.code})
        error = {"service": failure.service, "code": failure.code}
        parts.append(("]}" if open_section else "}") + '},"complete":false,"error":')
        parts.append(json.dumps(error) + "}")
        yield "".join(parts).encode()
        raise  # the transfer ends without its last chunk: the download itself fails
    finally:
        await _cancel(sources)
