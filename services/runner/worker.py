"""Workers: claim due runs from the queue, deliver each, record the outcome.

A delivery resolves the credential through the vault, renders the action over the event and calls
it (SSRF guard, fixed egress, TLS verified, `Idempotency-Key: <run id>`). Network errors, 5xx, 408
and 429 are retried with exponential backoff and full jitter (`Retry-After` honoured) up to the
run's maximum; a 401 with an oauth2 credential refreshes it through the vault once and retries at
once. Our own outages (the vault unreachable) never use up a run's attempts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta
from typing import Any

import httpx
import sniffio

from services.kit.clock import Clock
from services.runner.credentials import CredentialProblem, Credentials, Outage
from services.runner.delivery import Templates, body_text, prepare, retry_after_seconds
from services.runner.guard import DestinationRefused, EgressPolicy, Outbound, send
from services.runner.queue import Candidate, Queue
from services.runner.recorder import Outcome, Recorder
from services.runner.settings import RunnerSettings
from services.runner.store import Store
from services.runner.template import TemplateError
from services.runner.tracing import continuing

log = logging.getLogger("leadmesh.runner.worker")

_RETRY_STATUSES = {408, 425, 429}


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
    ) -> None:
        self.name = name
        self.settings = settings
        self.store = store
        self.queue = queue
        self.credentials = credentials
        self.client = client
        self.policy = policy
        self.clock = clock
        self.recorder = recorder
        self.templates = Templates()
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
        try:
            outcome = await self._attempt(run, connection)
        except Exception:
            log.exception("delivery crashed", extra={"run_id": run["id"]})
            outcome = self._later(run, [], 5.0, "internal error; will retry")
        try:
            await self.recorder.record(outcome)
        except Exception:
            # Not recorded: the lease runs out and the run is claimed again (at least once).
            log.exception("recording an outcome failed", extra={"run_id": run["id"]})

    async def _attempt(self, run: dict[str, Any], connection: dict[str, Any] | None) -> Outcome:
        if connection is None:
            return self._final(run, [], "failed", "the connection was deleted")
        if connection["status"] != "active":
            # Held, not failed: it goes out when the owner activates the connection again.
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
            return self._later(run, [], self._outage_delay(), str(error), charge=False)
        except CredentialProblem as error:
            return self._credential_failure(run, credential_id, error)
        try:
            compiled = self.templates.of(connection)
        except TemplateError as error:
            return self._final(run, [], "failed", f"template: {error}")
        attempts: list[dict[str, Any]] = []
        refreshed = False
        while True:
            number = run["attempts"] + len(attempts) + 1
            try:
                prepared = prepare(action, compiled, run["event"] or {}, run["id"], credential)
            except Exception as error:  # a value the template cannot render
                return self._final(run, attempts, "failed", f"rendering: {error}")
            started = self.clock.now()
            attempt: dict[str, Any] = {
                "run_id": run["id"],
                "user_id": run["user_id"],
                "number": number,
                "start_time": started,
                "request": prepared.recorded,
                "response_status": None,
                "response_headers": None,
                "response_body": None,
                "response_body_encoding": None,
                "response_truncated": False,
                "error": None,
            }
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
                attempt.update(finish_time=self.clock.now(), error=str(error)[:1000])
                return self._final(run, attempts, "failed", attempt["error"])
            except httpx.HTTPError as error:
                message = _scrub(f"{type(error).__name__}: {error}", credential)
                attempt.update(finish_time=self.clock.now(), error=message)
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
                    return self._later(run, attempts, self._outage_delay(), str(error))
                except CredentialProblem as error:
                    return self._credential_failure(run, credential_id, error, attempts)
                continue
            message = f"HTTP {status}"
            attempt["error"] = message
            if status in _RETRY_STATUSES or status >= 500:
                wait = retry_after_seconds(
                    sent.response.headers.get("retry-after"), self.clock.now().timestamp()
                )
                return self._retry_or_fail(run, attempts, wait, message)
            return self._final(run, attempts, "failed", message)

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
            error=error[:1000],
            next_attempt_time=self.clock.now() + timedelta(seconds=delay),
            push_time=None,
        )
        return Outcome(row, run["connection_id"], run["user_id"], attempts)

    def _retry_or_fail(self, run, attempts, retry_after: float | None, error: str) -> Outcome:
        used = run["attempts"] + len(attempts)
        if used >= run["max_attempts"]:
            return self._final(run, attempts, "failed", f"{error} (after {used} attempts)")
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


def _scrub(message: str, credential: tuple[str, dict] | None) -> str:
    if credential is not None:
        for value in credential[1].values():
            if isinstance(value, str) and len(value) >= 4:
                message = message.replace(value, "[redacted]")
    return message[:1000]
