"""The runner as a retention participant: its categories (services/kit/retention.py), one for
every table in tables.py, and the erasure of one user's processing.

Categories nest inside runs: a run lives in the activity stream `activity_days` (30), but the
event it carried (`runs.event`) and its attempts' requests and responses are execution details
that live `execution_details_days` (7). The event is cleared in place (`details_purge_time`
says when, and GetRun answers `details_purged`); attempts are whole rows of their own table, so
they are a category of their own (`attempt_details`) with the same setting.

The payload columns of webhooks_log, execution_details, attempt_details and notifications are
sealed under the vault's day keys of their category (sealed.py): retention destroys a day's key
once its rows are purged, which makes every copy of them (backups too) unreadable.

Erasure, children first: the user is suspended (nothing of theirs accepted, queued or delivered
again), their schedules stop, deliveries already under way end; then attempts, webhook log,
notifications, the idempotency keys and webhook signatures of their connections (those tables
name no user: they go by the connection ids), runs, failure mails, connections, and last the
suspension itself. Nothing is left for a late outcome to write into.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from sqlalchemy import Table, delete, func, select, tuple_

from services.kit import retention as kit
from services.kit.clock import Clock
from services.kit.errors import Unavailable
from services.kit.partitions import DailyPartitions, make_ahead
from services.kit.retention import Category, ColumnCategory, Participant, TableCategory, days
from services.kit.sealing import ExecutionKeys
from services.runner import sealed
from services.runner.schedules import Schedules
from services.runner.settings import RunnerSettings
from services.runner.store import Store
from services.runner.suspensions import Suspensions
from services.runner.tables import (
    attempts,
    connections,
    failure_mails,
    idempotency_keys,
    notifications,
    runs,
    suspended_users,
    webhook_log,
    webhook_signatures,
)

NAME = "runner"
SERVICE_PURPOSE = "providing the automation service the user signed up for (contract)"
DEBUGGING = "showing the user what their automations did, and why (legitimate interest)"
ABUSE = "refusing replayed and duplicated webhooks (legitimate interest: security)"

# Tables that name no user: erased through the user's connections (their key's first column).
BY_CONNECTION: tuple[tuple[str, Table], ...] = (
    ("idempotency_keys", idempotency_keys),
    ("webhook_signatures", webhook_signatures),
)
DRAIN_POLL_SECONDS = 0.2
# A connection listener: called with (connection id, None) once a connection is gone.
Listener = Callable[[str, None], Awaitable[None]]


# Runs a purge may take: those that have ended (never one a worker may still deliver).
_ENDED = runs.c.status.in_(("succeeded", "failed", "cancelled"))


def categories(settings: RunnerSettings) -> list[Category]:
    """Every runner category, in erasure order (children before the rows they point to)."""
    details = days(settings.execution_details_days)
    # PostgreSQL: these three tables are partitioned by day (tables.PARTITIONED_BY).
    daily = DailyPartitions(days_ahead=settings.partition_days_ahead)
    return [
        TableCategory(
            name="attempt_details",
            description="Execution details: each delivery attempt's request and response",
            legal_basis=DEBUGGING,
            table=attempts,
            max_age=details,
            time_column="start_time",
            user_column="user_id",
            export_section="attempts",
            partitions=daily,
            sealed=sealed.ATTEMPT_DETAILS,
        ),
        ColumnCategory(
            name="execution_details",
            description="Execution details: the event a run carried (its body, headers, query)",
            legal_basis=DEBUGGING,
            table=runs,
            max_age=details,
            time_column="create_time",
            columns=("event",),
            purge_time_column="details_purge_time",
            # A run still queued or running (its runner down a week) keeps the event it will
            # deliver; it shows as LATE until it ends.
            only=_ENDED,
            sealed=sealed.EXECUTION_DETAILS,
        ),
        TableCategory(
            name="webhooks_log",
            description="Webhooks log: every webhook request received, as received",
            legal_basis=DEBUGGING,
            table=webhook_log,
            max_age=days(settings.webhook_log_days),
            time_column="receive_time",
            user_column="user_id",
            export_section="webhook_log",
            partitions=daily,
            sealed=sealed.WEBHOOK_LOG,
        ),
        TableCategory(
            name="notifications",
            description="In-app notifications: failed runs, paused connections",
            legal_basis=SERVICE_PURPOSE,
            table=notifications,
            max_age=days(settings.notification_days),
            time_column="create_time",
            user_column="user_id",
            export_section="notifications",
            sealed=sealed.NOTIFICATIONS,
        ),
        TableCategory(
            name="idempotency_keys",
            description="Digests of Idempotency-Keys, answering a repeated webhook its first run",
            legal_basis=ABUSE,
            table=idempotency_keys,
            # Exactly as long as a key answers a repeat: shorter would break deduplication.
            max_age=timedelta(hours=settings.idempotency_hours),
            time_column="create_time",
        ),
        TableCategory(
            name="webhook_signatures",
            description="Digests of webhook signatures, refusing replays within their window",
            legal_basis=ABUSE,
            table=webhook_signatures,
            # Its time is when the replay window ends: kept this long after that.
            max_age=days(settings.webhook_signature_days),
            time_column="expire_time",
        ),
        TableCategory(
            name="activity",
            description="Activity stream: each run's trigger, status, times and error",
            legal_basis=DEBUGGING,
            table=runs,
            max_age=days(settings.activity_days),
            time_column="create_time",
            user_column="user_id",
            export_section="runs",
            only=_ENDED,
            partitions=daily,
        ),
        TableCategory(
            name="failure_mails",
            description="Failure e-mails gathered per connection: counts and the last error",
            legal_basis=SERVICE_PURPOSE,
            table=failure_mails,
            max_age=None,
            user_column="user_id",
            export_section="failure_mails",
        ),
        TableCategory(
            name="connections",
            description="The user's connections: triggers, actions, state",
            legal_basis=SERVICE_PURPOSE,
            table=connections,
            max_age=None,
            user_column="user_id",
            export_section="connections",
            secret_columns=("signing_secret", "webhook_token_sha256"),
        ),
        TableCategory(
            name="suspensions",
            description="Users whose account deletion was requested (ids only)",
            legal_basis="honouring the deletion request (legal obligation: GDPR Art. 17)",
            table=suspended_users,
            max_age=None,
            user_column="user_id",
        ),
    ]


class RunnerParticipant(Participant):
    """The kit's participant with the runner's erasure around it (see the module's docstring).

    `schedules` and `listeners` are this process's: the scheduler, and the connection listeners
    (the scheduler's and ingest's caches) told that each erased connection is gone. Other runner
    processes follow the `suspended_users` table (workers within `reconcile_seconds`); their
    schedules find the connection gone at their next firing and stop.
    """

    def __init__(
        self,
        settings: RunnerSettings,
        store: Store,
        clock: Clock,
        suspensions: Suspensions,
        *,
        schedules: Schedules | None = None,
        listeners: Sequence[Listener] = (),
        keys: ExecutionKeys | None = None,
    ) -> None:
        super().__init__(
            NAME,
            store.database,
            categories(settings),
            clock,
            before_erase=self._stop_processing,
            after_erase=self._forget,
            keys=keys,
        )
        self.settings = settings
        self.suspensions = suspensions
        self.schedules = schedules
        self.listeners = list(listeners)
        # Per erasure under way: the user's connection ids and what went by them.
        self._erasing: dict[str, tuple[list[str], dict[str, tuple[int, int, str]]]] = {}

    async def make_partitions(self) -> int:
        """PostgreSQL: today's partition and the days ahead of each partitioned table, those
        missing made (at start; every purge of their category does it again); how many."""
        if self.database.engine.dialect.name != "postgresql":
            return 0
        made, today = 0, self.clock.now().date()
        for category in self.categories.values():
            if isinstance(category, TableCategory) and category.partitions is not None:
                assert category.time_column is not None
                made += await make_ahead(
                    self.database,
                    category.table,
                    category.time_column,
                    today,
                    category.partitions.days_ahead,
                )
        return made

    async def erase(self, user_id: str) -> dict[str, tuple[int, int, str]]:
        try:
            result = await super().erase(user_id)
            _, keyed = self._erasing.get(user_id, ([], {}))
        finally:
            self._erasing.pop(user_id, None)
        # The kit reports the tables that name their user; these went by connection.
        ordered: dict[str, tuple[int, int, str]] = {}
        for name in self.categories:
            if name in result:
                ordered[name] = result[name]
            elif name in keyed:
                ordered[name] = keyed[name]
        return ordered

    async def _stop_processing(self, user_id: str) -> None:
        """Before anything is erased: nothing of the user may be written after it."""
        async with self.database.read() as connection:
            ids = list(
                (
                    await connection.execute(
                        select(connections.c.id).where(connections.c.user_id == user_id)
                    )
                ).scalars()
            )
            pending = (
                await connection.execute(
                    select(runs.c.id)
                    .where(runs.c.user_id == user_id, runs.c.status.in_(("queued", "running")))
                    .limit(1)
                )
            ).first()
        if ids or pending:
            # Suspends (if not yet) and cancels every queued run of a suspended user. A user
            # with neither connections nor work has nothing to stop (and a second erasure
            # then records nothing anew).
            await self.suspensions.suspend([user_id])
        if self.schedules is not None:
            self.schedules.stop(ids)
        await self._drain(user_id)
        if ids or pending:  # what a delivery that just ended queued again is cancelled too
            await self.suspensions.suspend([])
        keyed: dict[str, tuple[int, int, str]] = {}
        for name, table in BY_CONNECTION:
            keyed[name] = (await self._erase_by_connection(table, ids), 0, "")
        self._erasing[user_id] = (ids, keyed)

    async def _drain(self, user_id: str) -> None:
        """Waits for the user's deliveries under way (running, lease alive) to be recorded."""
        give_up = time.monotonic() + self.settings.erasure_drain_seconds
        while True:
            async with self.database.read() as connection:
                busy = (
                    await connection.execute(
                        select(func.count())
                        .select_from(runs)
                        .where(
                            runs.c.user_id == user_id,
                            runs.c.status == "running",
                            runs.c.lease_until >= self.clock.now(),
                        )
                    )
                ).scalar_one()
            if not busy:
                return
            if time.monotonic() > give_up:
                raise Unavailable(
                    "DELIVERIES_IN_FLIGHT",
                    "deliveries of this user are still under way; erase again later",
                )
            await asyncio.sleep(DRAIN_POLL_SECONDS)

    async def _erase_by_connection(self, table: Table, connection_ids: list[str]) -> int:
        keys = list(table.primary_key.columns)
        owner = table.c.connection_id
        count = 0
        for start in range(0, len(connection_ids), kit.DEFAULT_BATCH):
            chunk = connection_ids[start : start + kit.DEFAULT_BATCH]
            while True:  # batches of short transactions, as every erasure
                picked = select(*keys).where(owner.in_(chunk)).limit(kit.DEFAULT_BATCH)
                async with self.database.write() as connection:
                    done = (
                        await connection.execute(delete(table).where(tuple_(*keys).in_(picked)))
                    ).rowcount
                count += done
                if done < kit.DEFAULT_BATCH:
                    break
        return count

    async def _forget(self, user_id: str) -> None:
        """After the erasure: this process's caches (ingest's connections by token, the
        scheduler) let go of the user's connections. The id itself stays in `suspensions.users`
        until the next reload of the table (which no longer names it) drops it: a request that
        read a connection before the erasure, still under way, is refused meanwhile."""
        ids, _ = self._erasing.get(user_id, ([], {}))
        for connection_id in ids:
            for listener in self.listeners:
                await listener(connection_id, None)
