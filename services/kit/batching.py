"""Group commit: concurrent callers' items written in one transaction instead of one each.

`submit(item)` returns once the batch holding the item is written (durable), with that item's
result; if the write fails, every caller of that batch gets the error, so nothing accepted is
silently lost. Batches form by themselves: while one is being written, the next one gathers.

Traces: a batch is written in its first caller's trace (its database spans nest there), and every
caller's span gets an event `name` when its item is committed, with the batch's size — no span of
its own per batch, which on a busy path would cost more than the write. The flusher itself runs
in an empty context: otherwise it would carry the trace of whichever request happened to start
it, and every batch it writes would land in that one trace.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[Sequence[R] | None]],
        *,
        name: str,
        max_batch: int = 500,
    ) -> None:
        self._write = write
        self._name = name
        self._max = max_batch
        self._pending: list[tuple[T, asyncio.Future, Span]] = []
        self._flusher: asyncio.Task | None = None

    async def submit(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future, trace.get_current_span()))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), context=contextvars.Context())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            try:
                with trace.use_span(
                    batch[0][2], record_exception=False, set_status_on_exception=False
                ):
                    results = await self._write([item for item, _, _ in batch])
            except BaseException as error:
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
                continue
            committed = {"leadmesh.batch.size": len(batch)}
            for index, (_, future, span) in enumerate(batch):
                if span.is_recording():
                    span.add_event(self._name, committed)
                if not future.done():
                    future.set_result(results[index] if results is not None else None)

    async def close(self) -> None:
        """Waits for what was submitted to be written."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
