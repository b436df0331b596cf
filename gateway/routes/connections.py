"""The signed-in person's connections: a trigger (webhook, schedule, manual), an HTTP action with
a body template and an optional vault credential, each with its last run; manual runs; and the
preview of the request an action would send. Templates and URLs are checked when a connection is
saved (or previewed): a bad one is a 422 naming the field and the position of the error."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response, status
from leadmesh.runner.v1 import runner_pb2
from leadmesh.vault.v1 import vault_pb2
from pydantic import BaseModel, Field

from gateway.deps import CurrentUser, Services
from gateway.openapi import errors
from gateway.resources import Paged, listed, set_location, update_mask
from gateway.schemas import (
    LastRun,
    Page,
    Preview,
    PreviewCredential,
    PreviewedRequest,
    RunAccepted,
    Strict,
    timestamp,
)
from gateway.upstreams import UpstreamError, Upstreams, call
from services.kit.errors import InvalidArgument
from services.kit.timestamps import json_value, to_value

router = APIRouter(prefix="/connections", tags=["connections"])

ConnectionId = Annotated[str, Path(min_length=1, max_length=64)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class Trigger(Strict):
    """`{"type": "webhook"}`, `{"type": "manual"}`, or `{"type": "schedule"}` with either `cron`
    (five fields, UTC) or `every_seconds`."""

    type: Literal["webhook", "schedule", "manual"]
    cron: Annotated[str, Field(max_length=200)] | None = None
    every_seconds: Annotated[int, Field(ge=1, le=366 * 86400)] | None = None


class HttpAction(Strict):
    """`body_template`: any JSON value whose strings may hold `{{ expression }}` placeholders,
    JMESPath over the event (`body`, `headers`, `query`, `received_at`); a string that is one
    placeholder keeps the value's JSON type. Header values may hold placeholders too."""

    type: Literal["http"] = "http"
    method: Method = "POST"
    url: Annotated[str, Field(min_length=1, max_length=2000)]
    headers: Annotated[dict[str, Annotated[str, Field(max_length=4000)]], Field(max_length=50)] = (
        Field(default_factory=dict)
    )
    body_template: Any = None
    credential_id: Annotated[str, Field(max_length=64)] | None = None


class NewConnection(Strict):
    name: Name
    trigger: Trigger
    action: HttpAction
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    # Webhooks must then carry X-Leadmesh-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">.
    signing_secret: Annotated[str, Field(min_length=16, max_length=200)] | None = None


class ConnectionChange(Strict):
    """Fields given are changed; `"signing_secret": null` removes the secret."""

    name: Name | None = None
    status: Literal["active", "paused"] | None = None
    trigger: Trigger | None = None
    action: HttpAction | None = None
    max_attempts: Annotated[int, Field(ge=1, le=20)] | None = None
    signing_secret: Annotated[str, Field(min_length=16, max_length=200)] | None = None


class TriggerOut(BaseModel):
    type: str
    cron: str | None = None
    every_seconds: int | None = None


class ActionOut(BaseModel):
    type: str
    method: str
    url: str
    headers: dict[str, str]
    body_template: Any = None
    credential_id: str | None = None


class Connection(BaseModel):
    id: str
    name: str
    status: Literal["active", "paused"]
    trigger: TriggerOut
    action: ActionOut
    max_attempts: int
    has_signing_secret: bool
    pause_reason: str | None
    consecutive_failures: int
    webhook_token_hint: str | None
    create_time: datetime | None
    update_time: datetime | None
    # Webhook triggers: only when the token is made (creation, rotate-token); it is not stored.
    webhook_url: str | None = None
    # Its newest run; null when it has none (or retention purged them all).
    last_run: LastRun | None = None

    @classmethod
    def of(cls, message: runner_pb2.Connection, webhook_url: str | None = None) -> Connection:
        action = message.action
        return cls(
            id=message.id,
            name=message.name,
            status=message.status,  # type: ignore[arg-type]
            trigger=TriggerOut(
                type=message.trigger.type,
                cron=message.trigger.cron or None,
                every_seconds=message.trigger.every_seconds or None,
            ),
            action=ActionOut(
                type=action.type,
                method=action.method,
                url=action.url,
                headers=dict(action.headers),
                body_template=json_value(action.body_template)
                if action.HasField("body_template")
                else None,
                credential_id=action.credential_id or None,
            ),
            max_attempts=message.max_attempts,
            has_signing_secret=message.has_signing_secret,
            pause_reason=message.pause_reason or None,
            consecutive_failures=message.consecutive_failures,
            webhook_token_hint=message.webhook_token_hint or None,
            create_time=timestamp(message.create_time),
            update_time=timestamp(message.update_time),
            webhook_url=webhook_url,
            last_run=LastRun.of(message.last_run) if message.HasField("last_run") else None,
        )


