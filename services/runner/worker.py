"""Workers: claim due runs from the queue, deliver each, record the outcome.

A delivery resolves the credential through the vault, renders the action over the event and calls
it (SSRF guard, fixed egress, TLS verified, `Idempotency-Key: <run id>`); what each answer or
failure means for the run (retry, backoff, refresh once, hold, fail) is decided by `policy.py`,
and made into the run's outcome by `outcomes.py`. An exception of ours inside a delivery costs an
attempt like any failure, so `max_attempts` always ends a run. Before anything is sent, the keys
that open the run's sealed event and seal what its delivery records are had (`sealed.py`): without
them it is our outage, held without an attempt. Before anything is recorded, every form of the
resolved secret is scrubbed from the errors. This module must never decide a retry on its own:
every decision comes from `policy.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import sniffio

from services.kit.clock import Clock
from services.kit.metrics import counter
from services.kit.sealing import KeysUnavailable, Unreadable
from services.runner import policy
from services.runner.credentials import CredentialProblem, Credentials, Outage
from services.runner.delivery import Templates, body_text, retry_after_seconds
from services.runner.delivery_log import Delivery, log_outcome
from services.runner.guard import DestinationRefused, EgressPolicy
from services.runner.model import Attempt, Connection, Outcome, Run
from services.runner.outbound import Outbound, send
from services.runner.outcomes import Outcomes
from services.runner.queue import Candidate, Queue
from services.runner.recorder import Recorder
from services.runner.rendering import Renderer
from services.runner.scrub import scrub_outcome, secret_forms
from services.runner.sealed import Sealing
from services.runner.settings import RunnerSettings
from services.runner.store import Store
from services.runner.template import TemplateError
from services.runner.tracing import continuing

log = logging.getLogger("leadmesh.runner.worker")


# By outcome (succeeded, failed: the run's last word; retrying; held: the vault away, nothing
# sent) and the attempt's number (at most a connection's max_attempts, 20).
_deliveries = counter("leadmesh.deliveries")


def _count_delivery(run: Run, outcome: Outcome) -> None:
    ended = outcome.final or ("retrying" if outcome.attempts else "held")
    number = outcome.attempts[-1].number if outcome.attempts else run.attempts
    _deliveries.add(1, {"outcome": ended, "attempt": str(number)})


class Worker:
    def __init__(
        self,
        name: str,
        settings: RunnerSettings,
        store: Store,
        queue: Queue,
        credentials: Credentials,
        client: Outbound,
        egress: EgressPolicy,
        clock: Clock,
        recorder: Recorder,
        suspended: Container[str] = frozenset(),
        sealing: Sealing | None = None,
    ) -> None:
        self.name = name
        # Opens the run's event; its keys (and those its outcome is sealed with) come first.
        self.sealing = sealing or Sealing(None, clock, enabled=False)
        # Users whose deletion was requested (suspensions.py): their runs end, never go out.
        self.suspended = suspended
        self.settings = settings
        self.store = store
        self.queue = queue
        self.credentials = credentials
        self.client = client
        self.egress = egress
        self.clock = clock
        self.recorder = recorder
        self.backoff = policy.Backoff(settings.backoff_base_seconds, settings.backoff_cap_seconds)
        self.outcomes = Outcomes(
            name, clock, self.backoff, settings.outage_hold_seconds, recorder.notice
        )
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
                    await tx.runs.renew_leases(list(self._in_flight), self.name, until)
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
                task = asyncio.create_task(self._deliver(run, connections.get(run.connection_id)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _claim(self, candidates: list[Candidate]) -> tuple[list[Run], dict[str, Connection]]:
        now = self.clock.now()
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        ids = list(dict.fromkeys(c.run_id for c in candidates))
        async with self.store.begin() as tx:
            claimed = await tx.runs.claim(ids, now, lease, self.name)
            connections = (
                await tx.connections.by_ids(list({r.connection_id for r in claimed}))
                if claimed
                else {}
            )
        return claimed, connections

    async def _deliver(self, run: Run, connection: Connection | None) -> None:
        self._in_flight.add(run.id)
        try:
            # The trace of the request that queued it; its HTTP calls name the run and count
            # the requests sent before (http.request.resend_count).
            with continuing(run.trace_parent, run.id, sent_before=run.attempts):
                await self._deliver_and_record(run, connection)
        finally:
            self._in_flight.discard(run.id)

    async def _deliver_and_record(self, run: Run, connection: Connection | None) -> None:
        delivery = Delivery(run, self.clock.now())
        try:
            outcome = await self._attempt(delivery, connection)
        except Exception as error:
            outcome = self.outcomes.crashed(delivery, error)
        outcome = scrub_outcome(outcome, delivery.secrets)
        log_outcome(delivery, outcome, self.clock.now())
        _count_delivery(run, outcome)
        try:
            await self.recorder.record(outcome)
        except Exception:
            # Not recorded: the lease runs out and the run is claimed again (at least once).
            log.exception("recording an outcome failed", extra={"run_id": run.id})

    async def _attempt(self, delivery: Delivery, connection: Connection | None) -> Outcome:
        """Resolves the credential and compiles the templates, then sends until decided."""
        run = delivery.run
        status = None if connection is None else connection.status
        early = policy.before_sending(run.user_id in self.suspended, status)
        if early is not None:
            delivery.reason, decision = early
            return self.outcomes.outcome(run, [], decision)
        assert connection is not None  # before_sending ends a run whose connection was deleted
        try:
            delivery.run = run = await self.sealing.for_delivery(run)
        except KeysUnavailable as error:  # ours, like the vault's credentials: no attempt used
            return self.outcomes.held(delivery, str(error))
        except Unreadable:
            delivery.reason = "details_purged"
            return self.outcomes.final(
                run, [], "failed", "its event was purged before it was delivered"
            )
        action = connection.action
        credential_id = action.get("credential_id")
        try:
            credential = (
                await self.credentials.resolve(run.user_id, credential_id, run.connection_id)
                if credential_id
                else None
            )
        except Outage as error:
            return self.outcomes.held(delivery, str(error))
        except CredentialProblem as error:
            return self.outcomes.credential_failure(delivery, credential_id, error)
        delivery.secrets = secret_forms(credential)
        try:
            compiled = self.templates.of(connection)
        except TemplateError as error:
            delivery.reason = "template"
            return self.outcomes.final(run, [], "failed", f"template: {error}")
        return await self._send_until_decided(delivery, action, compiled, credential)

    async def _send_until_decided(
        self, delivery: Delivery, action: dict[str, Any], compiled: Any, credential: Any
    ) -> Outcome:
        """Renders and sends; a 401 answered by a refresh renders and sends once more."""
        run, attempts = delivery.run, delivery.attempts
        refreshed = False
        while True:
            number = run.attempts + len(attempts) + 1
            try:
                # Small renders inline, large ones on the renderer's threads (the loop serves
                # ingest too); past RUNNER_MAX_RENDER_BYTES: RenderTooLarge. A RenderError (or a
                # value the template cannot render) fails the same way for the same event.
                prepared = await self.renderer.prepare(
                    action, compiled, run.event or {}, run.id, credential
                )
            except Exception as error:
                delivery.reason = "rendering"
                return self.outcomes.final(run, attempts, "failed", f"rendering: {error}")
            attempts.append(
                Attempt(run.id, run.user_id, number, self.clock.now(), prepared.recorded)
            )
            kind = None if credential is None else credential[0]
            refresh = policy.may_refresh(kind, refreshed, number, run.max_attempts)
            decision = await self._send(delivery, prepared, refresh)
            if not isinstance(decision, policy.Refresh):
                return self.outcomes.outcome(run, attempts, decision)
            refreshed = True
            attempts[-1] = replace(attempts[-1], error=policy.REFRESHING)
            credential_id = action.get("credential_id")
            try:
                credential = await self.credentials.refresh(
                    run.user_id, credential_id, run.connection_id, credential
                )
            except Outage as error:
                delivery.problems[number] = "vault_unreachable"
                return self.outcomes.retry_or_fail(delivery, str(error), policy.outage_delay())
            except CredentialProblem as error:
                return self.outcomes.credential_failure(delivery, credential_id, error, attempts)
            delivery.secrets = secret_forms(credential, also=delivery.secrets)

    async def _send(
        self, delivery: Delivery, prepared: Any, refresh: bool
    ) -> policy.Decision | policy.Refresh:
        """One request, recorded in the last attempt, and what its answer (or failure) decides."""
        attempt = delivery.attempts[-1]
        number, most = attempt.number, delivery.run.max_attempts
        try:
            sent = await send(
                self.client,
                prepared.method,
                prepared.url,
                headers=prepared.headers,
                content=prepared.content,
                policy=self.egress,
            )
        except DestinationRefused as error:
            delivery.attempts[-1] = replace(attempt, finish_time=self.clock.now(), error=str(error))
            delivery.problems[number] = error.reason
            return policy.after_refusal(error.reason, str(error), number, most, self.backoff)
        except httpx.HTTPError as error:
            message = f"{type(error).__name__}: {error}"
            delivery.attempts[-1] = replace(attempt, finish_time=self.clock.now(), error=message)
            delivery.problems[number] = type(error).__name__
            return policy.retry_or_fail(number, most, message, self.backoff)
        status = sent.response.status_code
        text, encoding = body_text(sent.body)
        delivery.attempts[-1] = attempt = replace(
            attempt,
            finish_time=self.clock.now(),
            response_status=status,
            response_headers=[[k, v] for k, v in sent.response.headers.multi_items()],
            response_body=text,
            response_body_encoding=encoding,
            response_truncated=sent.truncated,
        )
        retry_after = retry_after_seconds(
            sent.response.headers.get("retry-after"), self.clock.now().timestamp()
        )
        decision = policy.after_response(
            status,
            refresh=refresh,
            retry_after=retry_after,
            used=number,
            max_attempts=most,
            backoff=self.backoff,
        )
        if not isinstance(decision, policy.Refresh) and not policy.succeeded(status):
            delivery.attempts[-1] = replace(attempt, error=policy.http_error(status))
        return decision
