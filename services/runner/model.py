"""The runner's domain values, typed: what the repositories hand out and take in.

Plain frozen dataclasses, no I/O; field names are the columns' (`tables.py`), so a row becomes
one with `from_row` and is written with `values()`. Never holds a webhook token (only its
digest) nor a resolved credential. A sealed column's field (sealed.py) holds its sealed text
only between the store and sealed.py; `details_purged` is no column: a read says with it that
the row's sealed values could not be opened (their key destroyed), so they read as purged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

# Fields that are no column to write: the database's sequence, and what a read found.
_NOT_WRITTEN = frozenset({"seq", "details_purged"})


class _Row:
    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(**{name: row.get(name) for name in _fields(cls) if name != "details_purged"})

    def values(self) -> dict[str, Any]:
        """The columns to insert (the sequence number is the database's)."""
        names = _fields(type(self))
        return {name: getattr(self, name) for name in names if name not in _NOT_WRITTEN}


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
class NewRun(_Row):
    """A run as ingest queues it (`tx.runs.add`): due at once, no attempt used yet."""

    id: str
    user_id: str
    connection_id: str
    trigger: str  # webhook, schedule, manual
    status: str  # queued
    attempts: int
    max_attempts: int
    event: dict[str, Any]  # body, headers, query, received_at
    create_time: datetime
    next_attempt_time: datetime
    push_time: datetime | None  # when it was pushed to the queue (None: the queue polls)
    trace_parent: str | None  # the W3C traceparent of the request that queued it

    def record(self) -> RunRecord:
        """The run as its owner reads it once queued (StartRun's answer)."""
        return RunRecord.from_row(self.values())


@dataclass(frozen=True)
class RunRecord(_Row):
    """A run as its owner reads it (`tx.runs.get`, `tx.runs.page`): the activity stream's entry,
    with its event when read alone (listings leave it out)."""

    id: str
    user_id: str
    connection_id: str
    trigger: str  # webhook, schedule, manual
    status: str  # queued, running, succeeded, failed, cancelled
    attempts: int  # used so far
    max_attempts: int
    create_time: datetime
    next_attempt_time: datetime
    start_time: datetime | None = None
    finish_time: datetime | None = None
    error: str | None = None
    trace_parent: str | None = None
    event: dict[str, Any] | None = None  # None in listings, and once purged
    # When retention purged its execution details (the event, its attempts); None while kept.
    details_purge_time: datetime | None = None
    seq: int | None = None  # the listing order, once stored


RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class RunFilter:
    """What the activity stream may be narrowed to: a status, runs created at or after
    `since` and before `until` (None: open)."""

    status: str = ""
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Backlog:
    """The runs not finished (queued or running), those due now, and the oldest one's creation
    time (None when none is pending): what the operator reads as the queue."""

    pending: int
    due: int
    oldest_create_time: datetime | None


@dataclass(frozen=True)
class RunResult:
    """What one delivery changes in its run's row (`tx.runs.finish`), applied only while
    `worker` still holds it: the run ends (`finish_time`) or goes out again (`next_attempt_time`,
    status queued); either way its lease is released."""

    id: str
    worker: str
    attempts: int  # used, this delivery's included
    status: str  # succeeded, failed, cancelled; or queued (it goes out again)
    error: str | None
    finish_time: datetime | None = None  # the run ended
    next_attempt_time: datetime | None = None  # the run goes out again then

    def changes(self) -> dict[str, Any]:
        """The columns it sets: a run that goes out again is pushed anew, an ended run keeps
        its next attempt time."""
        values: dict[str, Any] = {
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
            "lease_until": None,
        }
        if self.next_attempt_time is None:
            values["finish_time"] = self.finish_time
        else:
            values["next_attempt_time"] = self.next_attempt_time
            values["push_time"] = None
        return values


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
    details_purged: bool = False  # read: headers, query and body could not be opened


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
    details_purged: bool = False  # read: its message could not be opened


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
    """What a delivery leaves behind (`recorder.py` writes it): what changes in its run, its
    attempts and its notifications."""

    run: RunResult
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