class NewRun(Strict):
    """The payload becomes the event's `body`."""

    payload: Any = None


class PreviewRequest(Strict):
    """`action` as a connection's; `event` the sample the templates read, as a run's event:
    `{"body": <the lead>, "headers": {...}, "query": {...}, "received_at": "<RFC 3339>"}`
    (each may be left out: a manual run's headers and query are empty, received_at is now)."""

    action: HttpAction
    event: dict[str, Any] | None = None


def _trigger_pb(trigger: Trigger) -> runner_pb2.Trigger:
    return runner_pb2.Trigger(
        type=trigger.type, cron=trigger.cron or "", every_seconds=trigger.every_seconds or 0
    )


def _action_pb(action: HttpAction) -> runner_pb2.Action:
    message = runner_pb2.Action(
        type=action.type,
        method=action.method,
        url=action.url,
        headers=action.headers,
        credential_id=action.credential_id or "",
    )
    if action.body_template is not None:
        message.body_template.CopyFrom(to_value(action.body_template))
    return message


def webhook_url(request: Request, token: str) -> str | None:
    if not token:
        return None
    return f"{request.app.state.settings.mesh.public_url.rstrip('/')}/hooks/{token}"


async def _check_credential(mesh: Upstreams, user_id: str, credential_id: str | None) -> str:
    """The credential must be the caller's own: checked with the vault before saving. Its
    kind ("api_key", "login", "oauth2"), or "" without one."""
    if not credential_id:
        return ""
    try:
        found = await call(
            mesh.vault.GetCredential,
            vault_pb2.GetCredentialRequest(id=credential_id),
            user_id=user_id,
        )
    except UpstreamError as error:
        if error.remote.reason != "CREDENTIAL_NOT_FOUND":
            raise
        raise InvalidArgument(
            "CREDENTIAL_NOT_FOUND",
            "no credential of yours has this id",
            field="action.credential_id",
        ) from None
    kind = vault_pb2.CredentialKind.Name(found.kind)
    return kind.removeprefix("CREDENTIAL_KIND_").lower()


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Connection)
async def create_connection(
    body: NewConnection,
    request: Request,
    response: Response,
    who: CurrentUser,
    mesh: Services,
) -> Connection:
    await _check_credential(mesh, who.account_id, body.action.credential_id)
    created = await call(
        mesh.runner.CreateConnection,
        runner_pb2.CreateConnectionRequest(
            name=body.name,
            trigger=_trigger_pb(body.trigger),
            action=_action_pb(body.action),
            max_attempts=body.max_attempts,
            signing_secret=body.signing_secret or "",
        ),
        user_id=who.account_id,
    )
    set_location(response, f"/connections/{created.connection.id}")
    return Connection.of(created.connection, webhook_url(request, created.webhook_token))


