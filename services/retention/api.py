"""The gRPC face of retention: the operator's `RetentionService` (status, purges, ledger, erasure
cases, the sealing migration), and retention's own `RetentionParticipant`. Who may call what is
`ALLOWED_CALLERS`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
from leadmesh.retention.v1 import retention_pb2 as pb
from leadmesh.retention.v1 import retention_pb2_grpc

from services.kit import retention as kit_retention
from services.kit.clock import Clock, as_utc
from services.kit.errors import InvalidArgument, NotFound, Unavailable
from services.kit.timestamps import put_timestamp
from services.retention.compliance import Compliance
from services.retention.erasure import Erasures
from services.retention.ledger import Ledger, time_cursor, time_token
from services.retention.participants import Participants, max_age
from services.retention.purges import Progress, Purges
from services.retention.sealing import Sealing, SealProgress
from services.retention.store import Store

SERVICE = pb.DESCRIPTOR.services_by_name["RetentionService"].full_name
_OPERATOR_METHODS = (
    "GetStatus",
    "RunPurges",
    "ListLedger",
    "ListErasures",
    "ProcessErasures",
    "GetErasure",
    "RunSealing",
)
ALLOWED_CALLERS: dict[str, frozenset[str]] = {
    **{f"/{SERVICE}/{method}": frozenset({"operator"}) for method in _OPERATOR_METHODS},
    **kit_retention.ALLOWED_CALLERS,
}
DEFAULT_PAGE, MAX_PAGE = 100, 1000

Context = grpc.aio.ServicerContext


class RetentionApi(retention_pb2_grpc.RetentionServiceServicer):
    def __init__(
        self,
        participants: Participants,
        purges: Purges,
        ledger: Ledger,
        compliance: Compliance,
        erasures: Erasures,
        store: Store,
        clock: Clock,
        sealing: Sealing,
    ) -> None:
        self.sealing = sealing
        self.participants = participants
        self.purges = purges
        self.ledger = ledger
        self.compliance = compliance
        self.erasures = erasures
        self.store = store
        self.clock = clock

    async def GetStatus(  # noqa: N802 - gRPC method name
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        as_of = _time(request, "as_of") or self.clock.now()
        status = await self.compliance.status(as_of)
        response = pb.GetStatusResponse()
        put_timestamp(response.as_of, as_of)
        for item in status.categories:
            entry = response.categories.add(
                participant=item.participant,
                state=item.state,
                error=item.error,
                oldest_epoch_day=item.oldest_epoch_day,
            )
            entry.policy.CopyFrom(item.policy)
            if item.last_purge_time is not None:
                put_timestamp(entry.last_purge_time, item.last_purge_time)
        for case in status.at_risk:
            erasure_pb(case, response.erasures_at_risk.add(), at_risk=True, full=False)
        return response

    async def RunPurges(  # noqa: N802 - gRPC method name
        self, request: pb.RunPurgesRequest, context: Context
    ) -> AsyncIterator[pb.PurgeProgress]:
        as_of = _time(request, "as_of") or self.clock.now()
        chosen = await self._chosen(request, as_of)
        queue: asyncio.Queue[Progress | None] = asyncio.Queue()

        async def report(progress: Progress) -> None:
            await queue.put(progress)

        async def run_all() -> None:
            try:
                for participant, category, age, sealed in chosen:
                    await self.purges.run(
                        participant,
                        category,
                        age,
                        as_of=as_of,
                        trigger="operator",
                        dry_run=request.dry_run,
                        progress=report,
                        sealed=sealed,
                    )
            finally:
                await queue.put(None)

        async with contextlib.aclosing(_streamed(run_all, queue)) as stream:
            async for progress in stream:
                yield pb.PurgeProgress(**progress.__dict__)

    async def RunSealing(  # noqa: N802 - gRPC method name
        self, request: pb.RunSealingRequest, context: Context
    ) -> AsyncIterator[pb.SealingProgress]:
        chosen = await self.sealing.chosen(request.participant, request.category)
        queue: asyncio.Queue[SealProgress | None] = asyncio.Queue()

        async def report(progress: SealProgress) -> None:
            await queue.put(progress)

        async def run_all() -> None:
            try:
                await self.sealing.run(chosen, report, wait=True)
            finally:
                await queue.put(None)

        async with contextlib.aclosing(_streamed(run_all, queue)) as stream:
            async for progress in stream:
                yield pb.SealingProgress(**progress.__dict__)

    async def _chosen(
        self, request: pb.RunPurgesRequest, as_of: datetime
    ) -> list[tuple[str, str, Any, bool]]:
        names = self.participants.names()
        if request.participant and request.participant not in names:
            raise InvalidArgument(
                "UNKNOWN_PARTICIPANT",
                f"participants are: {', '.join(names)}",
                field="participant",
            )
        chosen = []
        for name in [request.participant] if request.participant else names:
            try:
                policies = await self.participants[name].list_policies(as_of)
            except grpc.aio.AioRpcError as error:
                if request.participant:
                    raise Unavailable(
                        "PARTICIPANT_UNREACHABLE", f"{name} does not answer: {error.code().name}"
                    ) from None
                continue  # GetStatus shows it UNREACHABLE
            for policy in policies:
                if request.category and policy.category != request.category:
                    continue
                if max_age(policy) is not None:
                    chosen.append((name, policy.category, max_age(policy), policy.sealed))
        if request.category and not chosen:
            raise NotFound("UNKNOWN_CATEGORY", f"no purgeable category {request.category!r}")
        return chosen

    async def ListLedger(  # noqa: N802 - gRPC method name
        self, request: pb.ListLedgerRequest, context: Context
    ) -> pb.ListLedgerResponse:
        rows, token = await self.ledger.page(
            request.page_size, request.page_token, request.participant, request.category
        )
        response = pb.ListLedgerResponse(next_page_token=token)
        for row in rows:
            entry = response.entries.add(
                id=row["id"],
                participant=row["participant"],
                category=row["category"],
                rows_deleted=row["rows_deleted"],
                outcome=row["outcome"],
                error=row["error"],
                trigger=row["trigger"],
            )
            for name in ("cutoff", "start_time", "end_time"):
                put_timestamp(getattr(entry, name), row[name])
        return response

    async def ListErasures(  # noqa: N802 - gRPC method name
        self, request: pb.ListErasuresRequest, context: Context
    ) -> pb.ListErasuresResponse:
        size = min(max(request.page_size or DEFAULT_PAGE, 1), MAX_PAGE)
        after = time_cursor(request.page_token, "cases") if request.page_token else None
        async with self.store.read() as tx:
            rows = await tx.cases_page(after, size + 1)
        more, rows = len(rows) > size, rows[:size]
        response = pb.ListErasuresResponse()
        if more:
            response.next_page_token = time_token("cases", rows[-1]["open_time"], rows[-1]["id"])
        now = self.clock.now()
        for row in rows:
            erasure_pb(row, response.erasures.add(), self.erasures.at_risk(row, now), full=False)
        return response

    async def ProcessErasures(  # noqa: N802 - gRPC method name
        self, request: pb.ProcessErasuresRequest, context: Context
    ) -> pb.ListErasuresResponse:
        as_of = _time(request, "as_of")
        ran = await self.erasures.process(as_of)
        response = pb.ListErasuresResponse()
        now = as_of or self.clock.now()
        for case in ran:
            erasure_pb(case, response.erasures.add(), self.erasures.at_risk(case, now), full=False)
        return response

    async def GetErasure(  # noqa: N802 - gRPC method name
        self, request: pb.GetErasureRequest, context: Context
    ) -> pb.Erasure:
        async with self.store.read() as tx:
            case = await tx.case(request.id) if request.id else None
        if case is None:
            raise NotFound("ERASURE_NOT_FOUND", "no erasure case with this id")
        return erasure_pb(case, pb.Erasure(), self.erasures.at_risk(case, self.clock.now()))


def erasure_pb(
    case: dict[str, Any], into: pb.Erasure, at_risk: bool, *, full: bool = True
) -> pb.Erasure:
    """A case as the operator sees it: never the user id; the certificate only when `full`."""
    into.id = case["id"]
    into.subject_ref = case["subject_ref"]
    into.state = case["state"]
    into.at_risk = at_risk
    for name in ("request_time", "deadline", "execute_after"):
        put_timestamp(getattr(into, name), case[name])
    if case["state"] == "completed" and case.get("end_time") is not None:
        put_timestamp(into.complete_time, case["end_time"])
    for step in case["steps"]:
        message = into.steps.add(
            participant=step["participant"],
            state=step["state"],
            error=step["error"],
            tries=step["tries"],
        )
        if step["done_time"]:
            put_timestamp(message.done_time, as_utc(datetime.fromisoformat(step["done_time"])))
        for category in step["categories"]:
            message.categories.add(**category)
    if full and case.get("certificate"):
        into.certificate = case["certificate"]
    return into


async def _streamed(run_all, queue: asyncio.Queue) -> AsyncIterator[Any]:
    """What `run_all` puts on `queue` until its None; its errors, if any, fail the call. The
    caller going away cancels it: a started batch still commits or not, as a whole."""
    task = asyncio.create_task(run_all())
    try:
        while (progress := await queue.get()) is not None:
            yield progress
        await task
    finally:
        if not task.done():
            task.cancel()


def _time(message, name: str) -> datetime | None:
    return as_utc(getattr(message, name).ToDatetime()) if message.HasField(name) else None
