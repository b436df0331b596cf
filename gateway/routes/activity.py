"""What the signed-in person can read about their connections' runs: the activity stream (one
entry per run), a run with its attempts, the webhooks log, notifications; and the egress
addresses to allowlist; retrying a run. Lists are newest first, paginated, filterable by
`connection_id` (the activity stream also by status and creation time, notifications to the
unread ones)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, status
from google.protobuf import empty_pb2
from leadmesh.runner.v1 import runner_pb2
from pydantic import BaseModel, Field

from gateway.deps import CurrentUser, Services
from gateway.openapi import errors
from gateway.resources import Paged, PageRequest, listed
from gateway.schemas import Page, RunAccepted, timestamp
from gateway.upstreams import call
from services.kit.timestamps import json_value

router = APIRouter(tags=["activity"])

Id = Annotated[str, Path(min_length=1, max_length=64)]
ConnectionFilter = Annotated[str | None, Query(max_length=64)]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]

DetailsPurged = Annotated[
    bool,
    Field(
        description="Execution details (the event, attempts' requests and responses) are kept "
        "7 days; after that the run stays listed with details_purged true (its event null, its "
        "attempts an empty list)."
    ),
]
DetailsPurgeTime = Annotated[
    datetime | None,
    Field(
        description="When the run's execution details were purged (RFC 3339); null while "
        "they are kept."
    ),
]


class Run(BaseModel):
    run_id: str
    connection_id: str
    trigger: Literal["webhook", "schedule", "manual"]
    status: RunStatus
    attempts: int
    create_time: datetime | None
    start_time: datetime | None
    finish_time: datetime | None
    next_attempt_time: datetime | None
    error: str | None
    # The W3C trace id its delivery continues (32 hex digits), for the operators' traces and
    # logs; null for scheduled runs.
    trace_id: str | None = None
    details_purged: DetailsPurged
    details_purge_time: DetailsPurgeTime

    @classmethod
    def fields(cls, m: runner_pb2.Run) -> dict[str, Any]:
        return {
            "run_id": m.id,
            "connection_id": m.connection_id,
            "trigger": m.trigger,
            "status": m.status,
            "attempts": m.attempts,
            "create_time": timestamp(m.create_time),
            "start_time": timestamp(m.start_time),
            "finish_time": timestamp(m.finish_time),
            "next_attempt_time": timestamp(m.next_attempt_time),
            "error": m.error or None,
            "trace_id": m.trace_id or None,
            "details_purged": m.details_purged,
            "details_purge_time": timestamp(m.details_purge_time),
        }


class Header(BaseModel):
    name: str
    value: str


class Attempt(BaseModel):
    number: int
    start_time: datetime | None
    finish_time: datetime | None
    # The request as sent, credentials redacted.
    request: dict[str, Any]
    response_status: int | None
    response_headers: list[Header]
    response_body: str | None
    response_body_encoding: str | None
    response_truncated: bool
    error: str | None


class RunDetail(BaseModel):
    run_id: str
    connection_id: str
    trigger: Literal["webhook", "schedule", "manual"]
    status: RunStatus
    # Each attempt, oldest first (the activity stream carries only their count); empty once
    # the execution details are purged (details_purged).
    attempts: list[Attempt]
    attempt_count: int
    create_time: datetime | None
    start_time: datetime | None
    finish_time: datetime | None
    next_attempt_time: datetime | None
    error: str | None
    # The W3C trace id its delivery continues (32 hex digits): the key to its spans and to the
    # log lines of its attempts; null for scheduled runs.
    trace_id: str | None = None
    details_purged: DetailsPurged
    details_purge_time: DetailsPurgeTime
    # The event delivered (body, headers, query, received_at), while execution details are kept.
    event: Any = None

    @classmethod
    def of(cls, reply: runner_pb2.RunDetail) -> RunDetail:
        fields = Run.fields(reply.run)
        fields["attempt_count"] = fields.pop("attempts")
        return cls(
            **fields,
            attempts=[
                Attempt(
                    number=a.number,
                    start_time=timestamp(a.start_time),
                    finish_time=timestamp(a.finish_time),
                    request=json_value(a.request),
                    response_status=a.response_status or None,
                    response_headers=[
                        Header(name=h.name, value=h.value) for h in a.response_headers
                    ],
                    response_body=a.response_body if a.response_status else None,
                    response_body_encoding=a.response_body_encoding or None,
                    response_truncated=a.response_truncated,
                    error=a.error or None,
                )
                for a in reply.attempts
            ],
            event=json_value(reply.event) if reply.HasField("event") else None,
        )


class WebhookLogEntry(BaseModel):
    id: str
    connection_id: str
    run_id: str | None
    receive_time: datetime | None
    source_ip: str
    method: str
    headers: list[Header]
    query: str
    body_encoding: Literal["json", "form", "text", "base64"]
    body: str
    # Headers and query parameters whose values were replaced by "[redacted]".
    redacted: list[str] = []
    # Headers, query and body are sealed at rest: true once they can no longer be read (their
    # day's key destroyed by retention, or a value that does not authenticate); they are empty.
    details_purged: bool = False

    @classmethod
    def of(cls, e: runner_pb2.WebhookLogEntry) -> WebhookLogEntry:
        return cls(
            id=e.id,
            connection_id=e.connection_id,
            run_id=e.run_id or None,
            receive_time=timestamp(e.receive_time),
            source_ip=e.source_ip,
            method=e.method,
            headers=[Header(name=h.name, value=h.value) for h in e.headers],
            query=e.query,
            body_encoding=e.body_encoding,  # type: ignore[arg-type]
            body=e.body,
            redacted=list(e.redacted),
            details_purged=e.details_purged,
        )


class Notification(BaseModel):
    id: str
    connection_id: str | None
    kind: str
    message: str
    run_id: str | None
    credential_id: str | None
    create_time: datetime | None
    read_time: datetime | None
    read: bool
    # The message is sealed at rest: true once it can no longer be read (it then says so).
    details_purged: bool = False

    @classmethod
    def of(cls, m: runner_pb2.Notification) -> Notification:
        return cls(
            id=m.id,
            connection_id=m.connection_id or None,
            kind=m.kind,
            message=m.message,
            run_id=m.run_id or None,
            credential_id=m.credential_id or None,
            create_time=timestamp(m.create_time),
            read_time=timestamp(m.read_time),
            read=m.HasField("read_time"),
            details_purged=m.details_purged,
        )


class EgressAddresses(BaseModel):
    addresses: list[str]


async def _connection_filter(connection_id: ConnectionFilter = None) -> str:
    """A dependency, so that its query parameter follows the page's in the documentation."""
    return connection_id or ""


