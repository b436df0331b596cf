"""Connections: validated when saved (a bad template or URL is refused with its position, never
discovered at run time), owned by one user, found by webhook token digest."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from apscheduler.triggers.cron import CronTrigger

from services.kit.clock import Clock
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.kit.tokens import cursor_number, page_cursor, page_token, sha256_hex
from services.runner.guard import DestinationRefused, EgressPolicy, check_url
from services.runner.model import Connection, RunRecord
from services.runner.settings import RunnerSettings
from services.runner.store import Store
from services.runner.template import TemplateError, compile_headers, compile_template

TRIGGERS = ("webhook", "schedule", "manual")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
STATUSES = ("active", "paused")
FIELDS = ("name", "status", "trigger", "action", "max_attempts", "signing_secret")


def not_found() -> NotFound:
    return NotFound("CONNECTION_NOT_FOUND", "no such connection")


def new_webhook_token() -> tuple[str, str, str]:
    """(token, its digest, its hint)."""
    token = secrets.token_urlsafe(32)
    return token, sha256_hex(token), token[:6]


@dataclass(frozen=True)
class Draft:
    """A connection's user-given fields, as validated."""

    name: str
    trigger: dict[str, Any]
    action: dict[str, Any]
    max_attempts: int
    signing_secret: str | None


def check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidArgument("INVALID_NAME", "a name has 1 to 200 characters", field="name")
    return name


def check_trigger(trigger: dict[str, Any], min_interval: int) -> dict[str, Any]:
    kind = trigger.get("type")
    if kind not in TRIGGERS:
        raise InvalidArgument(
            "INVALID_TRIGGER", f"trigger types are: {', '.join(TRIGGERS)}", field="trigger.type"
        )
    if kind != "schedule":
        return {"type": kind}
    cron, every = trigger.get("cron") or "", int(trigger.get("every_seconds") or 0)
    if bool(cron) == bool(every):
        raise InvalidArgument(
            "INVALID_TRIGGER", "a schedule has either cron or every_seconds", field="trigger"
        )
    if every:
        if not min_interval <= every <= 366 * 86400:
            raise InvalidArgument(
                "INVALID_TRIGGER",
                f"every_seconds is between {min_interval} and {366 * 86400}",
                field="trigger.every_seconds",
            )
        return {"type": "schedule", "every_seconds": every}
    try:
        CronTrigger.from_crontab(cron, timezone="UTC")
    except ValueError as error:
        raise InvalidArgument(
            "INVALID_TRIGGER", f"not a five-field crontab expression: {error}", field="trigger.cron"
        ) from None
    return {"type": "schedule", "cron": cron}


def check_action(action: dict[str, Any], policy: EgressPolicy) -> dict[str, Any]:
    if action.get("type") != "http":
        raise InvalidArgument("INVALID_ACTION", "the action type is: http", field="action.type")
    method = str(action.get("method") or "POST").upper()
    if method not in METHODS:
        raise InvalidArgument(
            "INVALID_ACTION", f"methods are: {', '.join(METHODS)}", field="action.method"
        )
    url = str(action.get("url") or "")
    if len(url) > 2000:
        raise InvalidArgument(
            "INVALID_URL", "a URL has at most 2000 characters", field="action.url"
        )
    try:
        check_url(url, policy)
    except DestinationRefused as error:
        raise InvalidArgument(error.reason, str(error), field="action.url") from None
    headers = dict(action.get("headers") or {})
    body_template = action.get("body_template")
    try:
        compile_headers(headers)
        compile_template(body_template, field="body_template")
    except TemplateError as error:
        raise InvalidArgument(
            "INVALID_TEMPLATE",
            str(error),
            field=f"action.{error.path}",
            metadata={"position": str(error.position)} if error.position is not None else None,
        ) from None
    return {
        "type": "http",
        "method": method,
        "url": url,
        "headers": headers,
        "body_template": body_template,
        "credential_id": str(action.get("credential_id") or "") or None,
    }


def check_signing_secret(secret: str | None) -> str | None:
    if not secret:
        return None
    if not 16 <= len(secret) <= 200 or not secret.isprintable():
        raise InvalidArgument(
            "INVALID_SIGNING_SECRET",
            "a signing secret has 16 to 200 printable characters",
            field="signing_secret",
        )
    return secret


