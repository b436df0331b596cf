"""Users whose account deletion was requested: the runner stops their processing at once and for
good. Their webhooks are refused (ACCOUNT_DELETED, nothing stored), their schedules stop, their
queued and retrying runs end `cancelled`, and workers deliver nothing more of theirs.

The `suspended_users` table is the runner's durable record (services/kit/deletions.py);
`Suspensions.users` is that table in memory, shared by ingest, the scheduler and the workers of
this process. Suspending a user writes the row and cancels every queued run of a suspended user
in one transaction; each reconcile pass cancels again what became queued since (a retry written
by a delivery that was already under way), and workers end any such run they claim.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select, update

from services.kit.clock import Clock
from services.kit.deletions import SuspendedUsers
from services.kit.errors import FailedPrecondition
from services.runner.store import Store
from services.runner.tables import runs, suspended_users

log = logging.getLogger("leadmesh.runner.suspensions")

CANCELLED = "cancelled"
CANCEL_REASON = "account deleted"


def account_deleted() -> FailedPrecondition:
    return FailedPrecondition("ACCOUNT_DELETED", "the account of this connection is being deleted")


class Suspensions(SuspendedUsers):
    sweeps = True

    def __init__(self, store: Store, clock: Clock) -> None:
        super().__init__(store, clock, suspended_users)

    async def also(self, tx, now: datetime) -> int:
        """Cancels every queued run of a suspended user; returns how many."""
        result = await tx.c.execute(
            update(runs)
            .where(
                runs.c.status == "queued",
                runs.c.user_id.in_(select(suspended_users.c.user_id)),
            )
            .values(
                status=CANCELLED,
                error=CANCEL_REASON,
                finish_time=now,
                lease_until=None,
                push_time=None,
            )
        )
        if result.rowcount:
            log.info("runs cancelled", extra={"count": result.rowcount})
        return result.rowcount or 0
