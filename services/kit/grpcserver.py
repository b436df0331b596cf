"""The one way a service serves gRPC: mTLS, health, reflection, caller checks, errors, spans and
the RPC metrics.

`start_server` binds (port 0 in tests) and returns the running server with its bound port;
`serve_forever` runs until SIGTERM/SIGINT and stops gracefully: health turns NOT_SERVING, new calls
are refused, in-flight calls finish within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from services.kit import callers
from services.kit.config import MeshSettings
from services.kit.errors import DomainError, PermissionDenied, to_grpc_status
from services.kit.metrics import histogram
from services.kit.pki import load_mesh_certificate

log = logging.getLogger("leadmesh.grpc")

# {full method name: mesh names allowed to call it}; a method not listed is refused to everyone.
AllowedCallers = Mapping[str, frozenset[str]]


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Checks the caller's certificate against the method's table, maps domain errors to status."""

    def __init__(self, allowed: AllowedCallers, insecure: bool) -> None:
        self._allowed = allowed
        self._insecure = insecure

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return handler
        if handler.unary_unary is None:
            # Streaming: the open ones (health Watch, reflection), and server streams our
            # contracts list in the caller table (exports, progress); any other is refused.
            if details.method.startswith(callers.OPEN_METHOD_PREFIXES):
                return handler
            if handler.unary_stream is not None and details.method in self._allowed:
                return self._guarded_stream(handler, details.method)
            return _refused_stream(handler, details.method)
        behavior, method = handler.unary_unary, details.method

        async def guarded(request, context):
            async with self._checked(method, context):
                return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guarded_stream(self, handler, method: str):
        """A server stream under the same checks and error mapping as a unary call."""
        behavior = handler.unary_stream

        async def guarded(request, context):
            async with self._checked(method, context) as logged:
                async for response in behavior(request, context):
                    logged["messages"] = logged.get("messages", 0) + 1
                    yield response

        return grpc.unary_stream_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @contextlib.asynccontextmanager
    async def _checked(self, method: str, context) -> AsyncIterator[dict[str, object]]:
        """The caller vetted against the method's table for the body of the call; domain errors
        mapped to their status, anything else INTERNAL; one log line per call (`logged` takes
        what the body adds to it)."""
        started, outcome, peer = time.perf_counter(), "OK", None
        logged: dict[str, object] = {}
        try:
            peer = callers.peer_name(context, self._insecure)
            self._authorize(method, peer)
            callers.check_user_context(context, peer)
            vetted = callers.vet_caller(peer)  # type: ignore[arg-type] - _authorize: not None
            try:
                yield logged
            finally:
                callers.forget_caller(vetted)
        except DomainError as error:
            outcome = error.code.name
            status = to_grpc_status(error)
            await context.abort(status.code, status.details, status.trailing_metadata)
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "CANCELLED"
            raise
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                outcome = _aborted_code(context)
                raise
            outcome = "INTERNAL"
            log.exception("unhandled error", extra={"rpc_method": method})
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            _record_rpc(method, outcome, time.perf_counter() - started)
            log.info(
                "rpc",
                extra={
                    "rpc_method": method,
                    "peer": peer,
                    "code": outcome,
                    **logged,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )

    def _authorize(self, method: str, peer: str | None) -> None:
        if peer is None:
            raise PermissionDenied("CALLER_UNKNOWN", "the caller presented no mesh identity")
        if method.startswith(callers.OPEN_METHOD_PREFIXES):
            return
        if peer not in self._allowed.get(method, frozenset()):
            raise PermissionDenied(
                "CALLER_NOT_ALLOWED", f"{peer} may not call {method.rsplit('/', 1)[-1]}"
            )


# rpc.server.duration as the RPC semantic conventions name it; the labels are the method of a
# handler that exists (an unknown method never reaches here) and its status: a bounded set.
_rpc_duration = histogram("rpc.server.duration")


def _record_rpc(method: str, outcome: str, seconds: float) -> None:
    service, _, name = method.lstrip("/").rpartition("/")
    code = grpc.StatusCode[outcome].value[0] if outcome in grpc.StatusCode.__members__ else 2
    _rpc_duration.record(
        seconds * 1000,
        {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "rpc.grpc.status_code": code,
        },
    )


def _aborted_code(context) -> str:
    """The status a servicer aborted with (context.abort), by name."""
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _refused_stream(handler, method: str):
    message = f"{method.rsplit('/', 1)[-1]} is a streaming RPC outside the caller table"

    async def refuse(_request, context):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

    async def refuse_stream(_request, context):  # responses are streamed: an async generator
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        yield  # never reached

    if handler.unary_stream is not None:
        maker, behavior = grpc.unary_stream_rpc_method_handler, refuse_stream
    elif handler.stream_unary is not None:
        maker, behavior = grpc.stream_unary_rpc_method_handler, refuse
    else:
        maker, behavior = grpc.stream_stream_rpc_method_handler, refuse_stream
    return maker(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


# Streams our contracts do not have but the open services do; OpenTelemetry's aio interceptor
# breaks on servicers that stream with context.write (opentelemetry-python-contrib#3066), so they
# go untraced.
_UNTRACED = ("/grpc.health.v1.Health/Watch", "/grpc.reflection.")


class TracingExceptStreams(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._inner = aio_server_interceptor()

    async def intercept_service(self, continuation, details):
        if details.method.startswith(_UNTRACED):
            return await continuation(details)
        return await self._inner.intercept_service(continuation, details)


# What `leadmesh status` shows as the process's version: the package it runs, which may differ from
# the operator's own after an upgrade that restarted nothing.
VERSION_KEY = "leadmesh-version"


def package_version() -> str:
    try:
        return importlib.metadata.version("leadmesh")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class VersionedHealth(health.aio.HealthServicer):
    """The library's health servicer; its Check answer names this process's version in the
    initial metadata (`leadmesh-version`)."""

    def __init__(self) -> None:
        super().__init__()
        self._version = ((VERSION_KEY, package_version()),)

    async def Check(self, request, context):  # noqa: N802 - gRPC method name
        await context.send_initial_metadata(self._version)
        return await super().Check(request, context)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


class _Closable(Protocol):
    async def close(self) -> None: ...


PartsT = TypeVar("PartsT", bound=_Closable)


@dataclass
class RunningService(Generic[PartsT]):
    """A service's parts and the server serving them; stopping stops both, in that order."""

    parts: PartsT
    running: RunningServer

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.running.stop(grace)
        await self.parts.close()


async def start_server(
    *,
    name: str,
    mesh: MeshSettings,
    port: int,
    register: Callable[[grpc.aio.Server], None],
    service_names: list[str],
    allowed: AllowedCallers,
) -> RunningServer:
    server = grpc.aio.server(
        interceptors=[TracingExceptStreams(), AccessInterceptor(allowed, mesh.insecure_internal)],
        options=[("grpc.so_reuseport", 0)],
    )
    register(server)
    health_servicer = VersionedHealth()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{mesh.host}:{port}"
    if mesh.insecure_internal:
        log.warning("internal traffic is PLAINTEXT (LEADMESH_INSECURE_INTERNAL=1)")
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, server_credentials(mesh, name))
    if bound == 0:
        raise OSError(f"{name}: could not bind {address}")
    await server.start()
    for service in ("", *service_names):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("listening", extra={"service": name, "port": bound})
    return RunningServer(server, bound, health_servicer)


def server_credentials(mesh: MeshSettings, name: str) -> grpc.ServerCredentials:
    cert = load_mesh_certificate(mesh.pki_dir, name)
    return grpc.ssl_server_credentials(
        [(cert.key_pem, cert.cert_pem)], root_certificates=cert.ca_pem, require_client_auth=True
    )


async def serve_forever(
    running: RunningServer,
    *,
    grace: float = 5.0,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping", extra={"grace_s": grace})
    await running.stop(grace)
    if on_stop is not None:
        await on_stop()
