"""Incoming events: a webhook (or a manual or scheduled run) becomes a queued run in one
transaction with its log entry; only then is it accepted (202) and pushed to the queue.

Webhook authenticity: with a signing secret, `X-Leadmesh-Signature` is required (`signature.py`);
a signature accepted once is remembered in the database until its window has passed, so a replay
(from any runner process) answers the first run. A repeated `Idempotency-Key` on one connection
within 24 hours answers the first run too. What is stored of headers and query has every value
that may be a secret redacted (`redact.py`), in the webhooks log and in the run's event alike.

Both are sealed before they are written (`sealed.py`): the keys of the day are had first, and a
webhook or run whose keys cannot be had (the vault away, the keys not in memory) is refused
UNAVAILABLE with a Retry-After, never accepted in plaintext.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from services.kit.batching import GroupCommit
from services.kit.clock import Clock
from services.kit.errors import DomainError, FailedPrecondition, NotFound, ResourceExhausted
from services.kit.ids import time_ordered_id
from services.kit.metrics import counter
from services.kit.sealing import day_of
from services.kit.tokens import sha256_hex
from services.runner import signature
from services.runner.model import Connection, NewRun, RunRecord, WebhookEntry
from services.runner.queue import Queue
from services.runner.redact import header_value, received, redact_received
from services.runner.sealed import EXECUTION_DETAILS, WEBHOOK_LOG, Sealing
from services.runner.settings import RunnerSettings
from services.runner.store import Store, Tx
from services.runner.store.remembered import Remembered
from services.runner.suspensions import account_deleted
from services.runner.tracing import current_trace_parent

# Refusals are labelled by the error's reason (WEBHOOK_NOT_FOUND, RATE_LIMITED, …): a fixed set.
_accepted = counter("leadmesh.webhooks.accepted")
_refused = counter("leadmesh.webhooks.refused")

SIGNATURE_HEADER = signature.SIGNATURE_HEADER
IDEMPOTENCY_HEADER = "idempotency-key"
# Expired signatures are deleted at most this often per process (one indexed DELETE).
SIGNATURE_PURGE_SECONDS = 60.0


def parse_body(body: bytes, content_type: str) -> tuple[str, Any, str]:
    """(encoding, value for templates, text for the log): json, form, text or base64."""
    media = content_type.split(";")[0].strip().lower()
    try:
        text: str | None = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        # Not UTF-8, or NUL (which PostgreSQL's text cannot hold): kept as base64.
        encoded = base64.b64encode(body).decode("ascii")
        return "base64", encoded, encoded
    if media == "application/json" or media.endswith("+json") or (not media and text[:1] in "{["):
        try:
            return "json", json_body(text) if text else None, text
        except (ValueError, RecursionError):
            return "text", text, text
    if media == "application/x-www-form-urlencoded":
        return "form", _flatten(parse_qs(text, keep_blank_values=True)), text
    return "text", text, text


# Nested objects/arrays a JSON body may have (as templates): a run's event travels in a
# google.protobuf.Value, which protobuf parses only up to 100 message levels deep.
MAX_JSON_DEPTH = 32


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def json_body(text: str) -> Any:
    """A JSON body as a value every store and protobuf can carry; ValueError for NaN or
    Infinity, numbers beyond a double's range, lone surrogates, nesting over MAX_JSON_DEPTH."""
    value = json.loads(text, parse_constant=_not_json)
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for key in item:
                    key.encode("utf-8")
                stack += [(v, depth + 1) for v in item.values()]
            else:
                stack += [(v, depth + 1) for v in item]
        elif isinstance(item, str):
            item.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("a number beyond a double's range")
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > 2**1023:
            raise ValueError("a number beyond a double's range")
    return value


def _flatten(values: dict[str, list[str]]) -> dict[str, Any]:
    return {k: v[0] if len(v) == 1 else v for k, v in values.items()}


