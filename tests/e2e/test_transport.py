"""HTTPS as the policy promises: TLS 1.2 or newer only, HSTS everywhere, HTTP redirected."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import Mesh

HSTS = "max-age=31536000; includeSubDomains"


def test_hsts_on_every_https_response(api: httpx.Client):
    for response in (
        api.get("/healthz"),
        api.get("/v1/me"),  # a 401 problem
        api.get("/openapi.json"),
        api.post("/v1/accounts", content=b"nope", headers={"content-type": "application/json"}),
    ):
        assert response.headers["strict-transport-security"] == HSTS, response.url
        assert response.headers["x-content-type-options"] == "nosniff"


def test_plain_http_redirects_to_https(mesh_up: Mesh):
    with httpx.Client(base_url=mesh_up.http_url, follow_redirects=False) as plain:
        get = plain.get("/v1/me?x=1")
        assert get.status_code == 301
        assert get.headers["location"] == f"{mesh_up.base_url}/v1/me?x=1"
        post = plain.post("/v1/sessions", json={})
        assert post.status_code == 308
        assert post.headers["location"] == f"{mesh_up.base_url}/v1/sessions"
        evil = plain.get("/", headers={"host": "evil.example"})
        assert evil.headers["location"].startswith(mesh_up.base_url)


def _handshake(mesh: Mesh, version: ssl.TLSVersion, address: tuple[str, int] | None = None) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(mesh.tls_cert))
    context.minimum_version = version
    context.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer it; the server decides
    url = urlsplit(mesh.base_url)
    with socket.create_connection(address or (url.hostname, url.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=url.hostname) as tls:
            return tls.version()


@contextmanager
def _permissive_server(mesh: Mesh) -> Iterator[tuple[str, int]]:
    """A TLS server with the gateway's certificate that still speaks TLS 1.0 and 1.1: the
    control proving that this client can offer them, so a refusal is the gateway's."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(mesh.tls_cert, mesh.var_dir / "gateway" / "tls.key")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with suppress(OSError):
            connection, _ = listener.accept()
            with suppress(ssl.SSLError), context.wrap_socket(connection, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()
    finally:
        listener.close()
        thread.join(timeout=5)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_modern_tls_is_accepted(mesh_up: Mesh, version: ssl.TLSVersion):
    assert (
        _handshake(mesh_up, version) == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
    )


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_outdated_tls_is_refused(mesh_up: Mesh, version: ssl.TLSVersion):
    with _permissive_server(mesh_up) as control:
        assert (
            _handshake(mesh_up, version, control)
            == {"TLSv1": "TLSv1", "TLSv1_1": "TLSv1.1"}[version.name]
        )
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _handshake(mesh_up, version)


def test_health_and_readiness(api: httpx.Client):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["upstreams"] == {
        "identity": "SERVING",
        "vault": "SERVING",
        "runner": "SERVING",
    }


def test_openapi_and_docs_are_served(api: httpx.Client):
    schema = api.get("/openapi.json").json()
    assert "/v1/sessions" in schema["paths"]
    assert api.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "target", ["/v1/activity?connection_id=a%00b", "/v1/credentials/x%00y", "/hooks/t%00"]
)
def test_nul_in_the_path_or_query_is_a_422_problem(api: httpx.Client, target: str):
    response = api.request("POST" if target.startswith("/hooks") else "GET", target)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "INVALID_REQUEST"
