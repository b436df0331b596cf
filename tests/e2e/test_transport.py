"""HTTPS as the policy promises: TLS 1.2 or newer only, HSTS everywhere, HTTP redirected."""

from __future__ import annotations

import importlib.metadata
import re
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
    version = importlib.metadata.version("leadmesh")
    assert api.get("/healthz").json() == {"status": "ok", "version": version}
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


def _references(text: str) -> list[str]:
    return re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", text)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_everything_from_the_gateway(api: httpx.Client, page: str):
    """Offline and under a strict Content-Security-Policy: no CDN, no other site's favicon."""
    html = api.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    policy = html.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "http" not in policy and "unsafe-eval" not in policy
    references = _references(html.text)
    assert len(references) >= 2, html.text
    assert "<script>" not in html.text  # no inline script: the policy would refuse it
    for reference in references:
        assert reference.startswith("/") and not reference.startswith("//"), reference
        asset = api.get(reference)
        assert asset.status_code == 200, reference
        assert len(asset.content) > 100, reference
        if reference.endswith("swagger-init.js"):
            assert "/openapi.json" in asset.text and "validatorUrl: null" in asset.text


def test_openapi_declares_how_to_authenticate_and_each_operations_errors(api: httpx.Client):
    document = api.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["session"] == {**schemes["session"], "type": "apiKey", "in": "cookie",
                                  "name": "lm_session"}  # fmt: skip
    assert schemes["csrf"] == {**schemes["csrf"], "type": "apiKey", "in": "header",
                               "name": "X-CSRF-Token"}  # fmt: skip
    paths = document["paths"]
    assert paths["/v1/connections"]["post"]["security"] == [{"session": [], "csrf": []}]
    assert paths["/v1/me"]["get"]["security"] == [{"session": []}]
    assert "security" not in paths["/v1/sessions"]["post"]

    def errors(path: str, method: str) -> dict[str, str]:
        responses = paths[path][method]["responses"]
        for status, response in responses.items():
            if int(status) >= 400 and path != "/readyz":
                assert list(response["content"]) == ["application/problem+json"]
        return {s: r["description"] for s, r in responses.items() if int(s) >= 400}

    login = errors("/v1/sessions", "post")
    assert set(login) == {"400", "401", "403", "413", "422", "429", "503", "504"}
    assert "LOGIN_THROTTLED" in login["429"] and "INVALID_CREDENTIALS" in login["401"]
    assert "CSRF_TOKEN_INVALID" in login["403"] and "MALFORMED_JSON" in login["400"]
    # A read with no body and nothing to conflict with lists neither 400, 409 nor 413.
    assert set(errors("/v1/me", "get")) == {"401", "422", "503", "504"}
    connection = errors("/v1/connections/{connection_id}", "get")
    assert "CONNECTION_NOT_FOUND" in connection["404"] and "409" not in connection
    hook = errors("/hooks/{token}", "post")
    assert {"401", "404", "409", "410", "413", "429", "503"} <= set(hook)
    assert "RATE_LIMITED" in hook["429"] and "401" not in errors("/v1/accounts", "post")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PATCH", "/v1/me", "DELETE, GET"),
        ("PUT", "/v1/connections/c1", "DELETE, GET, PATCH"),
        ("DELETE", "/v1/connections", "GET, POST"),
        ("GET", "/hooks/t", "POST"),
    ],
)
def test_a_405_lists_every_method_the_path_takes(
    api: httpx.Client, method: str, path: str, allowed: str
):
    refused = api.request(method, path)
    assert refused.status_code == 405
    assert refused.headers["allow"] == allowed
    assert refused.json()["code"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize(
    "target", ["/v1/activity?connection_id=a%00b", "/v1/credentials/x%00y", "/hooks/t%00"]
)
def test_nul_in_the_path_or_query_is_a_422_problem(api: httpx.Client, target: str):
    response = api.request("POST" if target.startswith("/hooks") else "GET", target)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "INVALID_REQUEST"