class Connections:
    def __init__(self, settings: RunnerSettings, store: Store, clock: Clock, policy) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.policy: EgressPolicy = policy
        # Called after a change, with the connection's row (or None when deleted): schedules.
        self.listeners: list = []

    def draft(
        self,
        name: str,
        trigger: dict[str, Any],
        action: dict[str, Any],
        max_attempts: int,
        signing_secret: str | None,
    ) -> Draft:
        return Draft(
            check_name(name),
            check_trigger(trigger, self.settings.min_schedule_seconds),
            check_action(action, self.policy),
            self._attempts(max_attempts),
            check_signing_secret(signing_secret),
        )

    def _attempts(self, value: int) -> int:
        value = value or self.settings.default_max_attempts
        if not 1 <= value <= 20:
            raise InvalidArgument(
                "INVALID_MAX_ATTEMPTS", "max_attempts is between 1 and 20", field="max_attempts"
            )
        return value

    async def create(self, user_id: str, draft: Draft) -> tuple[Connection, str]:
        now = self.clock.now()
        token = digest = hint = None
        if draft.trigger["type"] == "webhook":
            token, digest, hint = new_webhook_token()
        made = Connection(
            id=str(uuid.uuid4()),
            user_id=user_id,
            name=draft.name,
            status="active",
            trigger=draft.trigger,
            action=draft.action,
            max_attempts=draft.max_attempts,
            signing_secret=draft.signing_secret,
            webhook_token_sha256=digest,
            webhook_token_hint=hint,
            consecutive_failures=0,
            pause_reason=None,
            create_time=now,
            update_time=now,
        )
        async with self.store.begin() as tx:
            await tx.connections.add(made)
            row = await tx.connections.get(user_id, made.id)
        await self._changed(row)
        return row, token or ""  # type: ignore[return-value]

    async def get(self, user_id: str, connection_id: str) -> Connection:
        async with self.store.read() as tx:
            row = await tx.connections.get(user_id, connection_id)
        if row is None:
            raise not_found()
        return row

    async def page(self, user_id: str, page_size: int, token: str) -> tuple[list[Connection], str]:
        size, after = page_args(page_size, token)
        async with self.store.read() as tx:
            rows = await tx.connections.page(user_id, after, size + 1)
        return next_page(rows, size)

    async def last_runs(self, connection_ids: list[str]) -> dict[str, RunRecord]:
        """The newest run of each (one query for a page of connections)."""
        async with self.store.read() as tx:
            return await tx.runs.newest_of(connection_ids)

    async def update(
        self, user_id: str, connection_id: str, paths: list[str], changes: dict[str, Any]
    ) -> Connection:
        unknown = sorted(set(paths) - set(FIELDS))
        if unknown:
            raise InvalidArgument(
                "INVALID_UPDATE_MASK", f"fields are: {', '.join(FIELDS)}", field="update_mask"
            )
        values: dict[str, Any] = {}
        if "name" in paths:
            values["name"] = check_name(changes["name"])
        if "trigger" in paths:
            values["trigger"] = check_trigger(
                changes["trigger"], self.settings.min_schedule_seconds
            )
        if "action" in paths:
            values["action"] = check_action(changes["action"], self.policy)
        if "max_attempts" in paths:
            values["max_attempts"] = self._attempts(changes["max_attempts"])
        if "signing_secret" in paths:
            values["signing_secret"] = check_signing_secret(changes["signing_secret"])
        if "status" in paths:
            if changes["status"] not in STATUSES:
                raise InvalidArgument(
                    "INVALID_STATUS", "statuses are: active, paused", field="status"
                )
            values["status"] = changes["status"]
            values["pause_reason"] = None
            if changes["status"] == "active":
                values["consecutive_failures"] = 0
        async with self.store.begin() as tx:
            row = await tx.connections.get(user_id, connection_id)
            if row is None:
                raise not_found()
            if "trigger" in values:
                was_webhook = row.trigger["type"] == "webhook"
                if values["trigger"]["type"] == "webhook" and not was_webhook:
                    # A new webhook trigger gets its token through rotate-token.
                    _, values["webhook_token_sha256"], values["webhook_token_hint"] = (
                        new_webhook_token()
                    )
                elif values["trigger"]["type"] != "webhook":
                    values["webhook_token_sha256"] = values["webhook_token_hint"] = None
            if values:
                values["update_time"] = self.clock.now()
                await tx.connections.update(connection_id, **values)
            if values.get("status") == "active" and row.status != "active":
                await tx.runs.release_held(connection_id, values["update_time"])
            row = await tx.connections.get(user_id, connection_id)
        await self._changed(row)
        return row  # type: ignore[return-value]

    async def delete(self, user_id: str, connection_id: str) -> None:
        async with self.store.begin() as tx:
            if not await tx.connections.delete(user_id, connection_id):
                raise not_found()
        for listener in self.listeners:
            await listener(connection_id, None)

    async def rotate_token(self, user_id: str, connection_id: str) -> tuple[Connection, str]:
        token, digest, hint = new_webhook_token()
        async with self.store.begin() as tx:
            row = await tx.connections.get(user_id, connection_id)
            if row is None:
                raise not_found()
            if row.trigger["type"] != "webhook":
                raise FailedPrecondition("NOT_A_WEBHOOK", "this connection has no webhook trigger")
            await tx.connections.update(
                connection_id,
                webhook_token_sha256=digest,
                webhook_token_hint=hint,
                update_time=self.clock.now(),
            )
            row = await tx.connections.get(user_id, connection_id)
        await self._changed(row)
        return row, token  # type: ignore[return-value]

    async def _changed(self, row: Connection | None) -> None:
        if row is not None:
            for listener in self.listeners:
                await listener(row.id, row)


Row = TypeVar("Row")


def page_args(page_size: int, token: str) -> tuple[int, int | None]:
    size = min(max(page_size or 20, 1), 100)
    if not token:
        return size, None
    return size, cursor_number(page_cursor(token))


def next_page(rows: list[Row], size: int) -> tuple[list[Row], str]:
    more, rows = len(rows) > size, rows[:size]
    return rows, page_token(str(rows[-1].seq)) if more else ""
