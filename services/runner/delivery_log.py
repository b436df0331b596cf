"""What a delivery tells the operators: one structured log line per attempt and per failure.

Each line carries `run_id`, `connection_id`, the attempt number, the outcome and `duration_ms`
(and the trace id, from the kit's formatter: the delivery runs in its run's trace), and what went
wrong only as a code: the HTTP status, an exception's type or the guard's reason. Never an error
message, the URL (its path or query may hold a key), a body or a secret: an error message may
quote any of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from services.runner.model import Attempt, Outcome, Run

log = logging.getLogger("leadmesh.runner.delivery")


@dataclass
class Delivery:
    """One claim of a run, as far as it got: the attempts made, the forms of the secret it
    resolved (whatever ends it, its errors are scrubbed of them), and codes for the log."""

    run: Run
    started: datetime
    attempts: list[Attempt] = field(default_factory=list)
    secrets: tuple[str, ...] = ()
    # attempt number -> what went wrong, as a code ("ConnectError", "UNRESOLVABLE", …)
    problems: dict[int, str] = field(default_factory=dict)
    # why the run ended or waits without an attempt ("template", "vault_unreachable", …)
    reason: str = ""


def log_outcome(delivery: Delivery, outcome: Outcome, now: datetime) -> None:
    run, state = outcome.run, outcome.final or ("retrying" if outcome.attempts else "held")
    ids = {"run_id": run.id, "connection_id": outcome.connection_id}
    last = len(outcome.attempts) - 1
    for index, attempt in enumerate(outcome.attempts):
        # An attempt before the last is a 401 answered by refreshing the OAuth token.
        status = attempt.response_status
        log.info(
            "delivery attempt",
            extra={
                **ids,
                "attempt": attempt.number,
                "outcome": state if index == last else "refreshing",
                "status_code": status,
                "problem": delivery.problems.get(attempt.number)
                or (f"HTTP {status}" if status and not 200 <= status < 300 else None),
                "duration_ms": _ms(attempt.start_time, attempt.finish_time or now),
            },
        )
    if state == "failed":
        log.warning(
            "run failed",
            extra={
                **ids,
                "attempt": run.attempts,
                "outcome": "failed",
                "problem": delivery.reason or _last_problem(delivery, outcome),
                "duration_ms": _ms(delivery.started, now),
            },
        )
    elif state == "held":
        log.info(
            "run held",
            extra={**ids, "attempt": run.attempts, "outcome": "held",
                   "problem": delivery.reason, "duration_ms": _ms(delivery.started, now)},
        )  # fmt: skip


def _last_problem(delivery: Delivery, outcome: Outcome) -> str | None:
    if not outcome.attempts:
        return None
    attempt = outcome.attempts[-1]
    status = attempt.response_status
    return delivery.problems.get(attempt.number) or (f"HTTP {status}" if status else None)


def _ms(start: datetime, end: datetime) -> float:
    return round((end - start).total_seconds() * 1000, 1)
