"""The attempt's policy: from what an attempt came to, what happens to its run next.

Network errors, 5xx, 408, 425 and 429 are retried with exponential backoff and full jitter
(`Retry-After` honoured, up to an hour) until the run's maximum, and so is a name that does not
resolve; a 401 with an oauth2 credential is answered by refreshing it once and sending again at
once; a paused connection holds its run without using an attempt, and so does our own outage
(the vault unreachable) for at most `RUNNER_OUTAGE_HOLD_SECONDS` after the run was queued.

Pure: plain values in, a decision out. This module must never touch the network, the vault,
the store or the clock (times come in as numbers); randomness only through the `jitter` given.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from services.runner.suspensions import CANCEL_REASON, CANCELLED

RETRY_STATUSES = frozenset({408, 425, 429})
# A name that does not resolve now may later (a resolver's outage, a record being published):
# retried like any network error, up to the run's maximum.
TRANSIENT_REFUSALS = frozenset({"UNRESOLVABLE"})
RETRY_AFTER_CAP_SECONDS = 3600.0
PAUSED_RECHECK_SECONDS = 60.0
REFRESHING = "401: refreshing the OAuth credential"

Jitter = Callable[[float, float], float]


@dataclass(frozen=True)
class Finish:
    """The run ends: "succeeded", "failed" or "cancelled"."""

    status: str
    error: str | None = None


@dataclass(frozen=True)
class Later:
    """The run goes out again after `delay` seconds; uncharged, its attempts are not counted."""

    delay: float
    error: str
    charged: bool = True


@dataclass(frozen=True)
class Refresh:
    """Refresh the OAuth credential through the vault, then send again at once."""


Decision = Finish | Later


@dataclass(frozen=True)
class Backoff:
    base_seconds: float
    cap_seconds: float

    def delay(
        self, used: int, retry_after: float | None = None, jitter: Jitter = random.uniform
    ) -> float:
        """Exponential in the attempts used, with full jitter; never before `Retry-After`."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** (used - 1))
        delay = jitter(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP_SECONDS))
        return delay


def retry_or_fail(
    used: int,
    max_attempts: int,
    error: str,
    backoff: Backoff,
    retry_after: float | None = None,
    jitter: Jitter = random.uniform,
) -> Decision:
    """After a failed attempt (`used` attempts in all): again later, or failed at the maximum."""
    if used >= max_attempts:
        return Finish("failed", f"{error} (after {used} attempts)")
    return Later(backoff.delay(used, retry_after, jitter), error)


def before_sending(suspended: bool, connection_status: str | None) -> tuple[str, Decision] | None:
    """Why a run ends or waits before anything is resolved or sent (a reason code for the log
    and the decision), or None when it may go out. `connection_status` None: deleted."""
    if suspended:
        return "", Finish(CANCELLED, CANCEL_REASON)
    if connection_status is None:
        return "connection_deleted", Finish("failed", "the connection was deleted")
    if connection_status != "active":
        # Held, not failed: it goes out when the owner activates the connection again.
        return "connection_paused", Later(
            PAUSED_RECHECK_SECONDS, "the connection is paused", charged=False
        )
    return None


def outage_delay(jitter: Jitter = random.uniform) -> float:
    return jitter(1.0, 3.0)


def hold_for_outage(
    waited_seconds: float, hold_seconds: float, error: str, jitter: Jitter = random.uniform
) -> Later | None:
    """Our own outage holds a run without using an attempt, but only for `hold_seconds` after
    it was queued: what looks like our outage for that long may be a failure that only looks
    like one, and must not hold a run forever. None: the hold is over, it costs an attempt."""
    if waited_seconds < hold_seconds:
        return Later(outage_delay(jitter), error, charged=False)
    return None


def after_refusal(
    reason: str, error: str, used: int, max_attempts: int, backoff: Backoff
) -> Decision:
    """The guard refused the destination (`reason` from guard.DestinationRefused)."""
    if reason in TRANSIENT_REFUSALS:
        return retry_or_fail(used, max_attempts, error, backoff)
    return Finish("failed", error)


def may_refresh(
    credential_kind: str | None, refreshed: bool, number: int, max_attempts: int
) -> bool:
    """A 401 may be answered by one refresh, of an oauth2 credential, with an attempt left."""
    return credential_kind == "oauth2" and not refreshed and number < max_attempts


def http_error(status: int) -> str:
    return f"HTTP {status}"


def succeeded(status: int) -> bool:
    return 200 <= status < 300


def after_response(
    status: int,
    *,
    refresh: bool,
    retry_after: float | None,
    used: int,
    max_attempts: int,
    backoff: Backoff,
) -> Decision | Refresh:
    """What an HTTP answer means for the run; `refresh`: a 401 may be answered by refreshing."""
    if succeeded(status):
        return Finish("succeeded")
    if status == 401 and refresh:
        return Refresh()
    if status in RETRY_STATUSES or status >= 500:
        return retry_or_fail(used, max_attempts, http_error(status), backoff, retry_after)
    return Finish("failed", http_error(status))


def credential_failure(reason: str, credential_id: str) -> Finish:
    """The vault would not give the credential (`reason` from its ErrorInfo)."""
    if reason == "ACCOUNT_DELETED":  # suspended in the vault before this process knew
        return Finish(CANCELLED, CANCEL_REASON)
    return Finish("failed", f"credential {credential_id}: {reason}")


def credential_notice(reason: str, credential_id: str) -> str:
    """What the owner is told about a credential the vault would not give."""
    if reason == "CREDENTIAL_NEEDS_RECONNECT":
        return f"The credential {credential_id} needs reconnecting: sign in to the provider again."
    return f"The credential {credential_id} could not be used ({reason})."
