"""Group commit: concurrent callers' items written in one transaction instead of one each.

`submit(item)` returns once the batch holding the item is written (durable), with that item's
result; if the write fails, every caller of that batch gets the error, so nothing accepted is
silently lost. Batches form by themselves: while one is being written, the next one gathers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[Sequence[R] | None]],
        *,
        max_batch: int = 500,
    ) -> None:
        self._write = write
        self._max = max_batch
        self._pending: list[tuple[T, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def submit(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            try:
                results = await self._write([item for item, _ in batch])
            except BaseException as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
                continue
            for index, (_, future) in enumerate(batch):
                if not future.done():
                    future.set_result(results[index] if results is not None else None)

    async def close(self) -> None:
        """Waits for what was submitted to be written."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
