"""Execution data sealed at rest, through the whole mesh over HTTPS (`leadmesh up`, one mesh for
this module): a webhook carrying a marked lead e-mail is accepted, delivered and shown by the API,
and the e-mail is in no byte of the runner's database files; with the vault stopped (SIGSTOP) a
user whose keys the runner holds is still accepted, a user never seen gets 503 with Retry-After,
and once the vault is back every accepted webhook is delivered; a sealed event copied into another
run's row, and every value of a day whose keys retention destroyed, read as purged: never a 500.

The runner keeps keys 3 s here (`RUNNER_EXECUTION_KEY_CACHE_SECONDS`), so a destruction reaches
its reads within seconds without a purge telling it (retention's purges do, services/kit)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from leadmesh.vault.v1 import vault_pb2 as vpb
from leadmesh.vault.v1 import vault_pb2_grpc

from services.kit.config import MeshSettings
from services.kit.grpcclient import open_channel
from tests.e2e.conftest import (
    Mesh,
    SharedReceiver,
    _start_mesh,
    action,
    create,
    finished,
    register_and_login,
    runner_env,
)

MARKED = "marked-lead-7f3a@example.com"
CACHE_SECONDS = 3
CATEGORIES = ("webhooks_log", "execution_details", "attempt_details", "notifications")


@pytest.fixture(scope="module")
def up(tmp_path_factory, inbox, oauth_provider, receiver: SharedReceiver) -> Iterator[Mesh]:
    extra = runner_env(receiver)
    extra.update(
        RUNNER_EXECUTION_KEY_CACHE_SECONDS=str(CACHE_SECONDS),
        RUNNER_WEBHOOK_BURST="1000",
        RUNNER_WEBHOOK_RATE_PER_SECOND="1000",
    )
    yield from _start_mesh(tmp_path_factory.mktemp("sealing-e2e"), inbox, oauth_provider, extra)


@pytest.fixture
def api(up: Mesh) -> Iterator[httpx.Client]:
    with up.client() as client:
        register_and_login(client)
        yield client


def _connection(api: httpx.Client, receiver: SharedReceiver, path: str, **fields) -> dict:
    return create(
        api,
        trigger={"type": "webhook"},
        action=action(receiver.https_url(path), body_template={"email": "{{ body.email }}"}),
        **fields,
    )


def _hook(api: httpx.Client, connection: dict, email: str) -> httpx.Response:
    return api.post(connection["webhook_url"], json={"email": email, "name": "Ann"})


def _runner_bytes(up: Mesh) -> bytes:
    files = sorted((up.var_dir / "runner").glob("*.db*"))
    assert files
    return b"".join(path.read_bytes() for path in files if path.is_file())


def _purge_day_keys(up: Mesh, before: str) -> None:
    """DestroyExpiredEpochKeys as retention calls it, with retention's mesh certificate."""

    async def destroy() -> None:
        there = MeshSettings(
            var_dir=up.var_dir, vault_addr=f"127.0.0.1:{up.env['VAULT_PORT']}", _env_file=None
        )
        channel = open_channel(there, "vault", caller="retention")
        try:
            stub = vault_pb2_grpc.VaultServiceStub(channel)
            for category in CATEGORIES:
                await stub.DestroyExpiredEpochKeys(
                    vpb.DestroyExpiredEpochKeysRequest(
                        participant="runner", category=category, before=before
                    )
                )
        finally:
            await channel.close()

    asyncio.run(destroy())


def test_a_marked_lead_is_delivered_shown_and_in_no_byte_of_the_runners_database(
    up: Mesh, api: httpx.Client, receiver: SharedReceiver
):
    path = receiver.path("sealed")
    connection = _connection(api, receiver, path)
    accepted = _hook(api, connection, MARKED)
    assert accepted.status_code == 202, accepted.text
    detail = finished(api, accepted.json()["run_id"])
    assert detail["status"] == "succeeded" and not detail["details_purged"]
    assert receiver.wait_to(path)[0].json() == {"email": MARKED}
    assert detail["event"]["body"] == {"email": MARKED, "name": "Ann"}
    assert MARKED in json.dumps(detail["attempts"][0]["request"])
    logged = api.get("/v1/webhook-log", params={"connection_id": connection["id"]})
    assert logged.status_code == 200 and MARKED in logged.json()["items"][0]["body"]
    assert MARKED.encode() not in _runner_bytes(up)