class Buckets:
    """A token bucket per connection (in process: the runner's API is one process)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 when admitted, else the seconds until a token is free."""
        now = time.monotonic()
        tokens, last = self._state.get(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._state[key] = (tokens - 1, now)
            if len(self._state) > 100_000:
                self._state.clear()
            return 0.0
        self._state[key] = (tokens, now)
        return (1 - tokens) / self.rate


@dataclass
class Accepted:
    run: NewRun
    entry: WebhookEntry
    key_sha256: str
    # A signed webhook's signature, remembered for its window (None: not signed).
    signed: signature.Verified | None = None
    # The run an earlier request with the same Idempotency-Key, or the same signature, made.
    duplicate_of: str = ""


async def _first_run(
    remembered: Remembered, digest: str, time: datetime, bound: datetime, run: NewRun
) -> str | None:
    """The run an earlier request with `digest` made; None when `run` now holds it."""
    connection_id = run.connection_id
    first = await remembered.first_run(connection_id, digest, bound)
    if first:
        return first
    if await remembered.remember(connection_id, digest, run.id, time, bound):
        return None
    # Another process's request with this digest committed first.
    return await remembered.first_run(connection_id, digest, bound)


class Ingest:
    def __init__(
        self,
        settings: RunnerSettings,
        store: Store,
        queue: Queue,
        clock: Clock,
        suspended: Container[str] = frozenset(),
        sealing: Sealing | None = None,
    ) -> None:
        self.settings = settings
        # Seals the log entry and the run's event (None: plaintext, for tests of other parts).
        self.sealing = sealing or Sealing(None, clock, enabled=False)
        # Users whose deletion was requested (suspensions.py): nothing of theirs is accepted.
        self.suspended = suspended
        self.store = store
        self.queue = queue
        self.clock = clock
        self.buckets = Buckets(settings.webhook_rate_per_second, settings.webhook_burst)
        self._commits: GroupCommit[Accepted, Accepted] = GroupCommit(
            self._write, name="webhook write"
        )
        # Connections by token digest, for a second: every change made here clears it at once;
        # a pause made by a worker elsewhere takes effect within the second.
        self._connections: dict[str, tuple[float, Connection | None]] = {}
        self._next_signature_purge: datetime | None = None

    async def forget(self, _connection_id: str, _row: Connection | None) -> None:
        """A connection listener: any change empties the cache of connections by token."""
        self._connections.clear()

    async def _connection(self, token: str) -> Connection | None:
        digest = sha256_hex(token)
        cached = self._connections.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.store.read() as tx:
            connection = await tx.connections.by_token(digest)
        if len(self._connections) > 10_000:
            self._connections.clear()
        self._connections[digest] = (now + 1.0, connection)
        return connection

    async def webhook(
        self,
        token: str,
        method: str,
        headers: list[tuple[str, str]],
        query: str,
        body: bytes,
        source_ip: str,
    ) -> tuple[str, bool]:
        """(run id, whether an earlier request with the same Idempotency-Key made it)."""
        try:
            run_id, duplicate = await self._webhook(token, method, headers, query, body, source_ip)
        except DomainError as error:
            _refused.add(1, {"reason": error.reason})
            raise
        _accepted.add(1, {"duplicate": duplicate})
        return run_id, duplicate

    async def _webhook(
        self,
        token: str,
        method: str,
        headers: list[tuple[str, str]],
        query: str,
        body: bytes,
        source_ip: str,
    ) -> tuple[str, bool]:
        if not token or len(token) > 200:
            raise NotFound("WEBHOOK_NOT_FOUND", "no webhook has this address")
        connection = await self._connection(token)
        if connection is None:
            raise NotFound("WEBHOOK_NOT_FOUND", "no webhook has this address")
        if connection.user_id in self.suspended:
            raise account_deleted()
        if connection.status != "active":
            raise FailedPrecondition("CONNECTION_PAUSED", "this connection is paused")
        if len(body) > self.settings.max_body_bytes:
            raise ResourceExhausted("BODY_TOO_LARGE", "a webhook body has at most 1 MiB")
        pairs = received(headers)
        signed = None
        if connection.signing_secret:
            signed = signature.verify(
                connection.signing_secret,
                header_value(pairs, SIGNATURE_HEADER),
                body,
                self.clock.now().timestamp(),
                self.settings.signature_tolerance_seconds,
            )
        # After the signature: forged requests must not use up the sender's allowance (nor a
        # request that cannot be sealed now).
        now = self.clock.now()
        day = day_of(now)
        keys = await self.sealing.for_accepting(
            connection.user_id, [(EXECUTION_DETAILS.category, day), (WEBHOOK_LOG.category, day)]
        )
        wait = self.buckets.take(connection.id)
        if wait:
            raise ResourceExhausted(
                "RATE_LIMITED", "too many webhooks for this connection", retry_after=wait
            )
        encoding, value, text = parse_body(body, header_value(pairs, "content-type") or "")
        redacted = redact_received(pairs, query)
        event = {
            "body": value,
            "headers": {name: v for name, v in redacted.headers},
            "query": _flatten(parse_qs(redacted.query, keep_blank_values=True)),
            "received_at": now.isoformat(),
        }
        run = self.new_run(connection, "webhook", event, now)
        entry = WebhookEntry(
            id=time_ordered_id(now),
            user_id=connection.user_id,
            connection_id=connection.id,
            run_id=run.id,
            receive_time=now,
            source_ip=source_ip[:64],
            method=method[:16],
            headers=redacted.headers,
            query=redacted.query,
            body_encoding=encoding,
            body=text,
            redacted=redacted.names or None,
        )
        key = header_value(pairs, IDEMPOTENCY_HEADER)
        run = self.sealing.seal(EXECUTION_DETAILS, keys, run)
        entry = self.sealing.seal(WEBHOOK_LOG, keys, entry)
        accepted = await self._commits.submit(
            Accepted(run, entry, sha256_hex(key) if key else "", signed)
        )
        if accepted.duplicate_of:
            return accepted.duplicate_of, True
        await self.queue.push([run.id])
        return run.id, False

    async def _write(self, batch: list[Accepted]) -> list[Accepted]:
        """Many webhooks' log entries and runs in one transaction."""
        now = self.clock.now()
        since = now - timedelta(hours=self.settings.idempotency_hours)
        async with self.store.begin() as tx:
            await self._purge_signatures(tx, now)
            fresh = []
            for item in batch:
                if item.signed is not None and item.key_sha256:
                    # Both remembered, or neither: a replay must never point at a run not made.
                    savepoint = await tx.c.begin_nested()
                    item.duplicate_of = await self._earlier_run(tx, item, now, since)
                    if item.duplicate_of:
                        await savepoint.rollback()
                    else:
                        await savepoint.commit()
                else:
                    item.duplicate_of = await self._earlier_run(tx, item, now, since)
                if not item.duplicate_of:
                    fresh.append(item)
            if fresh:
                await tx.runs.add([item.run for item in fresh])
                await tx.webhook_log.add([item.entry for item in fresh])
        return batch

    async def _earlier_run(self, tx: Tx, item: Accepted, now: datetime, since: datetime) -> str:
        """The run an earlier request with this signature or Idempotency-Key made, else "" (and
        this request's signature and key now answer its run)."""
        if item.signed is not None:
            until = datetime.fromtimestamp(item.signed.valid_until, UTC)
            first = await _first_run(tx.signatures, item.signed.digest, until, now, item.run)
            if first is not None:
                return first
        if item.key_sha256:
            taken = item.run.create_time
            first = await _first_run(tx.idempotency_keys, item.key_sha256, taken, since, item.run)
            return first or ""
        return ""

    async def _purge_signatures(self, tx: Tx, now: datetime) -> None:
        if self._next_signature_purge is None or now >= self._next_signature_purge:
            self._next_signature_purge = now + timedelta(seconds=SIGNATURE_PURGE_SECONDS)
            await tx.signatures.forget(now)

    async def manual(self, connection: Connection, payload: Any, trigger: str) -> RunRecord:
        now = self.clock.now()
        event = {"body": payload, "headers": {}, "query": {}, "received_at": now.isoformat()}
        return await self.queue_event(connection, event, trigger)

    async def queue_event(
        self, connection: Connection, event: dict[str, Any], trigger: str
    ) -> RunRecord:
        """A new queued run of `event` (a manual run's, or a retried run's own)."""
        if connection.user_id in self.suspended:
            raise account_deleted()
        if connection.status != "active":
            raise FailedPrecondition("CONNECTION_PAUSED", "this connection is paused")
        now = self.clock.now()
        keys = await self.sealing.for_accepting(
            connection.user_id, [(EXECUTION_DETAILS.category, day_of(now))]
        )
        run = self.new_run(connection, trigger, event, now)
        async with self.store.begin() as tx:
            await tx.runs.add([self.sealing.seal(EXECUTION_DETAILS, keys, run)])
        await self.queue.push([run.id])
        return run.record()

    def new_run(
        self, connection: Connection, trigger: str, event: dict[str, Any], now: datetime
    ) -> NewRun:
        return NewRun(
            id=time_ordered_id(now),
            user_id=connection.user_id,
            connection_id=connection.id,
            trigger=trigger,
            status="queued",
            attempts=0,
            max_attempts=connection.max_attempts,
            event=event,
            create_time=now,
            next_attempt_time=now,
            push_time=now if self.queue.pushes else None,
            trace_parent=current_trace_parent(),
        )
