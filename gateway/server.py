"""Serving the gateway: HTTPS (TLS 1.2+, HSTS) on one port, a redirect to it on another.

Both uvicorn servers share one event loop; signals are handled here, once, so that SIGINT or
SIGTERM stops both gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from urllib.parse import urlsplit

import uvicorn
from starlette.types import Receive, Scope, Send

from gateway.app import create_app
from gateway.settings import GatewaySettings
from services.kit.config import settings_or_exit
from services.kit.db import private_umask
from services.kit.logs import setup_logging
from services.kit.pki import ensure_self_signed
from services.kit.telemetry import setup_telemetry

log = logging.getLogger("leadmesh.gateway")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner."""

    def capture_signals(self):  # type: ignore[override]
        import contextlib

        return contextlib.nullcontext()


def redirect_app(public_url: str):
    """Answers every plain-HTTP request with a redirect to the same path on the HTTPS origin (the
    configured one, never the request's Host header)."""
    origin = public_url.rstrip("/")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        target = origin + scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        status = 301 if scope["method"] in ("GET", "HEAD") else 308
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"location", target.encode("latin-1")), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    return app


def https_config(settings: GatewaySettings) -> uvicorn.Config:
    cert, key = settings.certificate_paths()
    if not (settings.tls_cert and settings.tls_key):
        host = urlsplit(settings.mesh.public_url).hostname or "localhost"
        ensure_self_signed(cert, key, sorted({host, "localhost", "127.0.0.1", "::1"}))
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.https_port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    config.load()
    # TLS 1.2 or newer only; Python's defaults already drop the weak cipher suites.
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    return config


def redirect_config(settings: GatewaySettings) -> uvicorn.Config:
    config = uvicorn.Config(
        redirect_app(settings.mesh.public_url),
        host=settings.host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="off",
    )
    config.load()
    return config


async def serve(settings: GatewaySettings) -> None:
    servers = [_Server(https_config(settings))]
    if settings.http_port:
        servers.append(_Server(redirect_config(settings)))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    log.info(
        "listening",
        extra={"https_port": settings.https_port, "http_port": settings.http_port or None},
    )
    await asyncio.gather(*(server.serve() for server in servers))


def run() -> None:
    private_umask()  # the TLS key and anything else under var/ are the operator's alone
    settings = settings_or_exit(GatewaySettings)
    setup_logging("gateway", settings.mesh.log_level)
    provider = setup_telemetry("gateway", settings.mesh)
    try:
        asyncio.run(serve(settings))
    finally:
        provider.shutdown()