def test_with_the_vault_stopped_known_users_are_accepted_others_told_to_retry(
    up: Mesh, api: httpx.Client, receiver: SharedReceiver
):
    path = receiver.path("outage")
    known = _connection(api, receiver, path)
    with up.client() as stranger:
        register_and_login(stranger)
        never_seen = _connection(stranger, receiver, receiver.path("never"))
        assert _hook(api, known, "first@example.com").status_code == 202  # its keys fetched
        vault = up.pid("services.vault")
        os.kill(vault, signal.SIGSTOP)
        try:
            accepted = [_hook(api, known, f"held-{n}@example.com") for n in range(3)]
            refused = _hook(stranger, never_seen, "refused@example.com")
        finally:
            os.kill(vault, signal.SIGCONT)
    assert [a.status_code for a in accepted] == [202, 202, 202], [a.text for a in accepted]
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["code"] == "UNAVAILABLE"
    for answer in accepted:
        assert finished(api, answer.json()["run_id"], timeout=60)["status"] == "succeeded"
    delivered = {r.json()["email"] for r in receiver.wait_to(path, 4, timeout=30)}
    assert {f"held-{n}@example.com" for n in range(3)} <= delivered
    assert b"refused@example.com" not in _runner_bytes(up)


def test_a_sealed_event_copied_into_another_run_reads_as_purged(
    up: Mesh, api: httpx.Client, receiver: SharedReceiver
):
    connection = _connection(api, receiver, receiver.path("moved"))
    first, second = (_hook(api, connection, f"{n}{MARKED}").json()["run_id"] for n in (1, 2))
    for run_id in (first, second):
        finished(api, run_id)
    with sqlite3.connect(up.var_dir / "runner" / "runner.db", timeout=30) as database:
        database.execute(
            "UPDATE runs SET event = (SELECT event FROM runs WHERE id = ?) WHERE id = ?",
            (first, second),
        )
    moved = api.get(f"/v1/runs/{second}")
    assert moved.status_code == 200, moved.text
    assert moved.json()["details_purged"] and moved.json()["event"] is None
    assert moved.json()["attempts"] == [] and moved.json()["details_purge_time"]
    kept = api.get(f"/v1/runs/{first}").json()
    assert kept["event"]["body"]["email"] == f"1{MARKED}"


def test_a_destroyed_day_key_reads_as_purged_through_every_endpoint(
    up: Mesh, api: httpx.Client, receiver: SharedReceiver
):
    path = receiver.path("destroyed")
    connection = _connection(api, receiver, path, max_attempts=1)
    receiver.answer(path, 500)
    run_id = _hook(api, connection, MARKED).json()["run_id"]
    assert finished(api, run_id)["status"] == "failed"
    today = datetime.now(UTC).date()
    _purge_day_keys(up, (today + timedelta(days=1)).isoformat())
    time.sleep(CACHE_SECONDS + 0.5)  # the runner's keys in memory expire

    detail = api.get(f"/v1/runs/{run_id}")
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert body["details_purged"] and body["event"] is None and body["attempts"] == []
    assert body["details_purge_time"].startswith((today + timedelta(days=8)).isoformat())
    logged = api.get("/v1/webhook-log", params={"connection_id": connection["id"]})
    assert logged.status_code == 200, logged.text
    assert [(e["body"], e["headers"], e["details_purged"]) for e in logged.json()["items"]] == [
        ("", [], True)
    ]
    notices = api.get("/v1/notifications", params={"connection_id": connection["id"]})
    assert notices.status_code == 200, notices.text
    assert [("purged" in n["message"], n["details_purged"]) for n in notices.json()["items"]] == [
        (True, True)
    ]
    assert api.get("/v1/activity").status_code == 200
    # Today's keys are gone for good: nothing more can be sealed today, and nothing is taken in
    # plaintext instead (the webhook is refused, to be retried).
    assert _hook(api, connection, "after@example.com").status_code == 503
