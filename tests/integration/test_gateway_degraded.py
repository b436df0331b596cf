"""The gateway when an upstream is down or slow: a clear 503 problem, never a 500 or a hang."""

from __future__ import annotations

import httpx

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.conftest import free_port


async def test_an_unreachable_identity_is_a_503_problem_and_not_ready(mesh):
    nowhere = mesh.model_copy(
        update={
            "identity_addr": f"127.0.0.1:{free_port()}",
            "vault_addr": f"127.0.0.1:{free_port()}",
            "runner_addr": f"127.0.0.1:{free_port()}",
        }
    )
    app = create_app(GatewaySettings(mesh=nowhere, readiness_timeout=0.5))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://gw") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["upstreams"] == dict.fromkeys(
                ("identity", "vault", "runner"), "UNAVAILABLE"
            )
            assert (await client.get("/healthz")).status_code == 200

            login = await client.post(
                "/v1/sessions", json={"email": "a@example.com", "password": "whatever it is"}
            )
            assert login.status_code == 503
            assert login.headers["content-type"] == "application/problem+json"
            assert login.json()["code"] == "UNAVAILABLE"
            assert "a@example.com" not in login.text


async def test_an_unexpected_error_is_a_500_problem_with_hsts_and_no_details(mesh):
    app = create_app(GatewaySettings(mesh=mesh))

    @app.get("/v1/boom")  # under /v1: other paths are the web app's
    async def boom() -> None:
        raise RuntimeError("secret internals: sk_live_do_not_show")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="https://gw") as client:
            response = await client.get("/v1/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "INTERNAL"
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert "sk_live" not in response.text