OfConnection = Annotated[str, Depends(_connection_filter)]


class UnreadCount(BaseModel):
    unread_count: int


def _list(page: PageRequest, connection_id: str) -> runner_pb2.ListRequest:
    return runner_pb2.ListRequest(
        page_size=page.size, page_token=page.token, connection_id=connection_id
    )


@dataclass(frozen=True)
class RunFilter:
    status: str
    since: datetime | None
    until: datetime | None


async def _run_filter(
    status: Annotated[RunStatus | None, Query(description="only runs with this status")] = None,
    since: Annotated[
        datetime | None,
        Query(description="only runs created at or after this time (ISO 8601; UTC if no offset)"),
    ] = None,
    until: Annotated[
        datetime | None,
        Query(description="only runs created before this time (ISO 8601; UTC if no offset)"),
    ] = None,
) -> RunFilter:
    """The activity stream's filters beside `connection_id`; a page token keeps its place
    under them (pass the same filters with it)."""
    return RunFilter(status or "", _utc(since), _utc(until))


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


RunsOnly = Annotated[RunFilter, Depends(_run_filter)]


@router.get("/activity", response_model=Page[Run])
async def list_activity(
    page: Paged, connection_id: OfConnection, only: RunsOnly, who: CurrentUser, mesh: Services
) -> Page[Run]:
    request = _list(page, connection_id)
    request.status = only.status
    if only.since is not None:
        request.since.FromDatetime(only.since)
    if only.until is not None:
        request.until.FromDatetime(only.until)
    reply = await call(mesh.runner.ListActivity, request, user_id=who.account_id)
    return listed(Run, (Run(**Run.fields(r)) for r in reply.runs), reply.next_page_token)


