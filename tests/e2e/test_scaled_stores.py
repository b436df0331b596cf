"""The mesh on PostgreSQL and Redis, as it runs scaled out: the same answers, and input that
PostgreSQL refuses (NUL characters) is refused before it gets there."""

from __future__ import annotations

from tests.e2e.conftest import PASSWORD, Mesh, new_email, register_and_login


def test_the_journey_works_on_postgres_and_redis(mesh_scaled: Mesh):
    with mesh_scaled.client() as api:
        register_and_login(api)
        assert api.get("/v1/me").status_code == 200
        created = api.post(
            "/v1/credentials",
            json={
                "name": "CRM",
                "kind": "api_key",
                "provider": "crm",
                "secret": {"key": "sk_scaled_0123456789", "header": "X-Api-Key"},
            },
        )
        assert created.status_code == 201
        assert api.get("/v1/credentials").json()["items"][0]["id"] == created.json()["id"]
        assert api.get("/readyz").json()["upstreams"] == {
            "identity": "SERVING",
            "vault": "SERVING",
            "runner": "SERVING",
        }


def test_nul_characters_are_refused_not_a_500(mesh_scaled: Mesh):
    with mesh_scaled.client() as api:
        address = register_and_login(api)
        for path, body in (
            ("/v1/accounts", {"email": "nul\u0000@example.com", "password": PASSWORD}),
            ("/v1/sessions", {"email": "nul\u0000@example.com", "password": PASSWORD}),
            ("/v1/password-resets", {"email": "nul\u0000@example.com"}),
            (
                "/v1/credentials",
                {
                    "name": "a\u0000b",
                    "kind": "login",
                    "provider": "p",
                    "secret": {"username": "u", "password": "p"},
                },
            ),
        ):
            response = api.post(path, json=body)
            assert response.status_code == 422, (path, response.text)
        assert api.get("/v1/credentials/%00").status_code == 422
        plan = api.put("/v1/me/plan", json={"plan": "pro", "billing_name": "x\u0000"})
        assert plan.status_code == 422
        assert api.get("/v1/me").json()["email"] == address


def test_lockout_counters_live_in_redis(mesh_scaled: Mesh, redis_server: str):
    import redis

    with mesh_scaled.client() as api:
        address = new_email("redis-lock")
        api.post("/v1/accounts", json={"email": address, "password": PASSWORD})
        wrong = {"email": address, "password": "not the password at all"}
        headers = {"X-Forwarded-For": "198.51.100.77"}
        codes = [
            api.post("/v1/sessions", json=wrong, headers=headers).status_code for _ in range(11)
        ]
        assert codes == [401] * 10 + [429]
    keys = redis.Redis.from_url(redis_server).keys("leadmesh:identity:pair:*")
    assert keys and not any(address.encode() in key for key in keys)
