"""Group commit: concurrent callers share one write, each hears of its own item, a failed write
fails every caller of its batch, and every trace leads to the write that made its item durable."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.kit.batching import GroupCommit


@pytest.fixture
def traced():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


async def test_concurrent_items_share_a_write_and_get_their_own_results():
    batches: list[list[int]] = []

    async def write(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)
        return [item * 10 for item in items]

    commits: GroupCommit[int, int] = GroupCommit(write, name="test write")
    results = await asyncio.gather(*(commits.submit(n) for n in range(20)))
    assert results == [n * 10 for n in range(20)]
    assert sum(len(b) for b in batches) == 20 and len(batches) <= 2


async def test_a_failed_write_fails_every_caller_of_its_batch_and_only_them():
    async def write(items: list[str]) -> None:
        if "bad" in items:
            raise RuntimeError("disk full")
        await asyncio.sleep(0)

    commits: GroupCommit[str, None] = GroupCommit(write, name="test write")
    outcomes = await asyncio.gather(
        commits.submit("a"), commits.submit("bad"), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert await commits.submit("c") is None  # the next batch is written as usual


async def test_each_write_lands_in_its_callers_trace_not_in_the_first_ever(traced):
    tracer, exporter = traced

    async def write(items: list[str]) -> None:
        with tracer.start_as_current_span("INSERT"):
            await asyncio.sleep(0.01)

    commits: GroupCommit[str, None] = GroupCommit(write, name="test write")

    async def request(name: str) -> None:
        with tracer.start_as_current_span(name):
            await commits.submit(name)

    # A busy flusher: the second burst arrives while the first is being written.
    first = asyncio.create_task(request("first"))
    await asyncio.sleep(0.001)
    await asyncio.gather(request("second"), request("third"))
    await first
    spans = {s.name: s for s in exporter.get_finished_spans() if s.name != "INSERT"}
    inserts = [s for s in exporter.get_finished_spans() if s.name == "INSERT"]
    assert len(inserts) == 2
    parents = {s.parent.span_id for s in inserts}
    assert parents == {spans["first"].context.span_id, spans["second"].context.span_id}
    for span in spans.values():  # every caller's span says when its item was committed
        events = [e for e in span.events if e.name == "test write"]
        assert len(events) == 1 and events[0].attributes["leadmesh.batch.size"] >= 1
    assert len({s.context.trace_id for s in spans.values()}) == 3
