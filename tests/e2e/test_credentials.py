"""Credentials through the gateway: metadata only, ever; another user's are 404 everywhere."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import Mesh, register_and_login

API_KEY = {"key": "sk_live_e2e_canary_key_123456789", "header": "X-Api-Key"}
LOGIN = {"username": "crm-user@example.com", "password": "e2e-canary-login-password"}


def _create(client: httpx.Client, name: str, kind: str, secret: dict) -> dict:
    created = client.post(
        "/v1/credentials", json={"name": name, "kind": kind, "provider": "crm", "secret": secret}
    )
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/v1/credentials/{created.json()['id']}"
    return created.json()


def test_credentials_round_trip_without_ever_showing_the_secret(api: httpx.Client):
    register_and_login(api)
    key = _create(api, "CRM key", "api_key", API_KEY)
    login = _create(api, "CRM login", "login", LOGIN)
    assert key["hint"] == "…6789" and key["status"] == "active" and key["kind"] == "api_key"
    listed = api.get("/v1/credentials")
    assert [c["id"] for c in listed.json()["items"]] == [login["id"], key["id"]]
    renamed = api.patch(f"/v1/credentials/{key['id']}", json={"name": "Renamed"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Renamed"
    rekeyed = api.patch(
        f"/v1/credentials/{key['id']}",
        json={"secret": {"key": "sk_new_0000111122223333", "query": "k"}},
    )
    assert rekeyed.json()["hint"] == "…3333"
    every_body = "".join(
        r.text for r in (listed, renamed, rekeyed, api.get(f"/v1/credentials/{login['id']}"))
    )
    for value in (API_KEY["key"], LOGIN["password"], "sk_new_0000111122223333"):
        assert value not in every_body
    assert api.delete(f"/v1/credentials/{key['id']}").status_code == 204
    assert api.get(f"/v1/credentials/{key['id']}").status_code == 404


def test_bad_secrets_are_422_naming_the_field(api: httpx.Client):
    register_and_login(api)
    for body, code, field in (
        (
            {"name": "x", "kind": "api_key", "provider": "p", "secret": {"key": "abc"}},
            "INVALID_SECRET",
            "secret.header",
        ),
        (
            {"name": "x", "kind": "login", "provider": "p", "secret": {"username": "u"}},
            "INVALID_SECRET",
            "secret.password",
        ),
        ({"name": "x", "kind": "smtp", "provider": "p", "secret": {}}, "INVALID_REQUEST", "kind"),
    ):
        refused = api.post("/v1/credentials", json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == code
        assert refused.json()["errors"][0]["field"] == field


def test_a_secret_with_a_control_character_is_422_naming_the_field(api: httpx.Client):
    """A pasted newline would reach an HTTP header, whose client refuses it quoting the secret
    (into the run's error, notification and e-mail): refused when saved and when changed."""
    register_and_login(api)
    for kind, secret, field in (
        ("api_key", {"key": "sk_live_0123456789\n", "header": "X-Api-Key"}, "secret.key"),
        ("api_key", {"key": "sk_live_\r\n0123456789", "query": "api_key"}, "secret.key"),
        ("api_key", {"key": "sk_live_€0123456789", "header": "X-Api-Key"}, "secret.key"),
        ("oauth2", {"access_token": "at_0123456789\x7f"}, "secret.access_token"),
        ("login", {"username": "ann", "password": "pw\t"}, "secret.password"),
    ):
        body = {"name": "x", "kind": kind, "provider": "p", "secret": secret}
        refused = api.post("/v1/credentials", json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "INVALID_SECRET"
        assert refused.json()["errors"][0]["field"] == field
        assert "0123456789" not in refused.text
    made = _create(api, "fine", "api_key", {"key": "sk_live_0123456789", "header": "X-Api-Key"})
    changed = api.patch(
        f"/v1/credentials/{made['id']}",
        json={"secret": {"key": "sk_live_9876543210\n", "header": "X-Api-Key"}},
    )
    assert changed.status_code == 422, changed.text
    assert changed.json()["errors"][0]["field"] == "secret.key"
    assert "9876543210" not in changed.text


def test_user_b_cannot_see_use_change_or_delete_user_a_credentials(mesh_up: Mesh):
    with mesh_up.client() as alice, mesh_up.client() as bob:
        register_and_login(alice)
        register_and_login(bob)
        secret = _create(alice, "Alice's", "login", LOGIN)
        path = f"/v1/credentials/{secret['id']}"
        for response in (
            bob.get(path),
            bob.patch(path, json={"name": "mine now"}),
            bob.patch(path, json={"secret": {"username": "bob", "password": "bob-password"}}),
            bob.delete(path),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["code"] == "CREDENTIAL_NOT_FOUND"
        assert bob.get("/v1/credentials").json()["items"] == []
        assert alice.get(path).json()["name"] == "Alice's"


def test_credentials_need_a_session(mesh_up: Mesh):
    with mesh_up.client() as anonymous:
        assert anonymous.get("/v1/credentials").status_code == 401
        body = {"name": "x", "kind": "login", "provider": "p", "secret": LOGIN}
        refused = anonymous.post("/v1/credentials", json=body)
        assert refused.status_code == 401 and refused.json()["code"] == "SESSION_REQUIRED"


def test_secrets_never_reach_logs_or_spans(mesh_up: Mesh):
    import time

    canary = f"sk_live_canary_{time.monotonic_ns()}"
    with mesh_up.client() as api:
        register_and_login(api)
        created = _create(api, "Canary", "api_key", {"key": canary, "header": "X-Api-Key"})
        api.patch(
            f"/v1/credentials/{created['id']}",
            json={"secret": {"key": canary + "-2", "header": "X-Api-Key"}},
        )
        api.post(
            "/v1/credentials",
            json={"name": "bad", "kind": "login", "provider": "p", "secret": {"username": canary}},
        )
    time.sleep(1.5)  # spans leave in batches (every 0.2 s here)
    traces = sorted((mesh_up.var_dir / "traces").glob("*.jsonl"))
    assert "vault" in {p.stem for p in traces}
    corpus = "".join(mesh_up.output) + "".join(p.read_text() for p in traces)
    assert canary not in corpus
    for path in (mesh_up.var_dir / "vault").glob("vault.db*"):
        assert canary.encode() not in path.read_bytes()
