"""Asking a running process whether it serves: gRPC health over mTLS (as `operator`), or the
gateway's /healthz and /readyz over HTTPS."""

from __future__ import annotations

import ssl

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.settings import GatewaySettings
from services.kit.config import MeshSettings
from services.kit.pki import load_mesh_certificate


def operator_channel(mesh: MeshSettings, service: str) -> tuple[grpc.Channel, tuple]:
    """A blocking channel to `service` with the operator's certificate, and the metadata every
    call on it carries (the caller's name, only in the plaintext development mode)."""
    target = mesh.addr(service)
    if mesh.insecure_internal:
        return grpc.insecure_channel(target), (("x-leadmesh-insecure-caller", "operator"),)
    cert = load_mesh_certificate(mesh.pki_dir, "operator")
    credentials = grpc.ssl_channel_credentials(cert.ca_pem, cert.key_pem, cert.cert_pem)
    options = [("grpc.ssl_target_name_override", service)]
    return grpc.secure_channel(target, credentials, options=options), ()


def grpc_health(mesh: MeshSettings, service: str, timeout: float = 2.0) -> str:
    """SERVING, NOT_SERVING, or the status code of a failed check (UNAVAILABLE when down)."""
    channel, metadata = operator_channel(mesh, service)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def gateway_client(settings: GatewaySettings, timeout: float = 2.0) -> httpx.Client:
    """A client that trusts the gateway's certificate (the generated one on one machine)."""
    cert, _ = settings.certificate_paths()
    context = ssl.create_default_context(cafile=str(cert)) if cert.exists() else True
    base = f"https://127.0.0.1:{settings.https_port}"
    if settings.tls_cert:  # a real certificate names the public host, not 127.0.0.1
        base = settings.mesh.public_url.rstrip("/")
    return httpx.Client(base_url=base, verify=context, timeout=timeout)


def gateway_health(settings: GatewaySettings, path: str = "/healthz") -> tuple[int, dict]:
    try:
        with gateway_client(settings) as client:
            response = client.get(path)
    except httpx.HTTPError as error:
        return 0, {"error": type(error).__name__}
    return response.status_code, response.json()
