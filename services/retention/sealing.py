"""The sealing migration: rows written before sealing existed are sealed by their participant's
`Seal`, called for every sealed category (Policy.sealed, from ListPolicies) until none is left in
plaintext or a call seals nothing more, with a progress after each call.

Each call is a few short transactions on the participant's side, so a run stopped at any point
(Ctrl-C, a crash of either side) loses nothing and the next run goes on where it stopped. Each
call is made under the lease `seal:<participant>:<category>` (the purges' kind): two replicas, or
the scheduled run and an operator's, never seal one category at once; the operator's waits for a
call in flight, the scheduled one leaves the category to whoever holds it. An error of one
category is reported and the others go on. Never sees a value: the participant answers counts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from services.kit.clock import Clock
from services.kit.errors import InvalidArgument, NotFound
from services.retention.leases import Leases
from services.retention.participants import Participants

log = logging.getLogger("leadmesh.retention")

# The operator's run waits this long for a call of another run to end.
OPERATOR_WAIT_SECONDS = 120.0


@dataclass(frozen=True)
class SealProgress:
    participant: str
    category: str
    # Sealed so far by this run, and still in plaintext after its last call.
    rows_sealed: int
    rows_plaintext: int
    done: bool = False
    error: str = ""


OnProgress = Callable[[SealProgress], Awaitable[None]]


def lease_name(participant: str, category: str) -> str:
    return f"seal:{participant}:{category}"


class Sealing:
    def __init__(
        self, participants: Participants, leases: Leases, clock: Clock, batch_size: int = 0
    ) -> None:
        self.participants = participants
        self.batch_size = batch_size
        self.leases = leases
        self.clock = clock
        # Set when the service stops: a run ends after its current call.
        self.stopping = False

    async def chosen(self, participant: str = "", category: str = "") -> list[SealProgress]:
        """What a run seals: a (participant, category) per sealed category, and a `done` entry
        with the error for each participant that did not list its policies. Unknown names are
        refused before anything runs."""
        names = self.participants.names()
        if participant and participant not in names:
            raise InvalidArgument(
                "UNKNOWN_PARTICIPANT", f"participants are: {', '.join(names)}", field="participant"
            )
        chosen: list[SealProgress] = []
        for name in [participant] if participant else names:
            try:
                policies = await self.participants[name].list_policies(self.clock.now())
            except grpc.aio.AioRpcError as error:
                chosen.append(SealProgress(name, "", 0, 0, True, _rpc_error(error)))
                continue
            chosen.extend(
                SealProgress(name, p.category, 0, 0)
                for p in policies
                if p.sealed and (not category or p.category == category)
            )
        if category and not any(c.category for c in chosen):
            raise NotFound("UNKNOWN_CATEGORY", f"no sealed category {category!r}")
        return chosen

    async def run(
        self, chosen: list[SealProgress], progress: OnProgress | None = None, *, wait: bool
    ) -> list[SealProgress]:
        """Every chosen category sealed in turn; each one's last progress. `wait`: the
        operator's run waits for a call another run has in flight; without it (the scheduled
        run) a category another run is sealing is left to it."""
        finals = []
        for item in chosen:
            if self.stopping:
                break
            if item.done:  # its participant did not answer
                final = item
                if progress is not None:
                    await progress(final)
            else:
                final = await self._category(item.participant, item.category, progress, wait)
            finals.append(final)
        return finals

    async def _category(
        self, participant: str, category: str, progress: OnProgress | None, wait: bool
    ) -> SealProgress:
        client = self.participants[participant]
        sealed = left = 0  # `left`: as the last call answered
        while True:
            try:
                reply = await self._call(client, participant, category, wait)
            except grpc.aio.AioRpcError as error:
                current = SealProgress(participant, category, sealed, left, True, _rpc_error(error))
            except Exception as error:  # a lease store down; never a row's content
                log.exception("sealing failed", extra={"participant": participant})
                failure = type(error).__name__
                current = SealProgress(participant, category, sealed, left, True, failure)
            else:
                if reply is None:  # another run holds the category: it seals it
                    return SealProgress(participant, category, sealed, left, True)
                sealed += reply.rows_sealed
                left = reply.rows_plaintext
                finished = left <= 0 or reply.rows_sealed <= 0 or self.stopping
                current = SealProgress(participant, category, sealed, left, finished)
            if progress is not None:
                await progress(current)
            if current.done:
                log.info(
                    "sealing run",
                    extra={
                        "participant": participant,
                        "category": category,
                        "rows_sealed": sealed,
                        "rows_plaintext": current.rows_plaintext,
                        "outcome": "failed" if current.error else "ok",
                    },
                )
                return current

    async def _call(self, client, participant: str, category: str, wait: bool):
        name = lease_name(participant, category)
        if wait:
            async with self.leases.hold(name, OPERATOR_WAIT_SECONDS):
                return await client.seal(category, self.batch_size)
        async with self.leases.try_hold(name) as held:
            return await client.seal(category, self.batch_size) if held else None

    async def scheduled(self) -> None:
        """The run at start (and every `sealing_interval_seconds`): every sealed category; a
        participant down is tried again at the next one."""
        chosen = await self.chosen()
        await self.run(chosen, wait=False)


def _rpc_error(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details() or ''}".strip()
