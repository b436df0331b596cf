"""The runner's domain values, typed: what the repositories hand out and take in.

Plain frozen dataclasses, no I/O; field names are the columns' (`tables.py`), so a row becomes
one with `from_row` and is written with `values()`. Never holds a webhook token (only its
digest) nor a resolved credential.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self


class _Row:
    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(**{name: row.get(name) for name in _fields(cls)})

    def values(self) -> dict[str, Any]:
        """The columns to insert (the sequence number is the database's)."""
        return {name: getattr(self, name) for name in _fields(type(self)) if name != "seq"}


@dataclass(frozen=True)
class Connection(_Row):
    """A user's connection: what triggers it and the action each run delivers."""

    id: str
    user_id: str
    name: str
    status: str  # active, paused
    trigger: dict[str, Any]  # type: webhook | schedule | manual, cron, every_seconds
    action: dict[str, Any]  # type, method, url, headers, body_template, credential_id
    max_attempts: int
    signing_secret: str | None
    webhook_token_sha256: str | None  # webhook triggers: the token's digest (shown once)
    webhook_token_hint: str | None  # and its first characters
    consecutive_failures: int
    pause_reason: str | None
    create_time: datetime
    update_time: datetime
    seq: int | None = None  # the listing order, once stored


@dataclass(frozen=True)
class Run(_Row):
    """A run as a worker claims it (`tx.runs.claim`): what delivering it needs, its event too."""

    id: str
    user_id: str
    connection_id: str
    trigger: str  # webhook, schedule, manual
    attempts: int  # used before this claim
    max_attempts: int
    event: dict[str, Any] | None  # body, headers, query, received_at (None once purged)
    create_time: datetime
    trace_parent: str | None  # the W3C traceparent of the request that queued it


@dataclass(frozen=True)
class WebhookEntry(_Row):
    """One request to a webhook as the webhooks log keeps it, already redacted (`redact.py`)."""

    id: str
    user_id: str
    connection_id: str
    run_id: str | None
    receive_time: datetime
    source_ip: str
    method: str
    headers: list[list[str]]  # [name lower-cased, value], in the order received
    query: str
    body_encoding: str  # json, form, text, base64
    body: str
    redacted: list[str] | None  # names whose values were replaced (None: none)
    seq: int | None = None  # the log's order, once stored


@dataclass(frozen=True)
class Attempt(_Row):
    """One delivery attempt of a run: the request as sent (credentials redacted), the answer."""

    run_id: str
    user_id: str
    number: int
    start_time: datetime
    request: dict[str, Any]  # method, url, headers, body as sent
    response_status: int | None = None
    response_headers: list[list[str]] | None = None
    response_body: str | None = None
    response_body_encoding: str | None = None
    response_truncated: bool = False
    error: str | None = None
    finish_time: datetime | None = None  # set once the attempt ends
    seq: int | None = None  # the order, once stored


@dataclass(frozen=True)
class Notification(_Row):
    """A notice to a connection's owner, in the app (and by e-mail, `recorder.Mail`)."""

    id: str
    user_id: str
    connection_id: str | None
    kind: str  # run_failed, connection_paused, credential_problem
    message: str
    run_id: str | None
    credential_id: str | None
    create_time: datetime
    read_time: datetime | None
    seq: int | None = None  # the listing order, once stored


@dataclass(frozen=True)
class FailureMail(_Row):
    """A connection's failure e-mail as it gathers: failed runs not mailed yet, the last one's
    message, and when the connection was last mailed."""

    connection_id: str
    user_id: str
    last_mail_time: datetime | None
    pending: int
    last_message: str | None


@dataclass(frozen=True)
class Outcome:
    """What a delivery leaves behind (`recorder.py` writes it): the new values of its run's row
    (`id`, `worker` and the columns that change), its attempts and its notifications."""

    run: Mapping[str, Any]
    connection_id: str
    user_id: str
    attempts: tuple[Attempt, ...] = ()
    # "succeeded", "failed" (the run's last word), or "" (it goes on later)
    final: str = ""
    # Notifications besides the failure count's: e.g. a credential that needs reconnecting.
    notices: tuple[Notification, ...] = ()


_FIELDS: dict[type, tuple[str, ...]] = {}


def _fields(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(field.name for field in dataclasses.fields(cls))
    return names
