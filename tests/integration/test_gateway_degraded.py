"""The gateway when an upstream is down or slow: a clear 503 problem, never a 500 or a hang."""

from __future__ import annotations

import httpx

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.conftest import free_port


async def test_an_unreachable_identity_is_a_503_problem_and_not_ready(mesh):
    nowhere = mesh.model_copy(update={"identity_addr": f"127.0.0.1:{free_port()}"})
    app = create_app(GatewaySettings(mesh=nowhere, readiness_timeout=0.5))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://gw") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["upstreams"] == {"identity": "UNAVAILABLE"}
            assert (await client.get("/healthz")).status_code == 200

            login = await client.post(
                "/v1/sessions", json={"email": "a@example.com", "password": "whatever it is"}
            )
            assert login.status_code == 503
            assert login.headers["content-type"] == "application/problem+json"
            assert login.json()["code"] == "UNAVAILABLE"
            assert "a@example.com" not in login.text
