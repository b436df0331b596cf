"""Where a delivery's request is rendered: on the event loop while it is small, on the
renderer's own threads once it is not.

The loop that runs deliveries also serves ingest (``IngestWebhook``) for every user, so a render
must not hold it for long. A render starts inline under a small budget (``INLINE_BYTES``,
``INLINE_STEPS``: well under a millisecond); one that runs out starts again on a thread under the
full budget. The threads are the renderer's own, not the loop's default executor, which resolves
every delivery's host name (``getaddrinfo``): large renders must never queue DNS behind them.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.runner.delivery import Compiled, Prepared, prepare
from services.runner.expressions import Budget, LargeRender

THREADS = 1


class Renderer:
    def __init__(self, max_bytes: int, name: str = "render") -> None:
        self.max_bytes = max_bytes
        self._threads = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix=name)

    async def prepare(
        self,
        action: dict[str, Any],
        compiled: Compiled,
        event: dict[str, Any],
        run_id: str,
        credential: tuple[str, dict[str, Any]] | None,
    ) -> Prepared:
        """``delivery.prepare`` within ``max_bytes``: RenderError, RenderTooLarge."""
        try:
            return prepare(
                action, compiled, event, run_id, credential, Budget(self.max_bytes, inline=True)
            )
        except LargeRender:
            pass
        return await asyncio.get_running_loop().run_in_executor(
            self._threads,
            prepare,
            action,
            compiled,
            event,
            run_id,
            credential,
            Budget(self.max_bytes, pause=True),
        )

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
