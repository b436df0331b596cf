"""Every category's purge on its own APScheduler job, and the erasure pass on another.

Jobs are found, not configured: every `discover_seconds` each participant's policies are listed,
and each category with a max age gets its job (a participant down at start gets its jobs once it
answers). A job runs every `purge_interval_seconds`, coalesced (a backlog of missed runs is one
run) and never overlapping itself; across replicas the purge's lease keeps to one at a time.

The sealing migration (services/retention/sealing.py) runs on a job of its own, at start and
every `sealing_interval_seconds` (0: only when an operator runs it), coalesced and never
overlapping; once every row is sealed a run costs a ListPolicies and one Seal call per sealed
category that finds nothing (simpler than a job that unschedules itself, and it seals what an
older replica of a participant may still write in plaintext during an upgrade).

The schedule survives a restart: each job's last run is stored (`schedule_state`), so a job is
next due one interval after it, and a job whose run is past due (the service was down) runs at
start. What is due is decided by the service's clock; APScheduler fires on the system clock, so
the wait is handed to it as a delay from its own now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from leadmesh.retention.v1 import retention_pb2 as pb

from services.kit.clock import Clock, SystemClock
from services.retention.erasure import Erasures
from services.retention.participants import Participants, max_age
from services.retention.purges import Purges, job_name
from services.retention.sealing import Sealing
from services.retention.settings import RetentionSettings
from services.retention.store import Store

log = logging.getLogger("leadmesh.retention")

ERASURE_JOB, DISCOVER_JOB, SEALING_JOB = "erasures", "discover", "sealing"
# At stop, running jobs get this long to end (a purge ends after its current call).
STOP_SECONDS = 10.0


class Schedule:
    def __init__(
        self,
        settings: RetentionSettings,
        participants: Participants,
        purges: Purges,
        erasures: Erasures,
        store: Store,
        clock: Clock,
        sealing: Sealing,
    ) -> None:
        self.settings = settings
        self.participants = participants
        self.purges = purges
        self.sealing = sealing
        self.erasures = erasures
        self.store = store
        self.clock = clock
        self.interval = timedelta(seconds=settings.purge_interval_seconds)
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        # {participant: its policies as last listed}; compliance reads it for an unreachable one.
        self.policies: dict[str, list[pb.Policy]] = {}
        self._wall = SystemClock()
        self._running: set[asyncio.Task] = set()

    def start(self) -> None:
        self.scheduler.start()
        now = self._wall.now()
        self.scheduler.add_job(
            self.discover,
            IntervalTrigger(seconds=self.settings.discover_seconds),
            id=DISCOVER_JOB,
            next_run_time=now,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        self.scheduler.add_job(
            self.erasure_pass,
            IntervalTrigger(seconds=self.settings.erasure_reconcile_seconds),
            id=ERASURE_JOB,
            next_run_time=now,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        if self.settings.sealing_interval_seconds > 0:
            self.scheduler.add_job(
                self.sealing_pass,
                IntervalTrigger(seconds=self.settings.sealing_interval_seconds),
                id=SEALING_JOB,
                next_run_time=now,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=None,
            )

    async def discover(self) -> None:
        """Lists every participant's policies; each category with a max age gets its job."""
        async with self.store.read() as tx:
            last_runs = await tx.last_runs()
        for name in self.participants.names():
            try:
                policies = await self.participants[name].list_policies(self.clock.now())
            except Exception as error:
                log.debug(
                    "participant not answering",
                    extra={"participant": name, "error": type(error).__name__},
                )
                continue
            self.policies[name] = policies
            for policy in policies:
                if max_age(policy) is not None:
                    last_run = last_runs.get(job_name(name, policy.category))
                    self._ensure_job(name, policy.category, last_run)

    def _ensure_job(self, participant: str, category: str, last_run: datetime | None) -> None:
        job_id = job_name(participant, category)
        if self.scheduler.get_job(job_id) is not None:
            return
        now = self.clock.now()
        due = now if last_run is None else last_run + self.interval
        delay = max(due - now, timedelta(0))
        self.scheduler.add_job(
            self.scheduled_purge,
            IntervalTrigger(seconds=self.interval.total_seconds()),
            id=job_id,
            args=(participant, category),
            next_run_time=self._wall.now() + delay,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        log.info("purge scheduled", extra={"job": job_id, "in_s": round(delay.total_seconds())})

    def next_run(self, participant: str, category: str) -> datetime | None:
        """When the job next fires, on the service's clock (None: no such job)."""
        job = self.scheduler.get_job(job_name(participant, category))
        if job is None or job.next_run_time is None:
            return None
        return self.clock.now() + (job.next_run_time - self._wall.now())

    async def erasure_pass(self) -> None:
        with self._tracked():
            await self.erasures.scheduled_pass()

    async def sealing_pass(self) -> None:
        with self._tracked():
            try:
                await self.sealing.scheduled()
            except Exception:  # the next pass tries again; the operator's run reports errors
                log.exception("sealing pass failed")

    async def scheduled_purge(self, participant: str, category: str) -> None:
        with self._tracked():
            await self._scheduled_purge(participant, category)

    async def _scheduled_purge(self, participant: str, category: str) -> None:
        policy = next(
            (p for p in self.policies.get(participant, []) if p.category == category), None
        )
        age = max_age(policy) if policy is not None else None
        if age is None:
            return
        started = self.clock.now()
        done = await self.purges.run(participant, category, age, sealed=policy.sealed)
        if done.outcome != "skipped":  # the replica that ran it records it
            async with self.store.begin() as tx:
                await tx.set_last_run(job_name(participant, category), started)

    @contextlib.contextmanager
    def _tracked(self):
        task = asyncio.current_task()
        self._running.add(task)  # type: ignore[arg-type]
        try:
            yield
        finally:
            self._running.discard(task)  # type: ignore[arg-type]

    async def stop(self) -> None:
        """No job starts any more; running ones end (purges after their current call) or, past
        STOP_SECONDS, are cancelled."""
        if not self.scheduler.running:
            return
        self.scheduler.pause()
        self.purges.stopping = True
        self.sealing.stopping = True
        if self._running:
            await asyncio.wait(set(self._running), timeout=STOP_SECONDS)
        self.scheduler.shutdown(wait=False)