@router.post(
    "/preview",
    response_model=Preview,
    responses=errors(
        {
            422: (
                "INVALID_ACTION",
                "INVALID_URL",
                "PLAIN_HTTP_REFUSED",
                "ADDRESS_REFUSED",
                "INVALID_TEMPLATE",
                "INVALID_EVENT",
                "RENDER_FAILED",
                "CREDENTIAL_NOT_FOUND",
            )
        }
    ),
)
async def preview_connection(body: PreviewRequest, who: CurrentUser, mesh: Services) -> Preview:
    """The request a run of `action` would send for `event`, rendered by the runner with the
    delivery's own code; nothing is sent. Credentials are never resolved: where one would go,
    the value is "[redacted]". A body template that cannot be compiled is 422 `INVALID_TEMPLATE`
    on the field `action.body_template`, its message ending "at line L, column C" (in the
    string holding the error, after its path inside the template when nested)."""
    kind = await _check_credential(mesh, who.account_id, body.action.credential_id)
    request = runner_pb2.PreviewDeliveryRequest(
        action=_action_pb(body.action), credential_kind=kind
    )
    if body.event is not None:
        request.event.CopyFrom(to_value(body.event))
    reply = await call(mesh.runner.PreviewDelivery, request, user_id=who.account_id)
    sent = json_value(reply.request)
    return Preview(
        request=PreviewedRequest(**sent),
        credential=PreviewCredential(id=body.action.credential_id, kind=kind) if kind else None,
    )


@router.get("", response_model=Page[Connection])
async def list_connections(page: Paged, who: CurrentUser, mesh: Services) -> Page[Connection]:
    reply = await call(
        mesh.runner.ListConnections,
        runner_pb2.ListConnectionsRequest(page_size=page.size, page_token=page.token),
        user_id=who.account_id,
    )
    return listed(Connection, map(Connection.of, reply.connections), reply.next_page_token)


@router.get("/{connection_id}", response_model=Connection)
async def get_connection(
    connection_id: ConnectionId,
    who: CurrentUser,
    mesh: Services,
) -> Connection:
    found = await call(
        mesh.runner.GetConnection,
        runner_pb2.GetConnectionRequest(id=connection_id),
        user_id=who.account_id,
    )
    return Connection.of(found)


@router.patch("/{connection_id}", response_model=Connection)
async def update_connection(
    connection_id: ConnectionId,
    body: ConnectionChange,
    who: CurrentUser,
    mesh: Services,
) -> Connection:
    request = runner_pb2.UpdateConnectionRequest(
        id=connection_id,
        name=body.name or "",
        status=body.status or "",
        max_attempts=body.max_attempts or 0,
        signing_secret=body.signing_secret or "",
        update_mask=update_mask(body, nullable=("signing_secret",)),
    )
    if body.trigger is not None:
        request.trigger.CopyFrom(_trigger_pb(body.trigger))
    if body.action is not None:
        await _check_credential(mesh, who.account_id, body.action.credential_id)
        request.action.CopyFrom(_action_pb(body.action))
    updated = await call(mesh.runner.UpdateConnection, request, user_id=who.account_id)
    return Connection.of(updated)


@router.delete("/{connection_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_connection(
    connection_id: ConnectionId,
    who: CurrentUser,
    mesh: Services,
) -> None:
    await call(
        mesh.runner.DeleteConnection,
        runner_pb2.DeleteConnectionRequest(id=connection_id),
        user_id=who.account_id,
    )


@router.post(
    "/{connection_id}/rotate-token",
    response_model=Connection,
    responses=errors({409: "NOT_A_WEBHOOK"}),
)
async def rotate_token(
    connection_id: ConnectionId,
    request: Request,
    who: CurrentUser,
    mesh: Services,
) -> Connection:
    """A new webhook URL; the old one stops working at once."""
    reply = await call(
        mesh.runner.RotateWebhookToken,
        runner_pb2.RotateWebhookTokenRequest(id=connection_id),
        user_id=who.account_id,
    )
    return Connection.of(reply.connection, webhook_url(request, reply.webhook_token))


@router.post(
    "/{connection_id}/runs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunAccepted,
    responses=errors({409: "CONNECTION_PAUSED", 410: "ACCOUNT_DELETED"}),
)
async def start_run(
    connection_id: ConnectionId,
    body: NewRun,
    who: CurrentUser,
    mesh: Services,
) -> RunAccepted:
    request = runner_pb2.StartRunRequest(connection_id=connection_id)
    if body.payload is not None:
        request.payload.CopyFrom(to_value(body.payload))
    run = await call(mesh.runner.StartRun, request, user_id=who.account_id)
    return RunAccepted(run_id=run.id)
