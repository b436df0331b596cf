"""One purge run of one category: its lease taken, the participant's `Purge` called until nothing
expired is left (or nothing more gets deleted), and one ledger row written, whatever happened.

A sealed category's run then destroys the vault's day keys of the days wholly purged
(services/retention/daykeys.py), recorded as a ledger row of its own (participant "vault",
category "day_keys.<participant>.<category>", rows = keys): written after the purge's, so a vault
that fails never hides what the purge did. A failed purge destroys no key (what it left is not
known); the next run does.

A run whose lease another replica holds is skipped, not recorded: that replica's run is.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc

from services.kit.clock import Clock, as_utc
from services.kit.metrics import counter
from services.retention.daykeys import DayKeys, horizon, ledger_category, midnight
from services.retention.leases import Leases
from services.retention.ledger import Entry, Ledger
from services.retention.participants import Participants

log = logging.getLogger("leadmesh.retention")
# Rows deleted, by category and the service owning it (a fixed set each declares).
_purged = counter("leadmesh.retention.purged")


@dataclass(frozen=True)
class Progress:
    participant: str
    category: str
    rows_deleted: int
    rows_still_expired: int
    done: bool = False
    outcome: str = ""  # ok, failed, skipped, dry_run (when done)
    error: str = ""


OnProgress = Callable[[Progress], Awaitable[None]]


def job_name(participant: str, category: str) -> str:
    return f"purge:{participant}:{category}"


class Purges:
    def __init__(
        self,
        participants: Participants,
        ledger: Ledger,
        leases: Leases,
        clock: Clock,
        batch_size: int,
        day_keys: DayKeys | None = None,
    ) -> None:
        self.participants = participants
        self.day_keys = day_keys
        self.ledger = ledger
        self.leases = leases
        self.clock = clock
        self.batch_size = batch_size
        # Set when the service stops: a run ends after its current call (recorded as it stands).
        self.stopping = False

    async def run(
        self,
        participant: str,
        category: str,
        max_age: timedelta,
        *,
        as_of: datetime | None = None,
        trigger: str = "scheduled",
        dry_run: bool = False,
        progress: OnProgress | None = None,
        sealed: bool = False,
    ) -> Progress:
        """The run's last progress (`done`, with its outcome). `sealed`: the category's values
        are sealed under day keys (its Policy says), destroyed after the purge."""
        async with self.leases.try_hold(job_name(participant, category)) as held:
            if not held:
                final = Progress(participant, category, 0, 0, True, "skipped")
                if progress is not None:
                    await progress(final)
                return final
            final, cutoff, oldest = await self._run(
                participant, category, max_age, as_of, trigger, dry_run, progress
            )
            if sealed and final.outcome != "failed":
                await self._destroy_day_keys(
                    participant, category, cutoff, oldest, trigger, dry_run
                )
            return final

    async def _run(self, participant, category, max_age, as_of, trigger, dry_run, progress):
        client = self.participants[participant]
        started = self.clock.now()
        cutoff = (as_of or started) - max_age
        deleted, remaining, error = 0, 0, ""
        oldest: datetime | None = None
        try:
            while True:
                reply = await client.purge(category, cutoff, self.batch_size, dry_run)
                deleted += reply.rows_deleted
                remaining = reply.rows_still_expired
                oldest = (
                    as_utc(reply.oldest_time.ToDatetime())
                    if reply.HasField("oldest_time")
                    else None
                )
                if progress is not None and not dry_run:
                    await progress(Progress(participant, category, deleted, remaining))
                if dry_run or remaining <= 0 or reply.rows_deleted <= 0 or self.stopping:
                    break
        except grpc.aio.AioRpcError as failure:
            error = f"{failure.code().name}: {failure.details() or ''}".strip()
        except Exception as failure:  # a local participant's error; never a row's content
            log.exception("purge failed", extra={"participant": participant, "category": category})
            error = type(failure).__name__
        outcome = "failed" if error else "dry_run" if dry_run else "ok"
        if deleted and not dry_run:
            _purged.add(deleted, {"category": category, "owner": participant})
        await self.ledger.record(
            Entry(
                participant=participant,
                category=category,
                cutoff=cutoff,
                rows_deleted=deleted,
                start_time=started,
                end_time=self.clock.now(),
                outcome=outcome,
                error=error,
                trigger=trigger,
            )
        )
        log.info(
            "purge run",
            extra={
                "participant": participant,
                "category": category,
                "rows_deleted": deleted,
                "outcome": outcome,
                "trigger": trigger,
            },
        )
        final = Progress(participant, category, deleted, remaining, True, outcome, error)
        if progress is not None:
            await progress(final)
        return final, cutoff, oldest

    async def _destroy_day_keys(
        self,
        participant: str,
        category: str,
        cutoff: datetime,
        oldest: datetime | None,
        trigger: str,
        dry_run: bool,
    ) -> None:
        """The vault destroys the category's day keys before the horizon; one ledger row.
        A dry run asks the vault to count (`dry_run`) what the purge would let it destroy: the
        days before the cutoff's, the rows older than it being the ones the purge would delete."""
        before = horizon(cutoff, None if dry_run else oldest)
        started = self.clock.now()
        destroyed, error = 0, ""
        try:
            if self.day_keys is None:
                raise RuntimeError("no vault channel")
            done = await self.day_keys.destroy(participant, category, before, dry_run=dry_run)
            destroyed = done.keys
        except grpc.aio.AioRpcError as failure:
            error = f"{failure.code().name}: {failure.details() or ''}".strip()
        except Exception as failure:  # never a key: the vault answers counts and days
            log.exception("day keys not destroyed", extra={"participant": participant})
            error = type(failure).__name__
        outcome = "failed" if error else "dry_run" if dry_run else "ok"
        await self.ledger.record(
            Entry(
                participant="vault",
                category=ledger_category(participant, category),
                cutoff=midnight(before),
                rows_deleted=destroyed,
                start_time=started,
                end_time=self.clock.now(),
                outcome=outcome,
                error=error,
                trigger=trigger,
            )
        )
        log.info(
            "day keys destroyed",
            extra={
                "participant": participant,
                "category": category,
                "before": before.isoformat(),
                "keys_destroyed": destroyed,
                "outcome": outcome,
            },
        )
