"""Workers: claim due runs from the queue, deliver each, record the outcome.

A delivery resolves the credential through the vault, renders the action over the event and calls
it (SSRF guard, fixed egress, TLS verified, `Idempotency-Key: <run id>`). Network errors, 5xx, 408
and 429 are retried with exponential backoff and full jitter (`Retry-After` honoured) up to the
run's maximum, and so is a name that does not resolve; a 401 with an oauth2 credential refreshes
it through the vault once and retries at once. An exception of ours inside a delivery costs an
attempt like any failure, so `max_attempts` always ends a run. Our own outage (the vault
unreachable) holds a run without using an attempt, for at most `RUNNER_OUTAGE_HOLD_SECONDS`.
Before anything is recorded, every form of the resolved secret is scrubbed from the errors.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections.abc import Container
from datetime import timedelta
from typing import Any

import httpx
import sniffio

from services.kit.clock import Clock
from services.runner.credentials import CredentialProblem, Credentials, Outage
from services.runner.delivery import Templates, body_text, retry_after_seconds
from services.runner.delivery_log import Delivery, log_outcome
from services.runner.guard import DestinationRefused, EgressPolicy, Outbound, send
from services.runner.queue import Candidate, Queue
from services.runner.recorder import Outcome, Recorder
from services.runner.rendering import Renderer
from services.runner.scrub import scrub_outcome, secret_forms
from services.runner.settings import RunnerSettings
from services.runner.store import Store
from services.runner.suspensions import CANCEL_REASON, CANCELLED
from services.runner.template import RenderError, TemplateError
from services.runner.tracing import continuing

log = logging.getLogger("leadmesh.runner.worker")

_RETRY_STATUSES = {408, 425, 429}
# A name that does not resolve now may later (a resolver's outage, a record being published):
# retried like any network error, up to the run's maximum.
_TRANSIENT_REFUSALS = frozenset({"UNRESOLVABLE"})


class Worker:
    def __init__(
        self,
        name: str,
        settings: RunnerSettings,
        store: Store,
        queue: Queue,
        credentials: Credentials,
        client: Outbound,
        policy: EgressPolicy,
        clock: Clock,
        recorder: Recorder,
        suspended: Container[str] = frozenset(),
    ) -> None:
        self.name = name
        # Users whose deletion was requested (suspensions.py): their runs end, never go out.
        self.suspended = suspended
        self.settings = settings
        self.store = store
        self.queue = queue
        self.credentials = credentials
        self.client = client
        self.policy = policy
        self.clock = clock
        self.recorder = recorder
        self.templates = Templates()
        self.renderer = Renderer(settings.max_render_bytes, f"render-{name}")
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._in_flight: set[str] = set()
        self._loop_task: asyncio.Task | None = None
        self._renew_task: asyncio.Task | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name=f"worker {self.name}")
        self._renew_task = asyncio.create_task(self._renew(), name=f"leases {self.name}")

    async def _renew(self) -> None:
        """Extends the leases of runs still being delivered, so a slow delivery (timeouts,
        a refresh, a retry) is never claimed by another worker meanwhile."""
        every = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            if not self._in_flight:
                continue
            until = self.clock.now() + timedelta(seconds=self.settings.lease_seconds)
            try:
                async with self.store.begin() as tx:
                    await tx.renew_leases(list(self._in_flight), self.name, until)
            except Exception:
                log.exception("renewing leases failed")

    async def stop(self, grace: float = 10.0) -> None:
        self._stop.set()
        if self._renew_task is not None:
            self._renew_task.cancel()
        if self._loop_task is not None:
            await asyncio.wait([self._loop_task], timeout=grace)
            self._loop_task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
            for task in self._tasks:
                task.cancel()
        self.renderer.close()

    async def _run(self) -> None:
        # httpcore asks sniffio which library runs it many times per request; said once here,
        # for this task and the delivery tasks it starts, the answer costs nothing.
        sniffio.current_async_library_cvar.set("asyncio")
        while not self._stop.is_set():
            free = self.settings.concurrency - len(self._tasks)
            if free <= 0:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                candidates = await self.queue.take(self.name, free, 0.5)
                if not candidates:
                    continue
                claimed, connections = await self._claim(candidates)
                await self.queue.done(candidates)
            except Exception:
                log.exception("claiming runs failed")
                await asyncio.sleep(1.0)
                continue
            for run in claimed:
                task = asyncio.create_task(
                    self._deliver(run, connections.get(run["connection_id"]))
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _claim(self, candidates: list[Candidate]):
        now = self.clock.now()
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        ids = list(dict.fromkeys(c.run_id for c in candidates))
        async with self.store.begin() as tx:
            claimed = await tx.claim(ids, now, lease, self.name)
            connections = (
                await tx.connections_by_id(list({r["connection_id"] for r in claimed}))
                if claimed
                else {}
            )
        return claimed, connections

    async def _deliver(self, run: dict[str, Any], connection: dict[str, Any] | None) -> None:
        self._in_flight.add(run["id"])
        try:
            with continuing(run.get("trace_parent")):  # the trace of the request that queued it
                await self._deliver_and_record(run, connection)
        finally:
            self._in_flight.discard(run["id"])

    async def _deliver_and_record(self, run: dict[str, Any], connection) -> None:
        delivery = Delivery(run, self.clock.now())
        try:
            outcome = await self._attempt(delivery, connection)
        except Exception as error:
            outcome = self._crashed(delivery, error)
        scrub_outcome(outcome, delivery.secrets)
        log_outcome(delivery, outcome, self.clock.now())
        try:
            await self.recorder.record(outcome)
        except Exception:
            # Not recorded: the lease runs out and the run is claimed again (at least once).
            log.exception("recording an outcome failed", extra={"run_id": run["id"]})

    def _crashed(self, delivery: Delivery, error: Exception) -> Outcome:
        """A bug of ours, or an answer we did not foresee: like any failed attempt it costs one
        (so the run's maximum ends it) and counts towards pausing the connection. Logged with
        the frames only: an exception's message may quote a secret or the event."""
        kind = type(error).__name__
        log.error(
            "delivery crashed",
            extra={
                "run_id": delivery.run["id"],
                "connection_id": delivery.run["connection_id"],
                "error_type": kind,
                "frames": "".join(traceback.format_tb(error.__traceback__)),
            },
        )
        message = f"internal error ({kind})"
        if delivery.attempts:  # the attempt it happened in
            attempt = delivery.attempts[-1]
            attempt.setdefault("finish_time", self.clock.now())
            attempt["error"] = f"{attempt['error']}; {message}" if attempt["error"] else message
        else:
            delivery.attempts.append(self._bare_attempt(delivery, message))
        delivery.problems[delivery.attempts[-1]["number"]] = f"internal:{kind}"
        return self._retry_or_fail(delivery.run, delivery.attempts, None, message)

    async def _attempt(self, delivery: Delivery, connection: dict[str, Any] | None) -> Outcome:
        run, attempts = delivery.run, delivery.attempts
        if run["user_id"] in self.suspended:
            return self._final(run, [], CANCELLED, CANCEL_REASON)
        if connection is None:
            delivery.reason = "connection_deleted"
            return self._final(run, [], "failed", "the connection was deleted")
        if connection["status"] != "active":
            # Held, not failed: it goes out when the owner activates the connection again.
            delivery.reason = "connection_paused"
            return self._later(run, [], 60.0, "the connection is paused", charge=False)
        action = connection["action"]
        credential_id = action.get("credential_id")
        try:
            credential = (
                await self.credentials.resolve(run["user_id"], credential_id, run["connection_id"])
                if credential_id
                else None
            )
        except Outage as error:
            return self._held(delivery, str(error))
        except CredentialProblem as error:
            delivery.reason = f"credential:{error.reason}"
            return self._credential_failure(run, credential_id, error)
        delivery.secrets = secret_forms(credential)
        try:
            compiled = self.templates.of(connection)
        except TemplateError as error:
            delivery.reason = "template"
            return self._final(run, [], "failed", f"template: {error}")
        refreshed = False
        while True:
            number = run["attempts"] + len(attempts) + 1
            try:
                # Small renders inline, large ones on the renderer's threads (the loop serves
                # ingest too); past RUNNER_MAX_RENDER_BYTES: RenderTooLarge.
                prepared = await self.renderer.prepare(
                    action, compiled, run["event"] or {}, run["id"], credential
                )
            except RenderError as error:  # RenderTooLarge too: the same event fails the same way
                delivery.reason = "rendering"
                return self._final(run, attempts, "failed", f"rendering: {error}")
            except Exception as error:  # a value the template cannot render
                delivery.reason = "rendering"
                return self._final(run, attempts, "failed", f"rendering: {error}")
            attempt = _new_attempt(run, number, self.clock.now(), prepared.recorded)
            attempts.append(attempt)
            try:
                sent = await send(
                    self.client,
                    prepared.method,
                    prepared.url,
                    headers=prepared.headers,
                    content=prepared.content,
                    policy=self.policy,
                )
            except DestinationRefused as error:
                attempt.update(finish_time=self.clock.now(), error=str(error))
                delivery.problems[number] = error.reason
                if error.reason in _TRANSIENT_REFUSALS:
                    return self._retry_or_fail(run, attempts, None, str(error))
                return self._final(run, attempts, "failed", str(error))
            except httpx.HTTPError as error:
                message = f"{type(error).__name__}: {error}"
                attempt.update(finish_time=self.clock.now(), error=message)
                delivery.problems[number] = type(error).__name__
                return self._retry_or_fail(run, attempts, None, message)
            status = sent.response.status_code
            text, encoding = body_text(sent.body)
            attempt.update(
                finish_time=self.clock.now(),
                response_status=status,
                response_headers=[[k, v] for k, v in sent.response.headers.multi_items()],
                response_body=text,
                response_body_encoding=encoding,
                response_truncated=sent.truncated,
            )
            if 200 <= status < 300:
                return self._final(run, attempts, "succeeded", None)
            if (
                status == 401
                and credential is not None
                and credential[0] == "oauth2"
                and not refreshed
                and number < run["max_attempts"]
            ):
                refreshed = True
                attempt["error"] = "401: refreshing the OAuth credential"
                try:
                    credential = await self.credentials.refresh(
                        run["user_id"], credential_id, run["connection_id"], credential
                    )
                except Outage as error:
                    delivery.problems[number] = "vault_unreachable"
                    wait = self._outage_delay()
                    return self._retry_or_fail(run, attempts, wait, str(error))
                except CredentialProblem as error:
                    delivery.reason = f"credential:{error.reason}"
                    return self._credential_failure(run, credential_id, error, attempts)
                delivery.secrets = secret_forms(credential, also=delivery.secrets)
                continue
            message = f"HTTP {status}"
            attempt["error"] = message
            if status in _RETRY_STATUSES or status >= 500:
                wait = retry_after_seconds(
                    sent.response.headers.get("retry-after"), self.clock.now().timestamp()
                )
                return self._retry_or_fail(run, attempts, wait, message)
            return self._final(run, attempts, "failed", message)

    def _held(self, delivery: Delivery, error: str) -> Outcome:
        """Our own outage holds the run without using an attempt, but only for
        `outage_hold_seconds` after it was queued: what looks like our outage for that long
        may be a failure that only looks like one, and must not hold a run forever."""
        run = delivery.run
        delivery.reason = "vault_unreachable"
        waited = (self.clock.now() - run["create_time"]).total_seconds()
        if waited < self.settings.outage_hold_seconds:
            return self._later(run, [], self._outage_delay(), error, charge=False)
        delivery.attempts.append(self._bare_attempt(delivery, error))
        delivery.problems[delivery.attempts[-1]["number"]] = "vault_unreachable"
        return self._retry_or_fail(run, delivery.attempts, None, error)

    def _bare_attempt(self, delivery: Delivery, error: str) -> dict[str, Any]:
        """An attempt that sent nothing (no request was made, or none could be)."""
        run = delivery.run
        number = run["attempts"] + len(delivery.attempts) + 1
        attempt = _new_attempt(run, number, delivery.started, {})
        attempt.update(finish_time=self.clock.now(), error=error)
        return attempt

    # outcomes
    def _row(self, run: dict[str, Any], attempts: list, **values: Any) -> dict[str, Any]:
        return {
            "id": run["id"],
            "worker": self.name,
            "attempts": run["attempts"] + len(attempts),
            "lease_until": None,
            **values,
        }

    def _final(self, run, attempts, status: str, error: str | None) -> Outcome:
        row = self._row(run, attempts, status=status, error=error, finish_time=self.clock.now())
        return Outcome(row, run["connection_id"], run["user_id"], attempts, final=status)

    def _later(self, run, attempts, delay: float, error: str, charge: bool = True) -> Outcome:
        if not charge:
            attempts = []
        row = self._row(
            run,
            attempts,
            status="queued",
            error=error,
            next_attempt_time=self.clock.now() + timedelta(seconds=delay),
            push_time=None,
        )
        return Outcome(row, run["connection_id"], run["user_id"], attempts)

    def _retry_or_fail(self, run, attempts, retry_after: float | None, error: str) -> Outcome:
        used = run["attempts"] + len(attempts)
        if used >= run["max_attempts"]:
            return self._final(run, attempts, "failed", f"{error}{_AFTER.format(used)}")
        backoff = min(
            self.settings.backoff_cap_seconds, self.settings.backoff_base_seconds * 2 ** (used - 1)
        )
        delay = random.uniform(backoff / 2, backoff)  # exponential, with jitter
        if retry_after is not None:
            delay = max(delay, min(retry_after, 3600.0))
        return self._later(run, attempts, delay, error)

    def _outage_delay(self) -> float:
        return random.uniform(1.0, 3.0)

    def _credential_failure(
        self, run, credential_id: str, error: CredentialProblem, attempts=None
    ) -> Outcome:
        if error.reason == "ACCOUNT_DELETED":  # suspended in the vault before this process knew
            return self._final(run, attempts or [], CANCELLED, CANCEL_REASON)
        outcome = self._final(
            run, attempts or [], "failed", f"credential {credential_id}: {error.reason}"
        )
        message = (
            f"The credential {credential_id} needs reconnecting: sign in to the provider again."
            if error.reason == "CREDENTIAL_NEEDS_RECONNECT"
            else f"The credential {credential_id} could not be used ({error.reason})."
        )
        outcome.notices.append(
            self.recorder.notice(
                run["user_id"],
                run["connection_id"],
                "credential_problem",
                message,
                run_id=run["id"],
                credential_id=credential_id,
            )
        )
        return outcome


_AFTER = " (after {} attempts)"


def _new_attempt(run: dict[str, Any], number: int, start, request: dict) -> dict[str, Any]:
    return {"run_id": run["id"], "user_id": run["user_id"], "number": number,
            "start_time": start, "request": request, "response_status": None,
            "response_headers": None, "response_body": None, "response_body_encoding": None,
            "response_truncated": False, "error": None}  # fmt: skip
