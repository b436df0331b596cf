"""`python -m services.<name> [serve|migrate]`: the one entry point every gRPC service has."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from services.kit.config import settings_or_exit
from services.kit.db import private_umask
from services.kit.grpcserver import RunningService, serve_forever
from services.kit.logs import setup_logging
from services.kit.telemetry import setup_telemetry

log = logging.getLogger("leadmesh.service")


def service_main(
    argv: list[str],
    *,
    name: str,
    settings_class: type[Any],
    start: Callable[[Any], Awaitable[RunningService]],
    migrate_database: Callable[[Any], None],
    describe: Callable[[RunningService], dict[str, Any]],
) -> int:
    """Parses the command, sets up logs and traces, and serves until SIGTERM/SIGINT;
    `describe` gives the fields of the "ready" log line."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    private_umask()
    settings = settings_or_exit(settings_class)
    setup_logging(name, settings.mesh.log_level)
    if args.command == "migrate":
        migrate_database(settings)
        return 0

    async def serve() -> None:
        if settings.mesh.redis():
            from opentelemetry.instrumentation.redis import RedisInstrumentor

            RedisInstrumentor().instrument()
        service = await start(settings)
        # Everything built so far lives as long as the process: kept out of the collector's
        # sight, so its full collections stop walking every module, engine and stub each time.
        gc.collect()
        gc.freeze()
        log.info(f"{name} ready", extra=describe(service))
        await serve_forever(service.running, on_stop=service.parts.close)

    provider = setup_telemetry(name, settings.mesh)
    try:
        asyncio.run(serve())
    finally:
        provider.shutdown()
    return 0
