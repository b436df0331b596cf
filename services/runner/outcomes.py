"""What a delivery's end makes of its run: the `Outcome` (ended, going out again later, or held
without an attempt) of each of policy.py's decisions, with the attempts it charges. Decides
nothing itself: every retry, hold and failure is policy.py's; this module only builds the values
the recorder writes. Never logs an error's message (it may quote a secret or the event).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from services.kit.clock import Clock
from services.runner import policy
from services.runner.credentials import CredentialProblem
from services.runner.delivery_log import Delivery
from services.runner.model import Attempt, Notification, Outcome, Run, RunResult

log = logging.getLogger("leadmesh.runner.worker")


class Outcomes:
    """The outcomes of one worker's deliveries (`worker` names it in each run's result)."""

    def __init__(
        self,
        worker: str,
        clock: Clock,
        backoff: policy.Backoff,
        outage_hold_seconds: float,
        notice: Callable[..., Notification],
    ) -> None:
        self.name = worker
        self.clock = clock
        self.backoff = backoff
        self.outage_hold_seconds = outage_hold_seconds
        # Makes a notification (recorder.notice): a credential problem's, with its outcome.
        self.notice = notice

    def crashed(self, delivery: Delivery, error: Exception) -> Outcome:
        """A bug of ours, or an answer we did not foresee: like any failed attempt it costs one
        (so the run's maximum ends it) and counts towards pausing the connection. Logged with
        the frames only: an exception's message may quote a secret or the event."""
        kind = type(error).__name__
        log.error(
            "delivery crashed",
            extra={
                "run_id": delivery.run.id,
                "connection_id": delivery.run.connection_id,
                "error_type": kind,
                "frames": "".join(traceback.format_tb(error.__traceback__)),
            },
        )
        message = f"internal error ({kind})"
        if delivery.attempts:  # the attempt it happened in
            attempt = delivery.attempts[-1]
            delivery.attempts[-1] = replace(
                attempt,
                finish_time=attempt.finish_time or self.clock.now(),
                error=f"{attempt.error}; {message}" if attempt.error else message,
            )
        else:
            delivery.attempts.append(self.bare_attempt(delivery, message))
        delivery.problems[delivery.attempts[-1].number] = f"internal:{kind}"
        return self.retry_or_fail(delivery, message)

    def held(self, delivery: Delivery, error: str) -> Outcome:
        """The vault unreachable: held without an attempt for a while (policy.hold_for_outage),
        then charged like any failure."""
        run = delivery.run
        delivery.reason = "vault_unreachable"
        waited = (self.clock.now() - run.create_time).total_seconds()
        hold = policy.hold_for_outage(waited, self.outage_hold_seconds, error)
        if hold is not None:
            return self.outcome(run, [], hold)
        delivery.attempts.append(self.bare_attempt(delivery, error))
        delivery.problems[delivery.attempts[-1].number] = "vault_unreachable"
        return self.retry_or_fail(delivery, error)

    def bare_attempt(self, delivery: Delivery, error: str) -> Attempt:
        """An attempt that sent nothing (no request was made, or none could be)."""
        run = delivery.run
        number = run.attempts + len(delivery.attempts) + 1
        now = self.clock.now()
        return Attempt(
            run.id, run.user_id, number, delivery.started, {}, error=error, finish_time=now
        )

    def outcome(self, run: Run, attempts: list, decision: policy.Decision) -> Outcome:
        if isinstance(decision, policy.Later):
            return self.later(run, attempts, decision.delay, decision.error, decision.charged)
        return self.final(run, attempts, decision.status, decision.error)

    def final(self, run: Run, attempts: list, status: str, error: str | None) -> Outcome:
        used = run.attempts + len(attempts)
        result = RunResult(run.id, self.name, used, status, error, finish_time=self.clock.now())
        return Outcome(result, run.connection_id, run.user_id, tuple(attempts), final=status)

    def later(
        self, run: Run, attempts: list, delay: float, error: str, charge: bool = True
    ) -> Outcome:
        if not charge:
            attempts = []
        result = RunResult(
            run.id,
            self.name,
            run.attempts + len(attempts),
            "queued",
            error,
            next_attempt_time=self.clock.now() + timedelta(seconds=delay),
        )
        return Outcome(result, run.connection_id, run.user_id, tuple(attempts))

    def retry_or_fail(
        self, delivery: Delivery, error: str, retry_after: float | None = None
    ) -> Outcome:
        run, attempts = delivery.run, delivery.attempts
        used = run.attempts + len(attempts)
        decision = policy.retry_or_fail(used, run.max_attempts, error, self.backoff, retry_after)
        return self.outcome(run, attempts, decision)

    def credential_failure(
        self,
        delivery: Delivery,
        credential_id: str,
        error: CredentialProblem,
        attempts: list | None = None,
    ) -> Outcome:
        run = delivery.run
        delivery.reason = f"credential:{error.reason}"
        decision = policy.credential_failure(error.reason, credential_id)
        outcome = self.outcome(run, attempts or [], decision)
        if decision.status != "failed":
            return outcome
        notice = self.notice(
            run.user_id,
            run.connection_id,
            "credential_problem",
            policy.credential_notice(error.reason, credential_id),
            run_id=run.id,
            credential_id=credential_id,
        )
        return replace(outcome, notices=(*outcome.notices, notice))
