"""What the owner reads: runs with their attempts, the activity stream, the webhooks log and
notifications, each newest first, another user's never (NOT_FOUND). A run whose execution
details were purged (retention) is still read and listed, without its event and attempts.

Sealed values are opened here (`sealed.py`), with one call for the keys of everything a read
returns: a value whose key is destroyed, or that does not authenticate (moved from another row or
user), reads as purged (a run's `details_purge_time`: its own, else when its day's key could first
be destroyed), never as an error."""

from __future__ import annotations

from dataclasses import replace

from services.kit.clock import Clock
from services.kit.errors import InvalidArgument, NotFound
from services.runner.connections import next_page, page_args
from services.runner.model import (
    RUN_STATUSES,
    Attempt,
    Notification,
    RunFilter,
    RunRecord,
    WebhookEntry,
)
from services.runner.sealed import (
    ATTEMPT_DETAILS,
    EXECUTION_DETAILS,
    NOTIFICATIONS,
    WEBHOOK_LOG,
    Sealing,
)
from services.runner.store import Store

# What a notification whose message is purged says instead.
PURGED_MESSAGE = "This notification's text was purged."


class Activity:
    def __init__(self, store: Store, clock: Clock, sealing: Sealing | None = None) -> None:
        self.store = store
        self.clock = clock
        self.sealing = sealing or Sealing(None, clock, enabled=False)

    async def run(self, user_id: str, run_id: str) -> tuple[RunRecord, list[Attempt]]:
        async with self.store.read() as tx:
            run = await tx.runs.get(user_id, run_id)
            if run is None:
                raise NotFound("RUN_NOT_FOUND", "no such run")
            if run.details_purge_time is not None:  # purged: no details, whatever is left
                return replace(run, event=None), []
            attempts = await tx.attempts.of_run(run_id)
        return await self._opened(user_id, run, attempts)

    async def _opened(
        self, user_id: str, run: RunRecord, attempts: list[Attempt]
    ) -> tuple[RunRecord, list[Attempt]]:
        """The run and its attempts opened; all purged when one of them cannot be: its
        execution details are one whole to its owner."""
        keys = await self.sealing.for_reading(
            user_id, [(EXECUTION_DETAILS, run), *((ATTEMPT_DETAILS, a) for a in attempts)]
        )
        opened = self.sealing.open(EXECUTION_DETAILS, keys, run)
        if opened is None:
            purged = self.sealing.purge_time(EXECUTION_DETAILS, run)
            return replace(run, event=None, details_purge_time=purged), []
        readable: list[Attempt] = []
        for attempt in attempts:
            one = self.sealing.open(ATTEMPT_DETAILS, keys, attempt)
            if one is None:
                purged = self.sealing.purge_time(ATTEMPT_DETAILS, attempt)
                return replace(run, event=None, details_purge_time=purged), []
            readable.append(one)
        return opened, readable

    async def runs(
        self, user_id: str, connection_id: str, size: int, token: str, only: RunFilter
    ) -> tuple[list[RunRecord], str]:
        """A page of the activity stream; the page token keeps its place under any filter (it
        is the last run's sequence number)."""
        if only.status and only.status not in RUN_STATUSES:
            raise InvalidArgument(
                "INVALID_STATUS", f"statuses are: {', '.join(RUN_STATUSES)}", field="status"
            )
        size, after = page_args(size, token)
        async with self.store.read() as tx:
            rows = await tx.runs.page(user_id, connection_id or None, after, size + 1, only)
        return next_page(rows, size)

    async def webhook_log(
        self, user_id: str, connection_id: str, size: int, token: str
    ) -> tuple[list[WebhookEntry], str]:
        size, after = page_args(size, token)
        async with self.store.read() as tx:
            rows = await tx.webhook_log.page(user_id, connection_id or None, after, size + 1)
        entries, next_token = next_page(rows, size)
        keys = await self.sealing.for_reading(user_id, [(WEBHOOK_LOG, e) for e in entries])
        opened = [self._entry(self.sealing.open(WEBHOOK_LOG, keys, e), e) for e in entries]
        return opened, next_token

    @staticmethod
    def _entry(opened: WebhookEntry | None, stored: WebhookEntry) -> WebhookEntry:
        if opened is not None:
            return opened
        return replace(
            stored, headers=[], query="", body="", body_encoding="text", details_purged=True
        )

    async def notifications(
        self, user_id: str, connection_id: str, size: int, token: str, unread: bool = False
    ) -> tuple[list[Notification], str]:
        size, after = page_args(size, token)
        async with self.store.read() as tx:
            rows = await tx.notifications.page(
                user_id, connection_id or None, after, size + 1, unread
            )
        notices, next_token = next_page(rows, size)
        return await self._notices(user_id, notices), next_token

    async def _notices(self, user_id: str, notices: list[Notification]) -> list[Notification]:
        keys = await self.sealing.for_reading(user_id, [(NOTIFICATIONS, n) for n in notices])
        out = []
        for notice in notices:
            opened = self.sealing.open(NOTIFICATIONS, keys, notice)
            out.append(opened or replace(notice, message=PURGED_MESSAGE, details_purged=True))
        return out

    async def unread_count(self, user_id: str) -> int:
        async with self.store.read() as tx:
            return await tx.notifications.unread_count(user_id)

    async def mark_read(self, user_id: str, notification_id: str) -> Notification:
        async with self.store.begin() as tx:
            row = await tx.notifications.mark_read(user_id, notification_id, self.clock.now())
        if row is None:
            raise NotFound("NOTIFICATION_NOT_FOUND", "no such notification")
        return (await self._notices(user_id, [row]))[0]