@router.post(
    "/runs/{run_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunAccepted,
    responses=errors(
        {
            404: ("RUN_NOT_FOUND", "CONNECTION_NOT_FOUND"),
            409: ("RUN_NOT_FINISHED", "RUN_DETAILS_PURGED", "CONNECTION_PAUSED"),
            410: "ACCOUNT_DELETED",
        }
    ),
)
async def retry_run(run_id: Id, who: CurrentUser, mesh: Services) -> RunAccepted:
    """A new run of the same connection with the same event, while retention keeps the event
    (`details_purged` false); the run retried stays as it was."""
    run = await call(
        mesh.runner.RetryRun, runner_pb2.RetryRunRequest(id=run_id), user_id=who.account_id
    )
    return RunAccepted(run_id=run.id)


@router.get("/runs/{run_id}", response_model=RunDetail)
async def get_run(run_id: Id, who: CurrentUser, mesh: Services) -> RunDetail:
    reply = await call(
        mesh.runner.GetRun, runner_pb2.GetRunRequest(id=run_id), user_id=who.account_id
    )
    return RunDetail.of(reply)


@router.get("/webhook-log", response_model=Page[WebhookLogEntry])
async def list_webhook_log(
    page: Paged, connection_id: OfConnection, who: CurrentUser, mesh: Services
) -> Page[WebhookLogEntry]:
    reply = await call(
        mesh.runner.ListWebhookLog, _list(page, connection_id), user_id=who.account_id
    )
    return listed(WebhookLogEntry, map(WebhookLogEntry.of, reply.entries), reply.next_page_token)


Unread = Annotated[bool, Query(description="true: only those not read yet")]


@router.get("/notifications", response_model=Page[Notification])
async def list_notifications(
    page: Paged,
    connection_id: OfConnection,
    who: CurrentUser,
    mesh: Services,
    unread: Unread = False,
) -> Page[Notification]:
    request = _list(page, connection_id)
    request.unread = unread
    reply = await call(mesh.runner.ListNotifications, request, user_id=who.account_id)
    return listed(Notification, map(Notification.of, reply.notifications), reply.next_page_token)


@router.get("/notifications/unread-count", response_model=UnreadCount)
async def count_unread_notifications(who: CurrentUser, mesh: Services) -> UnreadCount:
    """For the navigation's badge."""
    reply = await call(
        mesh.runner.GetUnreadNotificationCount,
        runner_pb2.GetUnreadNotificationCountRequest(),
        user_id=who.account_id,
    )
    return UnreadCount(unread_count=reply.unread_count)


@router.post("/notifications/{notification_id}/read", response_model=Notification)
async def mark_notification_read(
    notification_id: Id, who: CurrentUser, mesh: Services
) -> Notification:
    reply = await call(
        mesh.runner.MarkNotificationRead,
        runner_pb2.MarkNotificationReadRequest(id=notification_id),
        user_id=who.account_id,
    )
    return Notification.of(reply)


@router.get("/egress-ips", response_model=EgressAddresses)
async def egress_ips(mesh: Services) -> EgressAddresses:
    """The addresses our calls to third parties come from: allowlist them. Public."""
    reply = await call(mesh.runner.GetEgressAddresses, empty_pb2.Empty())
    return EgressAddresses(addresses=list(reply.addresses))
