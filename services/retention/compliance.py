"""Compliance: per participant and category, the oldest row against the max age.

OK, LATE when a row has outlived its category by more than the purge interval (a purge should
have taken it) — or, for a sealed category, when the vault still holds a day key older than the
max age plus a day plus the purge interval (the key outlives what it protects: a restored backup
could be opened) — or UNREACHABLE when the participant does not answer (the error says how; its
categories as last listed are shown). Erasure cases within `at_risk_days` of their deadline, or
past it, are flagged.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import grpc
from leadmesh.retention.v1 import retention_pb2 as pb

from services.kit.clock import Clock, SystemClock, as_utc
from services.kit.metrics import gauge
from services.retention.daykeys import DayKeys, midnight
from services.retention.erasure import Erasures
from services.retention.ledger import Ledger
from services.retention.participants import Participants, max_age
from services.retention.store import Store

log = logging.getLogger("leadmesh.retention")

OK, LATE, UNREACHABLE = "OK", "LATE", "UNREACHABLE"
LIST_TIMEOUT_SECONDS = 5.0


Reading = tuple[float, dict[str, str]]
_reported: Compliance | None = None
gauge("leadmesh.retention.compliant", lambda: _reported.gauges()[0] if _reported else [])
gauge("leadmesh.retention.oldest_age", lambda: _reported.gauges()[1] if _reported else [])


@dataclass
class CategoryState:
    participant: str
    policy: pb.Policy
    state: str
    last_purge_time: datetime | None = None
    error: str = ""
    # Sealed categories: the oldest day whose key the vault holds ("" when none or unknown).
    oldest_epoch_day: str = ""


@dataclass
class Status:
    categories: list[CategoryState] = field(default_factory=list)
    at_risk: list[dict[str, Any]] = field(default_factory=list)


class Compliance:
    def __init__(
        self,
        participants: Participants,
        ledger: Ledger,
        erasures: Erasures,
        store: Store,
        interval: timedelta,
        known: dict[str, list[pb.Policy]],
        clock: Clock | None = None,
        day_keys: DayKeys | None = None,
    ) -> None:
        self.day_keys = day_keys
        # The oldest day keys as the last status listed them (the gauges read them between).
        self._alive: dict[tuple[str, str], str] = {}
        self.participants = participants
        self.ledger = ledger
        self.erasures = erasures
        self.store = store
        self.interval = interval
        # The policies each participant listed last (the schedule keeps them).
        self.known = known
        self.clock = clock or SystemClock()
        global _reported
        _reported = self

    def gauges(self) -> tuple[list[Reading], list[Reading]]:
        """(compliant 1 or 0, oldest row's age in seconds) per category, from the policies as
        last listed: what `leadmesh.retention.compliant` and `.oldest_age` show between lists."""
        now = self.clock.now()
        compliant: list[Reading] = []
        ages: list[Reading] = []
        for name, policies in list(self.known.items()):
            for policy in policies:
                labels = {"category": policy.category, "owner": name}
                day = self._alive.get((name, policy.category), "") if policy.sealed else ""
                compliant.append((1.0 if self.state(policy, now, day) == OK else 0.0, labels))
                if policy.HasField("oldest_time"):
                    oldest = as_utc(policy.oldest_time.ToDatetime())
                    ages.append((max(0.0, (now - oldest).total_seconds()), labels))
        return compliant, ages

    async def status(self, as_of: datetime) -> Status:
        names = self.participants.names()
        listed = await asyncio.gather(*(self._list(n, as_of) for n in names))
        last = await self.ledger.last_purges()
        sealed = any(p.sealed for policies, _ in listed for p in policies)
        alive = await self._day_keys() if sealed else {}
        self._alive = alive
        status = Status()
        for name, (policies, error) in zip(names, listed, strict=True):
            if error:
                shown = self.known.get(name) or [pb.Policy()]
                for policy in shown:
                    status.categories.append(CategoryState(name, policy, UNREACHABLE, error=error))
                continue
            for policy in policies:
                oldest_day = alive.get((name, policy.category), "") if policy.sealed else ""
                status.categories.append(
                    CategoryState(
                        name,
                        policy,
                        self.state(policy, as_of, oldest_day),
                        last_purge_time=last.get((name, policy.category)),
                        oldest_epoch_day=oldest_day,
                    )
                )
        async with self.store.read() as tx:
            cases = await tx.active_cases()
        status.at_risk = [c for c in cases if self.erasures.at_risk(c, as_of)]
        return status

    def state(self, policy: pb.Policy, as_of: datetime, oldest_day: str = "") -> str:
        age = max_age(policy)
        if age is None:
            return OK
        late = as_of - age - self.interval
        if policy.HasField("oldest_time") and as_utc(policy.oldest_time.ToDatetime()) < late:
            return LATE
        # Day D's key protects rows until D + 1 day + max age; the purge after that destroys it.
        if oldest_day and midnight(date.fromisoformat(oldest_day)) < late - timedelta(days=1):
            return LATE
        return OK

    async def _day_keys(self) -> dict[tuple[str, str], str]:
        """{(participant, category): oldest day key alive}, one ListEpochKeys for the status;
        without the vault's answer the days are shown unknown (""), never a failed status."""
        if self.day_keys is None:
            return {}
        try:
            alive = await self.day_keys.alive()
        except (grpc.aio.AioRpcError, TimeoutError) as error:
            code = error.code().name if isinstance(error, grpc.aio.AioRpcError) else "TIMEOUT"
            log.warning("day keys not listed", extra={"grpc_code": code})
            return {}
        return {ref: entry.oldest_day for ref, entry in alive.items()}

    async def _list(self, name: str, as_of: datetime) -> tuple[list[pb.Policy], str]:
        try:
            return await asyncio.wait_for(
                self.participants[name].list_policies(as_of), LIST_TIMEOUT_SECONDS
            ), ""
        except grpc.aio.AioRpcError as error:
            return [], f"{error.code().name}: {error.details() or ''}".strip()
        except TimeoutError:
            return [], "DEADLINE_EXCEEDED: no answer"
