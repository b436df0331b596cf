"""Compliance: per participant and category, the oldest row against the max age.

OK, LATE when a row has outlived its category by more than the purge interval (a purge should
have taken it), or UNREACHABLE when the participant does not answer (the error says how; its
categories as last listed are shown). Erasure cases within `at_risk_days` of their deadline, or
past it, are flagged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import grpc
from leadmesh.retention.v1 import retention_pb2 as pb

from services.kit.clock import Clock, SystemClock, as_utc
from services.kit.metrics import gauge
from services.retention.erasure import Erasures
from services.retention.ledger import Ledger
from services.retention.participants import Participants, max_age
from services.retention.store import Store

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
    ) -> None:
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
                compliant.append((1.0 if self.state(policy, now) == OK else 0.0, labels))
                if policy.HasField("oldest_time"):
                    oldest = as_utc(policy.oldest_time.ToDatetime())
                    ages.append((max(0.0, (now - oldest).total_seconds()), labels))
        return compliant, ages

    async def status(self, as_of: datetime) -> Status:
        names = self.participants.names()
        listed = await asyncio.gather(*(self._list(n, as_of) for n in names))
        last = await self.ledger.last_purges()
        status = Status()
        for name, (policies, error) in zip(names, listed, strict=True):
            if error:
                shown = self.known.get(name) or [pb.Policy()]
                for policy in shown:
                    status.categories.append(CategoryState(name, policy, UNREACHABLE, error=error))
                continue
            for policy in policies:
                status.categories.append(
                    CategoryState(
                        name,
                        policy,
                        self.state(policy, as_of),
                        last_purge_time=last.get((name, policy.category)),
                    )
                )
        async with self.store.read() as tx:
            cases = await tx.active_cases()
        status.at_risk = [c for c in cases if self.erasures.at_risk(c, as_of)]
        return status

    def state(self, policy: pb.Policy, as_of: datetime) -> str:
        age = max_age(policy)
        if age is None or not policy.HasField("oldest_time"):
            return OK
        oldest = as_utc(policy.oldest_time.ToDatetime())
        return LATE if oldest < as_of - age - self.interval else OK

    async def _list(self, name: str, as_of: datetime) -> tuple[list[pb.Policy], str]:
        try:
            return await asyncio.wait_for(
                self.participants[name].list_policies(as_of), LIST_TIMEOUT_SECONDS
            ), ""
        except grpc.aio.AioRpcError as error:
            return [], f"{error.code().name}: {error.details() or ''}".strip()
        except TimeoutError:
            return [], "DEADLINE_EXCEEDED: no answer"
