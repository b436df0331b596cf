"""The gRPC face of the runner. Who may call what is `ALLOWED_CALLERS`: the gateway, for the
acting user, anonymously for webhooks, and to suspend a user whose deletion was requested; the
operator, for the queue's state and a run's trace id (no user's data)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import grpc
from google.protobuf import empty_pb2, struct_pb2
from leadmesh.runner.v1 import runner_pb2 as pb
from leadmesh.runner.v1 import runner_pb2_grpc

from services.kit.callers import acting_user
from services.kit.errors import InvalidArgument
from services.kit.timestamps import json_value, to_timestamp, to_value
from services.runner.activity import Activity
from services.runner.connections import Connections
from services.runner.ingest import Ingest
from services.runner.model import (
    Attempt,
    Connection,
    Notification,
    RunFilter,
    RunRecord,
    WebhookEntry,
)
from services.runner.operations import Operations
from services.runner.preview import Preview
from services.runner.retry import Retries
from services.runner.suspensions import Suspensions
from services.runner.tracing import trace_id_of

Context = grpc.aio.ServicerContext
SERVICE = pb.DESCRIPTOR.services_by_name["RunnerService"].full_name
_OPERATOR_METHODS = ("GetQueueStatus", "GetRunTrace")
ALLOWED_CALLERS: dict[str, frozenset[str]] = {
    f"/{SERVICE}/{method.name}": frozenset(
        {"operator"} if method.name in _OPERATOR_METHODS else {"gateway"}
    )
    for method in pb.DESCRIPTOR.services_by_name["RunnerService"].methods
}


def _plain(message: struct_pb2.Value, present: bool) -> Any:
    return json_value(message) if present else None


def trigger_pb(trigger: dict[str, Any]) -> pb.Trigger:
    return pb.Trigger(
        type=trigger["type"],
        cron=trigger.get("cron") or "",
        every_seconds=int(trigger.get("every_seconds") or 0),
    )


def action_pb(action: dict[str, Any]) -> pb.Action:
    return pb.Action(
        type=action["type"],
        method=action["method"],
        url=action["url"],
        headers=action.get("headers") or {},
        body_template=to_value(action.get("body_template")),
        credential_id=action.get("credential_id") or "",
    )


def connection_pb(row: Connection, last_run: RunRecord | None = None) -> pb.Connection:
    message = pb.Connection(
        id=row.id,
        name=row.name,
        status=row.status,
        trigger=trigger_pb(row.trigger),
        action=action_pb(row.action),
        max_attempts=row.max_attempts,
        has_signing_secret=bool(row.signing_secret),
        pause_reason=row.pause_reason or "",
        consecutive_failures=row.consecutive_failures,
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
        webhook_token_hint=row.webhook_token_hint or "",
    )
    if last_run is not None:
        message.last_run.CopyFrom(run_pb(last_run))
    return message


def run_pb(run: RunRecord) -> pb.Run:
    waiting = run.status == "queued"
    return pb.Run(
        id=run.id,
        connection_id=run.connection_id,
        trigger=run.trigger,
        status=run.status,
        attempts=run.attempts,
        create_time=to_timestamp(run.create_time),
        start_time=to_timestamp(run.start_time),
        finish_time=to_timestamp(run.finish_time),
        next_attempt_time=to_timestamp(run.next_attempt_time if waiting else None),
        error=run.error or "",
        trace_id=trace_id_of(run.trace_parent),
        details_purged=run.details_purge_time is not None,
        details_purge_time=to_timestamp(run.details_purge_time),
    )


def attempt_pb(attempt: Attempt) -> pb.Attempt:
    request = struct_pb2.Struct()
    request.update(attempt.request)
    return pb.Attempt(
        number=attempt.number,
        start_time=to_timestamp(attempt.start_time),
        finish_time=to_timestamp(attempt.finish_time),
        request=request,
        response_status=attempt.response_status or 0,
        response_headers=[pb.Header(name=n, value=v) for n, v in attempt.response_headers or []],
        response_body=attempt.response_body or "",
        response_body_encoding=attempt.response_body_encoding or "",
        response_truncated=bool(attempt.response_truncated),
        error=attempt.error or "",
    )


def log_pb(entry: WebhookEntry) -> pb.WebhookLogEntry:
    return pb.WebhookLogEntry(
        id=entry.id,
        connection_id=entry.connection_id,
        run_id=entry.run_id or "",
        receive_time=to_timestamp(entry.receive_time),
        source_ip=entry.source_ip,
        method=entry.method,
        headers=[pb.Header(name=n, value=v) for n, v in entry.headers],
        query=entry.query,
        body_encoding=entry.body_encoding,
        body=entry.body,
        redacted=entry.redacted or [],
        details_purged=entry.details_purged,
    )


def notification_pb(notice: Notification) -> pb.Notification:
    return pb.Notification(
        id=notice.id,
        connection_id=notice.connection_id or "",
        kind=notice.kind,
        message=notice.message,
        run_id=notice.run_id or "",
        credential_id=notice.credential_id or "",
        create_time=to_timestamp(notice.create_time),
        read_time=to_timestamp(notice.read_time),
        details_purged=notice.details_purged,
    )


def _trigger(message: pb.Trigger) -> dict[str, Any]:
    return {"type": message.type, "cron": message.cron, "every_seconds": message.every_seconds}


def _action(message: pb.Action) -> dict[str, Any]:
    return {
        "type": message.type,
        "method": message.method,
        "url": message.url,
        "headers": dict(message.headers),
        "body_template": _plain(message.body_template, message.HasField("body_template")),
        "credential_id": message.credential_id,
    }


class RunnerApi(runner_pb2_grpc.RunnerServiceServicer):
    def __init__(
        self,
        connections: Connections,
        ingest: Ingest,
        activity: Activity,
        egress: list[str],
        *,
        suspensions: Suspensions,
        operations: Operations,
        preview: Preview,
        retries: Retries,
    ) -> None:
        self.operations = operations
        self.preview = preview
        self.retries = retries
        self.connections = connections
        self.ingest = ingest
        self.activity = activity
        self.egress = egress
        self.suspensions = suspensions

    async def CreateConnection(  # noqa: N802 - gRPC method names
        self, request: pb.CreateConnectionRequest, context: Context
    ) -> pb.ConnectionWithToken:
        draft = self.connections.draft(
            request.name,
            _trigger(request.trigger),
            _action(request.action),
            request.max_attempts,
            request.signing_secret or None,
        )
        row, token = await self.connections.create(acting_user(context), draft)
        return pb.ConnectionWithToken(connection=connection_pb(row), webhook_token=token)

    async def GetConnection(  # noqa: N802 - gRPC method names
        self, request: pb.GetConnectionRequest, context: Context
    ) -> pb.Connection:
        return await self._with_last_run(
            await self.connections.get(acting_user(context), request.id)
        )

    async def _with_last_run(self, row: Connection) -> pb.Connection:
        """A connection as every answer gives it: with its last run."""
        last = await self.connections.last_runs([row.id])
        return connection_pb(row, last.get(row.id))

    async def ListConnections(  # noqa: N802 - gRPC method names
        self, request: pb.ListConnectionsRequest, context: Context
    ) -> pb.ListConnectionsResponse:
        rows, token = await self.connections.page(
            acting_user(context), request.page_size, request.page_token
        )
        last = await self.connections.last_runs([r.id for r in rows])
        return pb.ListConnectionsResponse(
            connections=[connection_pb(r, last.get(r.id)) for r in rows], next_page_token=token
        )

    async def UpdateConnection(  # noqa: N802 - gRPC method names
        self, request: pb.UpdateConnectionRequest, context: Context
    ) -> pb.Connection:
        changes = {
            "name": request.name,
            "status": request.status,
            "trigger": _trigger(request.trigger),
            "action": _action(request.action),
            "max_attempts": request.max_attempts,
            "signing_secret": request.signing_secret or None,
        }
        row = await self.connections.update(
            acting_user(context), request.id, list(request.update_mask.paths), changes
        )
        return await self._with_last_run(row)

    async def DeleteConnection(  # noqa: N802 - gRPC method names
        self, request: pb.DeleteConnectionRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.connections.delete(acting_user(context), request.id)
        return empty_pb2.Empty()

    async def RotateWebhookToken(  # noqa: N802 - gRPC method names
        self, request: pb.RotateWebhookTokenRequest, context: Context
    ) -> pb.ConnectionWithToken:
        row, token = await self.connections.rotate_token(acting_user(context), request.id)
        return pb.ConnectionWithToken(
            connection=await self._with_last_run(row), webhook_token=token
        )

    async def StartRun(  # noqa: N802 - gRPC method names
        self, request: pb.StartRunRequest, context: Context
    ) -> pb.Run:
        user_id = acting_user(context)
        connection = await self.connections.get(user_id, request.connection_id)
        payload = _plain(request.payload, request.HasField("payload"))
        return run_pb(await self.ingest.manual(connection, payload, "manual"))

    async def PreviewDelivery(  # noqa: N802 - gRPC method names
        self, request: pb.PreviewDeliveryRequest, context: Context
    ) -> pb.PreviewDeliveryResponse:
        acting_user(context)
        event = _plain(request.event, request.HasField("event"))
        sent = await self.preview.request(_action(request.action), event, request.credential_kind)
        message = pb.PreviewDeliveryResponse()
        message.request.update(sent)
        return message

    async def RetryRun(  # noqa: N802 - gRPC method names
        self, request: pb.RetryRunRequest, context: Context
    ) -> pb.Run:
        return run_pb(await self.retries.retry(acting_user(context), request.id))

    async def IngestWebhook(  # noqa: N802 - gRPC method names
        self, request: pb.IngestWebhookRequest, context: Context
    ) -> pb.IngestWebhookResponse:
        run_id, duplicate = await self.ingest.webhook(
            request.token,
            request.method,
            [(h.name, h.value) for h in request.headers],
            request.query,
            request.body,
            request.source_ip,
        )
        return pb.IngestWebhookResponse(run_id=run_id, duplicate=duplicate)

    async def GetRun(  # noqa: N802 - gRPC method names
        self, request: pb.GetRunRequest, context: Context
    ) -> pb.RunDetail:
        run, attempts = await self.activity.run(acting_user(context), request.id)
        detail = pb.RunDetail(run=run_pb(run), attempts=[attempt_pb(a) for a in attempts])
        if run.event is not None:
            detail.event.CopyFrom(to_value(run.event))
        return detail

    async def ListActivity(  # noqa: N802 - gRPC method names
        self, request: pb.ListRequest, context: Context
    ) -> pb.ListActivityResponse:
        only = RunFilter(
            request.status,
            request.since.ToDatetime(UTC) if request.HasField("since") else None,
            request.until.ToDatetime(UTC) if request.HasField("until") else None,
        )
        rows, token = await self.activity.runs(
            acting_user(context),
            request.connection_id,
            request.page_size,
            request.page_token,
            only,
        )
        return pb.ListActivityResponse(runs=[run_pb(r) for r in rows], next_page_token=token)

    async def ListWebhookLog(  # noqa: N802 - gRPC method names
        self, request: pb.ListRequest, context: Context
    ) -> pb.ListWebhookLogResponse:
        rows, token = await self.activity.webhook_log(
            acting_user(context), request.connection_id, request.page_size, request.page_token
        )
        return pb.ListWebhookLogResponse(entries=[log_pb(r) for r in rows], next_page_token=token)

    async def ListNotifications(  # noqa: N802 - gRPC method names
        self, request: pb.ListRequest, context: Context
    ) -> pb.ListNotificationsResponse:
        rows, token = await self.activity.notifications(
            acting_user(context),
            request.connection_id,
            request.page_size,
            request.page_token,
            request.unread,
        )
        return pb.ListNotificationsResponse(
            notifications=[notification_pb(r) for r in rows], next_page_token=token
        )

    async def GetUnreadNotificationCount(  # noqa: N802 - gRPC method names
        self, request: pb.GetUnreadNotificationCountRequest, context: Context
    ) -> pb.UnreadNotificationCount:
        count = await self.activity.unread_count(acting_user(context))
        return pb.UnreadNotificationCount(unread_count=count)

    async def MarkNotificationRead(  # noqa: N802 - gRPC method names
        self, request: pb.MarkNotificationReadRequest, context: Context
    ) -> pb.Notification:
        return notification_pb(await self.activity.mark_read(acting_user(context), request.id))

    async def GetEgressAddresses(  # noqa: N802 - gRPC method names
        self, request: empty_pb2.Empty, context: Context
    ) -> pb.EgressAddresses:
        return pb.EgressAddresses(addresses=self.egress)

    async def SuspendUser(  # noqa: N802 - gRPC method names
        self, request: pb.SuspendUserRequest, context: Context
    ) -> pb.SuspendUserResponse:
        if not request.user_id:
            raise InvalidArgument("USER_ID_REQUIRED", "name the user", field="user_id")
        cancelled = await self.suspensions.suspend([request.user_id])
        return pb.SuspendUserResponse(cancelled_run_count=cancelled)

    async def GetQueueStatus(  # noqa: N802 - gRPC method names
        self, request: pb.GetQueueStatusRequest, context: Context
    ) -> pb.QueueStatus:
        backlog, now = await self.operations.backlog()
        return pb.QueueStatus(
            pending_runs=backlog.pending,
            due_runs=backlog.due,
            oldest_pending_create_time=to_timestamp(backlog.oldest_create_time),
            read_time=to_timestamp(now),
        )

    async def GetRunTrace(  # noqa: N802 - gRPC method names
        self, request: pb.GetRunTraceRequest, context: Context
    ) -> pb.RunTrace:
        run = await self.operations.run(request.run_id)
        return pb.RunTrace(
            run_id=run.id,
            trace_id=trace_id_of(run.trace_parent),
            status=run.status,
            create_time=to_timestamp(run.create_time),
        )
