"""`POST /hooks/{token}`: a third party's webhook. No session: the unguessable token is the
authority (and, when the connection has a signing secret, X-Leadmesh-Signature). The body (up to
1 MiB, any content type) is handed to the runner, which makes it durable before the 202."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.responses import JSONResponse
from leadmesh.runner.v1 import runner_pb2

from gateway.auth import client
from gateway.openapi import calls_upstream, errors
from gateway.schemas import RunAccepted
from gateway.upstreams import call

router = APIRouter(tags=["webhooks"])

Token = Annotated[str, Path(min_length=1, max_length=200)]


@router.post(
    "/hooks/{token}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunAccepted,
    responses=errors(
        {
            401: "SIGNATURE_INVALID",
            404: "WEBHOOK_NOT_FOUND",
            409: "CONNECTION_PAUSED",
            410: "ACCOUNT_DELETED",
            413: "BODY_TOO_LARGE",
            429: "RATE_LIMITED",
        }
    ),
    openapi_extra={
        "requestBody": {
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            "required": False,
        },
        **calls_upstream(),
    },
)
async def receive_webhook(token: Token, request: Request) -> Response:
    """202 `{run_id}` once the event is stored. 404 unknown token, 409 paused connection, 410 the
    account's deletion was requested (nothing stored), 401 bad signature, 413 body over 1 MiB, 429
    rate limited (with Retry-After). A repeated `Idempotency-Key` within 24 hours, or a signed
    request sent again within its signature's window (a replay), answers the first `run_id`
    (`Idempotent-Replayed: true`)."""
    # The busiest route: no dependency injection, no response-model round trip (the response is
    # documented by `response_model` and built directly).
    body = await request.body()
    reply = await call(
        request.app.state.upstreams.runner.IngestWebhook,
        runner_pb2.IngestWebhookRequest(
            token=token,
            method=request.method,
            headers=[
                runner_pb2.Header(name=k, value=v)
                for k, v in request.headers.items()
                if "\x00" not in v
            ],
            query=request.url.query,
            body=body,
            source_ip=client(request).ip_address,
        ),
    )
    headers = {"Idempotent-Replayed": "true"} if reply.duplicate else None
    return JSONResponse({"run_id": reply.run_id}, status_code=202, headers=headers)
