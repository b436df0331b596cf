"""Client channels to other services: mTLS with this process's mesh certificate, a default deadline,
and client spans that carry the trace context to the server."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from services.kit import callers
from services.kit.config import MeshSettings
from services.kit.pki import load_mesh_certificate


class DefaultDeadline(grpc.aio.UnaryUnaryClientInterceptor):
    """Every call gets a deadline, so a stuck peer never holds a request forever."""

    def __init__(self, timeout: float, extra_metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._timeout = timeout
        self._extra = extra_metadata

    async def intercept_unary_unary(self, continuation, details, request):
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._extra)
        details = grpc.aio.ClientCallDetails(
            details.method,
            details.timeout if details.timeout is not None else self._timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )
        return await continuation(details, request)


class StreamCallerName(grpc.aio.UnaryStreamClientInterceptor):
    """Server streams carry the same caller metadata as unary calls, but no default deadline: an
    export or a purge's progress lasts as long as its work (callers give their own)."""

    def __init__(self, extra_metadata: tuple[tuple[str, str], ...]) -> None:
        self._extra = extra_metadata

    async def intercept_unary_stream(self, continuation, details, request):
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._extra)
        details = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return await continuation(details, request)


def open_channel(mesh: MeshSettings, service: str, *, caller: str) -> grpc.aio.Channel:
    """A channel from `caller` (a mesh name) to `service`, dialled at `mesh.addr(service)`."""
    target = mesh.addr(service)
    extra: tuple[tuple[str, str], ...] = ()
    if mesh.insecure_internal:
        extra = ((callers.INSECURE_CALLER_KEY, caller),)
    interceptors = [
        *aio_client_interceptors(),
        DefaultDeadline(mesh.rpc_timeout, extra),
        StreamCallerName(extra),
    ]
    # A restarted peer is dialled again within seconds (gRPC's default backoff grows to 2 min).
    backoff = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 3000)]
    if mesh.insecure_internal:
        return grpc.aio.insecure_channel(target, options=backoff, interceptors=interceptors)
    cert = load_mesh_certificate(mesh.pki_dir, caller)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=cert.ca_pem, private_key=cert.key_pem, certificate_chain=cert.cert_pem
    )
    # Certificates name `service` (and localhost) whatever address it is dialled at.
    options = [("grpc.ssl_target_name_override", service), *backoff]
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
