"""Retention as a user meets it through `leadmesh up`: the export of everything the mesh holds of
them (GDPR Art. 15/20), and a requested deletion cancelled with the link of its confirmation
mail."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import httpx

from services.kit.deletions import LIFT_MARGIN
from tests.e2e.conftest import (
    PASSWORD,
    Mesh,
    SharedReceiver,
    action,
    create,
    finished,
    register_and_login,
)

# The runner and the vault re-read identity's deletion requests every second in the e2e mesh
# (conftest), and lift a suspension only once it is LIFT_MARGIN older than the listing that no
# longer names the user: the webhook is accepted again that long after the deletion request.
SUSPENSION_LIFTED_WITHIN = LIFT_MARGIN.total_seconds() + 30


def _user_with_data(client: httpx.Client, caller: httpx.Client, receiver: SharedReceiver) -> dict:
    """A user with an account, a credential, a webhook connection using it, and one webhook
    delivered (a run, its attempt, its webhook log entry): what the export must show."""
    address = register_and_login(client)
    marker = uuid.uuid4().hex
    secret = f"sk_live_{uuid.uuid4().hex}"
    credential = client.post(
        "/v1/credentials",
        json={"name": f"CRM {marker[:6]}", "kind": "api_key", "provider": "crm",
              "secret": {"key": secret, "header": "X-Api-Key"}},
    )  # fmt: skip
    assert credential.status_code == 201, credential.text
    path = receiver.path("export")
    connection = create(
        client,
        trigger={"type": "webhook"},
        action=action(receiver.https_url(path), credential_id=credential.json()["id"]),
    )
    hooked = caller.post(connection["webhook_url"], json={"lead": marker})
    assert hooked.status_code == 202, hooked.text
    run_id = hooked.json()["run_id"]
    assert finished(client, run_id)["status"] == "succeeded"
    [delivered] = receiver.wait_to(path)
    assert delivered.headers["x-api-key"] == secret
    return {
        "user_id": client.get("/v1/me").json()["id"],
        "email": address,
        "marker": marker,
        "secret": secret,
        "credential_id": credential.json()["id"],
        "connection_id": connection["id"],
        "webhook_token": connection["webhook_url"].rsplit("/", 1)[1],
        "run_id": run_id,
    }


def _export(client: httpx.Client) -> tuple[httpx.Response, dict[str, Any]]:
    response = client.get("/v1/me/export")
    assert response.status_code == 200, response.text
    return response, json.loads(response.content)


def _assert_attachment(response: httpx.Response) -> None:
    assert response.headers["content-type"] == "application/json"
    disposition = response.headers["content-disposition"]
    assert re.fullmatch(
        r'attachment; filename="leadmesh-export-\d{4}-\d{2}-\d{2}\.json"', disposition
    )
    assert response.headers["cache-control"] == "no-store"
    # Streamed: no length known in advance.
    assert response.headers.get("transfer-encoding") == "chunked"


def _records(part: dict[str, list[dict]]) -> list[dict]:
    return [record for records in part.values() for record in records]


def _values(value: Any) -> set[str]:
    """Every string anywhere in a JSON value, keys too."""
    if isinstance(value, dict):
        return {k for k in value} | {s for v in value.values() for s in _values(v)}
    if isinstance(value, list):
        return {s for v in value for s in _values(v)}
    return {value} if isinstance(value, str) else set()


def test_the_export_holds_the_users_data_from_every_service_and_nobody_elses(
    mesh_up: Mesh, receiver: SharedReceiver
):
    with mesh_up.client() as me, mesh_up.client() as other, mesh_up.client() as caller:
        mine = _user_with_data(me, caller, receiver)
        theirs = _user_with_data(other, caller, receiver)
        response, document = _export(me)

    _assert_attachment(response)
    assert document["format_version"] == 1 and document["complete"] is True
    assert "error" not in document
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", document["generated_at"])
    assert document["subject"] == {"user_id": mine["user_id"]}
    services = document["services"]
    assert list(services) == ["identity", "vault", "runner"]

    identity, vault, runner = (_values(services[s]) for s in ("identity", "vault", "runner"))
    assert mine["email"] in identity and mine["user_id"] in identity
    assert mine["credential_id"] in vault
    assert {mine["connection_id"], mine["run_id"]} <= runner
    # The webhook's body (the run's event, the webhook log entry) is the user's too.
    assert any(mine["marker"] in value for value in runner)
    # A run's attempt is exported: some runner record names the run and is not the run itself.
    assert any(record.get("run_id") == mine["run_id"] for record in _records(services["runner"])), (
        sorted(services["runner"])
    )

    text = response.text
    # Secrets never: not the vault's credential, not the header the runner sent with it.
    assert mine["secret"] not in text
    # Nothing of the other user, from any service.
    for value in theirs.values():
        assert value not in text, value


def test_the_export_needs_a_session(mesh_up: Mesh):
    with mesh_up.client() as anonymous:
        refused = anonymous.get("/v1/me/export")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "SESSION_REQUIRED"
    assert "content-disposition" not in refused.headers


def test_a_users_export_after_a_fresh_sign_up_is_complete(mesh_up: Mesh):
    """A user with no connections, credentials or runs: every service answers, some with no
    section at all, and the document is still whole."""
    with mesh_up.client() as me:
        address = register_and_login(me)
        response, document = _export(me)
    _assert_attachment(response)
    assert document["complete"] is True
    assert set(document["services"]) == {"identity", "vault", "runner"}
    assert address in _values(document["services"]["identity"])
    assert not _records(document["services"]["vault"])


def _cancel_token(inbox, address: str) -> str:
    mail = inbox.wait_for(address, timeout=20)
    body = mail.get_body(("plain",)).get_content()
    link = re.search(r"/deletion-cancel\?token=([A-Za-z0-9_\-.~%]+)", body)
    assert link, body
    return link[1]


def test_a_deletion_cancelled_with_the_mailed_link_gives_the_account_back(
    mesh_up: Mesh, inbox, receiver: SharedReceiver
):
    with mesh_up.client() as owner, mesh_up.client() as caller, mesh_up.client() as anonymous:
        address = register_and_login(owner)
        path = receiver.path("cancelled")
        connection = create(
            owner, trigger={"type": "webhook"}, action=action(receiver.https_url(path))
        )
        requested = time.monotonic()
        deleted = owner.request("DELETE", "/v1/me", json={"password": PASSWORD})
        assert deleted.status_code == 202, deleted.text
        token = _cancel_token(inbox, address)
        assert caller.post(connection["webhook_url"], json={"lead": 1}).status_code == 410

        bogus = anonymous.post("/v1/deletion-cancellations", json={"token": "x" * 43})
        assert bogus.status_code == 400, bogus.text
        assert bogus.headers["content-type"] == "application/problem+json"
        assert bogus.json()["code"] == "DELETION_CANCEL_TOKEN_INVALID"

        cancelled = anonymous.post("/v1/deletion-cancellations", json={"token": token})
        assert cancelled.status_code == 204, cancelled.text
        assert not cancelled.content
        # The sessions stay ended; the owner signs in again.
        assert owner.get("/v1/me").status_code == 401
        signed = owner.post("/v1/sessions", json={"email": address, "password": PASSWORD})
        assert signed.status_code == 200, signed.text
        assert owner.get("/v1/me").json()["email"] == address

        reused = anonymous.post("/v1/deletion-cancellations", json={"token": token})
        assert reused.status_code == 400, reused.text
        assert reused.json()["code"] == "DELETION_CANCEL_TOKEN_INVALID"

        # The runner and the vault lift their suspensions when they next reconcile.
        deadline = requested + SUSPENSION_LIFTED_WITHIN
        while (
            hooked := caller.post(connection["webhook_url"], json={"lead": 2})
        ).status_code != 202:
            assert hooked.status_code == 410, hooked.text
            assert time.monotonic() < deadline, "the webhook still answers 410"
            time.sleep(1.0)
        assert finished(owner, hooked.json()["run_id"])["status"] == "succeeded"
        assert len(receiver.wait_to(path)) == 1


def test_a_cancellation_needs_a_token(mesh_up: Mesh):
    with mesh_up.client() as anonymous:
        for body in ({}, {"token": ""}, {"token": "t", "extra": 1}):
            refused = anonymous.post("/v1/deletion-cancellations", json=body)
            assert refused.status_code == 422, (body, refused.text)
            assert refused.json()["code"] == "INVALID_REQUEST"
        # No session cookie: nothing to forge, so no CSRF echo is asked for (as for a reset).
        token = uuid.uuid4().hex
        unknown = anonymous.post("/v1/deletion-cancellations", json={"token": token})
        assert unknown.status_code == 400
