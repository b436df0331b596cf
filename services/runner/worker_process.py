"""`python -m services.runner.worker_process [--count N]`: delivery workers without the API, for
scaling out (`leadmesh runner-worker`). Several such processes may share one database or Redis."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from services.kit.config import settings_or_exit
from services.kit.logs import setup_logging
from services.kit.telemetry import setup_telemetry
from services.runner.server import run_workers
from services.runner.settings import RunnerSettings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="leadmesh runner-worker")
    parser.add_argument("--count", type=int, default=1, help="workers in this process")
    args = parser.parse_args(argv)
    settings = settings_or_exit(RunnerSettings)
    setup_logging("runner-worker", settings.mesh.log_level)
    provider = setup_telemetry("runner-worker", settings.mesh)

    async def serve() -> None:
        if settings.mesh.redis():
            from opentelemetry.instrumentation.redis import RedisInstrumentor

            RedisInstrumentor().instrument()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_workers(settings, max(1, args.count), stop)

    try:
        asyncio.run(serve())
    finally:
        provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
