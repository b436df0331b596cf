"""The gRPC face of the runner. Who may call what is `ALLOWED_CALLERS`: the gateway, for the
acting user, anonymously for webhooks, and to suspend a user whose deletion was requested."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2, struct_pb2
from leadmesh.runner.v1 import runner_pb2 as pb
from leadmesh.runner.v1 import runner_pb2_grpc

from services.kit.callers import acting_user
from services.kit.errors import InvalidArgument
from services.kit.timestamps import json_value, to_timestamp, to_value
from services.runner.activity import Activity
from services.runner.connections import Connections
from services.runner.ingest import Ingest
from services.runner.suspensions import Suspensions
from services.runner.tracing import trace_id_of

SERVICE = pb.DESCRIPTOR.services_by_name["RunnerService"].full_name
ALLOWED_CALLERS: dict[str, frozenset[str]] = {
    f"/{SERVICE}/{method.name}": frozenset({"gateway"})
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


def connection_pb(row: dict[str, Any]) -> pb.Connection:
    return pb.Connection(
        id=row["id"],
        name=row["name"],
        status=row["status"],
        trigger=trigger_pb(row["trigger"]),
        action=action_pb(row["action"]),
        max_attempts=row["max_attempts"],
        has_signing_secret=bool(row["signing_secret"]),
        pause_reason=row["pause_reason"] or "",
        consecutive_failures=row["consecutive_failures"],
        create_time=to_timestamp(row["create_time"]),
        update_time=to_timestamp(row["update_time"]),
        webhook_token_hint=row["webhook_token_hint"] or "",
    )


def run_pb(row: dict[str, Any]) -> pb.Run:
    waiting = row["status"] == "queued"
    return pb.Run(
        id=row["id"],
        connection_id=row["connection_id"],
        trigger=row["trigger"],
        status=row["status"],
        attempts=row["attempts"],
        create_time=to_timestamp(row["create_time"]),
        start_time=to_timestamp(row.get("start_time")),
        finish_time=to_timestamp(row.get("finish_time")),
        next_attempt_time=to_timestamp(row["next_attempt_time"] if waiting else None),
        error=row.get("error") or "",
        trace_id=trace_id_of(row.get("trace_parent")),
    )


def attempt_pb(row: dict[str, Any]) -> pb.Attempt:
    request = struct_pb2.Struct()
    request.update(row["request"])
    return pb.Attempt(
        number=row["number"],
        start_time=to_timestamp(row.get("start_time")),
        finish_time=to_timestamp(row.get("finish_time")),
        request=request,
        response_status=row["response_status"] or 0,
        response_headers=[pb.Header(name=n, value=v) for n, v in row["response_headers"] or []],
        response_body=row["response_body"] or "",
        response_body_encoding=row["response_body_encoding"] or "",
        response_truncated=bool(row["response_truncated"]),
        error=row["error"] or "",
    )


def log_pb(row: dict[str, Any]) -> pb.WebhookLogEntry:
    return pb.WebhookLogEntry(
        id=row["id"],
        connection_id=row["connection_id"],
        run_id=row["run_id"] or "",
        receive_time=to_timestamp(row["receive_time"]),
        source_ip=row["source_ip"],
        method=row["method"],
        headers=[pb.Header(name=n, value=v) for n, v in row["headers"]],
        query=row["query"],
        body_encoding=row["body_encoding"],
        body=row["body"],
        redacted=row.get("redacted") or [],
    )


def notification_pb(row: dict[str, Any]) -> pb.Notification:
    return pb.Notification(
        id=row["id"],
        connection_id=row["connection_id"] or "",
        kind=row["kind"],
        message=row["message"],
        run_id=row["run_id"] or "",
        credential_id=row["credential_id"] or "",
        create_time=to_timestamp(row["create_time"]),
        read_time=to_timestamp(row["read_time"]),
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
    ) -> None:
        self.connections = connections
        self.ingest = ingest
        self.activity = activity
        self.egress = egress
        self.suspensions = suspensions

    async def CreateConnection(self, request, context):  # noqa: N802 - gRPC method names
        draft = self.connections.draft(
            request.name,
            _trigger(request.trigger),
            _action(request.action),
            request.max_attempts,
            request.signing_secret or None,
        )
        row, token = await self.connections.create(acting_user(context), draft)
        return pb.ConnectionWithToken(connection=connection_pb(row), webhook_token=token)

    async def GetConnection(self, request, context):  # noqa: N802
        return connection_pb(await self.connections.get(acting_user(context), request.id))

    async def ListConnections(self, request, context):  # noqa: N802
        rows, token = await self.connections.page(
            acting_user(context), request.page_size, request.page_token
        )
        return pb.ListConnectionsResponse(
            connections=[connection_pb(r) for r in rows], next_page_token=token
        )

    async def UpdateConnection(self, request, context):  # noqa: N802
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
        return connection_pb(row)

    async def DeleteConnection(self, request, context):  # noqa: N802
        await self.connections.delete(acting_user(context), request.id)
        return empty_pb2.Empty()

    async def RotateWebhookToken(self, request, context):  # noqa: N802
        row, token = await self.connections.rotate_token(acting_user(context), request.id)
        return pb.ConnectionWithToken(connection=connection_pb(row), webhook_token=token)

    async def StartRun(self, request, context):  # noqa: N802
        user_id = acting_user(context)
        connection = await self.connections.get(user_id, request.connection_id)
        payload = _plain(request.payload, request.HasField("payload"))
        return run_pb(await self.ingest.manual(connection, payload, "manual"))

    async def IngestWebhook(self, request, context):  # noqa: N802
        run_id, duplicate = await self.ingest.webhook(
            request.token,
            request.method,
            [(h.name, h.value) for h in request.headers],
            request.query,
            request.body,
            request.source_ip,
        )
        return pb.IngestWebhookResponse(run_id=run_id, duplicate=duplicate)

    async def GetRun(self, request, context):  # noqa: N802
        run, attempts = await self.activity.run(acting_user(context), request.id)
        detail = pb.RunDetail(run=run_pb(run), attempts=[attempt_pb(a) for a in attempts])
        if run["event"] is not None:
            detail.event.CopyFrom(to_value(run["event"]))
        return detail

    async def ListActivity(self, request, context):  # noqa: N802
        rows, token = await self.activity.runs(
            acting_user(context), request.connection_id, request.page_size, request.page_token
        )
        return pb.ListActivityResponse(runs=[run_pb(r) for r in rows], next_page_token=token)

    async def ListWebhookLog(self, request, context):  # noqa: N802
        rows, token = await self.activity.webhook_log(
            acting_user(context), request.connection_id, request.page_size, request.page_token
        )
        return pb.ListWebhookLogResponse(entries=[log_pb(r) for r in rows], next_page_token=token)

    async def ListNotifications(self, request, context):  # noqa: N802
        rows, token = await self.activity.notifications(
            acting_user(context), request.connection_id, request.page_size, request.page_token
        )
        return pb.ListNotificationsResponse(
            notifications=[notification_pb(r) for r in rows], next_page_token=token
        )

    async def MarkNotificationRead(self, request, context):  # noqa: N802
        return notification_pb(await self.activity.mark_read(acting_user(context), request.id))

    async def GetEgressAddresses(self, request, context):  # noqa: N802
        return pb.EgressAddresses(addresses=self.egress)

    async def SuspendUser(self, request, context):  # noqa: N802
        if not request.user_id:
            raise InvalidArgument("USER_ID_REQUIRED", "name the user", field="user_id")
        cancelled = await self.suspensions.suspend([request.user_id])
        return pb.SuspendUserResponse(cancelled_run_count=cancelled)
