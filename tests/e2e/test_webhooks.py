"""`POST /hooks/{token}` as a third party calls it: any body (JSON, form, text, binary, none) is
stored, answered 202 with its run id and delivered; signatures, idempotency keys, the rate limit
and the size limit are enforced; the webhooks log shows each request with its secrets redacted;
a deleted account's webhooks answer 410 and nothing more of it is stored or delivered."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from typing import Any

import httpx
import pytest
from leadmesh.runner.v1 import runner_pb2, runner_pb2_grpc

from services.kit.callers import user_metadata
from services.kit.config import MeshSettings
from services.kit.grpcclient import open_channel
from tests.e2e.conftest import (
    PASSWORD,
    WEBHOOK_BURST,
    Mesh,
    SharedReceiver,
    action,
    create,
    finished,
    register_and_login,
)

# The event as the receiver gets it back: everything a template can reach.
ECHO = {
    "body": "{{ body }}",
    "query": "{{ query }}",
    "content_type": '{{ headers."content-type" }}',
}


@pytest.fixture(params=["sqlite", "postgres+redis"])
def mesh(request: pytest.FixtureRequest) -> Mesh:
    """For what the stores may disagree on: the embedded default and the scale-out stores."""
    return request.getfixturevalue("mesh_up" if request.param == "sqlite" else "mesh_scaled")


@pytest.fixture
def owner(mesh_up: Mesh) -> httpx.Client:
    with mesh_up.client() as client:
        register_and_login(client)
        yield client


@pytest.fixture
def caller(mesh_up: Mesh) -> httpx.Client:
    """A third party: no session, no cookies."""
    with mesh_up.client() as client:
        yield client


def hook(owner: httpx.Client, receiver: SharedReceiver, **fields: Any) -> tuple[dict, str]:
    """A webhook connection echoing its event to a path of its own: (connection, path)."""
    path = receiver.path("hook")
    connection = create(
        owner,
        trigger={"type": "webhook"},
        action=action(receiver.https_url(path), body_template=ECHO),
        **fields,
    )
    return connection, path


def log_entry(owner: httpx.Client, connection_id: str, run_id: str) -> dict[str, Any]:
    entries = owner.get("/v1/webhook-log", params={"connection_id": connection_id})
    assert entries.status_code == 200, entries.text
    [entry] = [e for e in entries.json()["items"] if e["run_id"] == run_id]
    return entry


def sign(secret: str, body: bytes, at: int | None = None) -> str:
    at = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def test_a_json_webhook_is_stored_delivered_and_logged_with_secrets_redacted(
    owner: httpx.Client, caller: httpx.Client, receiver: SharedReceiver
):
    connection, path = hook(owner, receiver)
    lead = {"email": "lin@example.com", "tags": ["a", "b"], "score": 7, "ok": True}
    accepted = caller.post(
        connection["webhook_url"] + "?utm_source=ad&utm_source=mail&empty=",
        json=lead,
        headers={
            "Authorization": "Bearer third-party-bearer-secret",
            "Cookie": "sid=third-party-cookie-secret",
            "X-Api-Key": "third-party-api-key-secret",
            "X-Webhook-Token": "third-party-token-secret",
            "X-Request-Source": "crm-7",
            "X-Forwarded-For": "198.51.100.23",
        },
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["content-type"] == "application/json"
    run_id = accepted.json()["run_id"]
    assert set(accepted.json()) == {"run_id"} and "idempotent-replayed" not in accepted.headers
    [request] = receiver.wait_to(path)
    assert request.json() == {
        "body": lead,
        "query": {"utm_source": ["ad", "mail"], "empty": ""},
        "content_type": "application/json",
    }
    run = finished(owner, run_id)
    assert run["status"] == "succeeded" and run["trigger"] == "webhook"
    assert run["event"]["body"] == lead

    entry = log_entry(owner, connection["id"], run_id)
    assert entry["connection_id"] == connection["id"] and entry["method"] == "POST"
    assert entry["source_ip"] == "198.51.100.23"
    assert entry["query"] == "utm_source=ad&utm_source=mail&empty="
    assert entry["body_encoding"] == "json" and httpx.Response(200, text=entry["body"]).json() == (
        lead
    )
    headers = {h["name"]: h["value"] for h in entry["headers"]}
    for secret_header in ("authorization", "cookie", "x-api-key", "x-webhook-token"):
        assert headers[secret_header] == "[redacted]", secret_header
    assert headers["x-request-source"] == "crm-7"
    assert headers["content-type"] == "application/json"
    everything = owner.get("/v1/webhook-log").text + owner.get(f"/v1/runs/{run_id}").text
    for secret in ("bearer-secret", "cookie-secret", "api-key-secret", "token-secret"):
        assert secret not in everything
    assert connection["webhook_url"].rsplit("/", 1)[1] not in everything
    # The event's headers are redacted as well, so a template cannot send them on.
    assert run["event"]["headers"]["authorization"] == "[redacted]"


@pytest.mark.parametrize(
    ("content", "content_type", "encoding", "body", "logged"),
    [
        (
            b"email=ann%40example.com&tags=x&tags=y&blank=",
            "application/x-www-form-urlencoded",
            "form",
            {"email": "ann@example.com", "tags": ["x", "y"], "blank": ""},
            "email=ann%40example.com&tags=x&tags=y&blank=",
        ),
        (
            b"plain words, no JSON",
            "text/plain; charset=utf-8",
            "text",
            "plain words, no JSON",
            None,
        ),
        (b"{not json", "application/json", "text", "{not json", None),
        (
            bytes(range(256)),
            "application/octet-stream",
            "base64",
            base64.b64encode(bytes(range(256))).decode(),
            base64.b64encode(bytes(range(256))).decode(),
        ),
        (b"", None, None, None, ""),
    ],
    ids=["form", "text", "broken-json", "binary", "empty"],
)
def test_every_kind_of_body_is_accepted(
    owner: httpx.Client,
    caller: httpx.Client,
    receiver: SharedReceiver,
    content: bytes,
    content_type: str | None,
    encoding: str | None,
    body: Any,
    logged: str | None,
):
    connection, path = hook(owner, receiver)
    headers = {"Content-Type": content_type} if content_type else {}
    accepted = caller.post(connection["webhook_url"], content=content, headers=headers)
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run_id"]
    [request] = receiver.wait_to(path)
    assert request.json()["body"] == body
    assert finished(owner, run_id)["status"] == "succeeded"
    entry = log_entry(owner, connection["id"], run_id)
    assert entry["body"] == (content.decode() if logged is None else logged)
    if encoding:
        assert entry["body_encoding"] == encoding


def test_bodies_over_one_mebibyte_are_413(
    owner: httpx.Client, caller: httpx.Client, receiver: SharedReceiver
):
    connection, path = hook(owner, receiver)
    url, limit = connection["webhook_url"], 1024 * 1024
    too_big = caller.post(url, content=b"x" * (limit + 1), headers={"Content-Type": "text/plain"})
    assert too_big.status_code == 413 and too_big.json()["code"] == "BODY_TOO_LARGE"

    def chunks():
        for _ in range(17):
            yield b"y" * 65536

    chunked = caller.post(url, content=chunks(), headers={"Content-Type": "text/plain"})
    assert chunked.status_code == 413 and chunked.json()["code"] == "BODY_TOO_LARGE"
    # A body of exactly the limit is accepted; its echo (the body plus the template's other
    # fields) renders past RUNNER_MAX_RENDER_BYTES (1 MiB), a final error and not a retry.
    at_limit = caller.post(url, content=b"z" * limit, headers={"Content-Type": "text/plain"})
    assert at_limit.status_code == 202, at_limit.text
    too_large = finished(owner, at_limit.json()["run_id"])
    assert too_large["status"] == "failed" and too_large["attempts"] == [], too_large
    assert "larger than 1048576 bytes" in too_large["error"], too_large["error"]
    fits = limit - 1024
    just_fits = caller.post(url, content=b"z" * fits, headers={"Content-Type": "text/plain"})
    assert just_fits.status_code == 202, just_fits.text
    assert finished(owner, just_fits.json()["run_id"])["status"] == "succeeded"
    assert len(receiver.wait_to(path)[0].json()["body"]) == fits


def test_unknown_tokens_are_404_and_paused_connections_409(
    owner: httpx.Client, caller: httpx.Client, mesh_up: Mesh, receiver: SharedReceiver
):
    for token in ("unknown-token", "x", "A" * 43, "%2e%2e", "a" * 200):
        missing = caller.post(f"/hooks/{token}", json={})
        assert missing.status_code == 404, (token, missing.text)
        assert missing.json()["code"] == "WEBHOOK_NOT_FOUND"
    assert caller.post("/hooks/" + "a" * 201, json={}).status_code in (404, 422)
    assert caller.get("/hooks/unknown-token").status_code == 405

    connection, path = hook(owner, receiver)
    owner.patch(f"/v1/connections/{connection['id']}", json={"status": "paused"})
    paused = caller.post(connection["webhook_url"], json={"n": 1})
    assert paused.status_code == 409 and paused.json()["code"] == "CONNECTION_PAUSED"
    assert (
        owner.get("/v1/webhook-log", params={"connection_id": connection["id"]}).json()["items"]
        == []
    )
    owner.patch(f"/v1/connections/{connection['id']}", json={"status": "active"})
    assert caller.post(connection["webhook_url"], json={"n": 2}).status_code == 202
    assert [r.json()["body"] for r in receiver.wait_to(path)] == [{"n": 2}]


def test_a_signing_secret_demands_a_fresh_valid_signature(
    owner: httpx.Client, caller: httpx.Client, receiver: SharedReceiver
):
    secret = f"whsec_{uuid.uuid4().hex}"
    connection, path = hook(owner, receiver, signing_secret=secret)
    assert connection["has_signing_secret"] is True and secret not in str(connection)
    url, body = connection["webhook_url"], b'{"signed": true}'
    json_type = {"Content-Type": "application/json"}

    def post(signature: str | None, content: bytes = body) -> httpx.Response:
        headers = {**json_type, **({"X-Leadmesh-Signature": signature} if signature else {})}
        return caller.post(url, content=content, headers=headers)

    now = int(time.time())
    for signature in (
        None,
        "",
        "garbage",
        sign("whsec_the_wrong_secret_0000", body),
        sign(secret, b'{"signed": false}'),  # another body
        sign(secret, body, now - 301),  # older than five minutes
        sign(secret, body, now + 301),
        sign(secret, body).replace("t=", "t=0"),
        f"t={now}",
        f"t=abc,v1={'0' * 64}",
    ):
        refused = post(signature)
        assert refused.status_code == 401, (signature, refused.text)
        assert refused.json()["code"] == "SIGNATURE_INVALID"
    assert receiver.to(path) == []

    accepted = post(sign(secret, body))
    assert accepted.status_code == 202, accepted.text
    assert post(sign(secret, body, now - 200)).status_code == 202
    # Several v1 values (a secret being rotated): one valid is enough.
    then = now - 100  # not `accepted`'s stamp: the same signature again would be a replay
    rotating = (
        f"{sign('whsec_the_old_secret_00000', body, then)},v1={sign(secret, body, then)[-64:]}"
    )
    assert post(rotating).status_code == 202
    assert finished(owner, accepted.json()["run_id"])["status"] == "succeeded"
    assert receiver.wait_to(path, 3)[0].json()["body"] == {"signed": True}
    entry = log_entry(owner, connection["id"], accepted.json()["run_id"])
    assert {h["name"]: h["value"] for h in entry["headers"]}["x-leadmesh-signature"] == (
        "[redacted]"
    )


def test_a_replayed_signed_webhook_answers_the_first_run_and_delivers_once(
    mesh: Mesh, receiver: SharedReceiver
):
    secret = f"whsec_{uuid.uuid4().hex}"
    with mesh.client() as owner, mesh.client() as caller:
        register_and_login(owner)
        connection, path = hook(owner, receiver, signing_secret=secret)
        body = b'{"lead": "captured"}'
        headers = {"Content-Type": "application/json", "X-Leadmesh-Signature": sign(secret, body)}
        sends = [caller.post(connection["webhook_url"], content=body, headers=headers)]
        sends += [caller.post(connection["webhook_url"], content=body, headers=headers)]
        sends += [caller.post(connection["webhook_url"], content=body, headers=headers)]
        assert [s.status_code for s in sends] == [202, 202, 202], sends[-1].text
        assert sends[1].json() == sends[2].json() == sends[0].json()
        assert [s.headers.get("idempotent-replayed") for s in sends] == [None, "true", "true"]
        assert finished(owner, sends[0].json()["run_id"])["status"] == "succeeded"
        time.sleep(1.0)  # time for a second delivery, were there one
        assert len(receiver.to(path)) == 1
        listed = {"connection_id": connection["id"]}
        assert len(owner.get("/v1/activity", params=listed).json()["items"]) == 1
        assert len(owner.get("/v1/webhook-log", params=listed).json()["items"]) == 1


def test_odd_bytes_in_a_signature_are_401_problems_not_500s(
    mesh_up: Mesh, owner: httpx.Client, caller: httpx.Client, receiver: SharedReceiver
):
    connection, path = hook(owner, receiver, signing_secret=f"whsec_{uuid.uuid4().hex}")
    now = str(int(time.time())).encode()
    logged_before = len(mesh_up.output)
    for signature in (
        b"t=\xb2",  # "t=²" as the gateway reads the header (latin-1): a digit to isdigit()
        "t=²".encode(),
        b"v1=\xe9",  # "v1=é": compare_digest refuses non-ASCII text
        "v1=é".encode(),
        b"t=" + now + b",v1=" + b"\xe9" * 64,
        b"t=" + now + b"\xb2,v1=" + b"0" * 64,
    ):
        refused = caller.post(
            connection["webhook_url"], json={}, headers={"X-Leadmesh-Signature": signature}
        )
        assert refused.status_code == 401, (signature, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "SIGNATURE_INVALID"
    assert not any("Traceback" in line for line in mesh_up.output[logged_before:])
    assert receiver.to(path) == []


def test_secrets_in_the_query_and_in_any_secret_named_header_are_redacted_and_listed(
    owner: httpx.Client, caller: httpx.Client, receiver: SharedReceiver
):
    connection, path = hook(owner, receiver)
    accepted = caller.post(
        connection["webhook_url"] + "?api_key=q-secret-1&Access_Token=q-secret-2&utm_source=ad",
        json={"n": 1},
        headers={"X-Shopify-Hmac-Sha256": "h-secret-3", "X-Access-Key": "h-secret-4",
                 "X-Pass_Word": "h-secret-5", "X-Session-Id": "h-secret-6",
                 "X-Request-Source": "crm-7"},
    )  # fmt: skip
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run_id"]
    [delivered] = receiver.wait_to(path)
    # What a template can reach of the event is redacted too: the secrets are not sent on.
    assert delivered.json()["query"] == {
        "api_key": "[redacted]", "Access_Token": "[redacted]", "utm_source": "ad"
    }  # fmt: skip
    entry = log_entry(owner, connection["id"], run_id)
    assert entry["query"] == "api_key=[redacted]&Access_Token=[redacted]&utm_source=ad"
    assert set(entry["redacted"]) == {"x-shopify-hmac-sha256", "x-access-key", "x-pass_word",
                                      "x-session-id", "api_key", "Access_Token"}  # fmt: skip
    headers = {h["name"]: h["value"] for h in entry["headers"]}
    assert headers["x-pass_word"] == "[redacted]" and headers["x-request-source"] == "crm-7"
    run = finished(owner, run_id)
    everything = owner.get("/v1/webhook-log").text + owner.get(f"/v1/runs/{run_id}").text
    for n in range(1, 7):
        assert f"secret-{n}" not in everything + str(delivered.json()), n
    assert run["event"]["headers"]["x-shopify-hmac-sha256"] == "[redacted]"


def test_a_repeated_idempotency_key_answers_the_first_run_and_delivers_once(
    owner: httpx.Client, caller: httpx.Client, receiver: SharedReceiver
):
    connection, path = hook(owner, receiver)
    url, key = connection["webhook_url"], f"evt_{uuid.uuid4().hex}"
    first = caller.post(url, json={"n": 1}, headers={"Idempotency-Key": key})
    again = caller.post(url, json={"n": 2}, headers={"Idempotency-Key": key})
    other = caller.post(url, json={"n": 3}, headers={"Idempotency-Key": key + "-other"})
    assert [r.status_code for r in (first, again, other)] == [202, 202, 202]
    assert again.json()["run_id"] == first.json()["run_id"] != other.json()["run_id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    for run_id in (first.json()["run_id"], other.json()["run_id"]):
        assert finished(owner, run_id)["status"] == "succeeded"
    time.sleep(1.0)  # time for a second delivery, were there one
    assert sorted(r.json()["body"]["n"] for r in receiver.to(path)) == [1, 3]
    runs = owner.get("/v1/activity", params={"connection_id": connection["id"]}).json()["items"]
    assert [r["run_id"] for r in runs] == [other.json()["run_id"], first.json()["run_id"]]


def test_too_many_webhooks_are_429_with_retry_after(
    owner: httpx.Client, caller: httpx.Client, receiver: SharedReceiver
):
    connection, _ = hook(owner, receiver)
    url = connection["webhook_url"]
    answers = [caller.post(url, json={"n": n}) for n in range(WEBHOOK_BURST * 2)]
    codes = [a.status_code for a in answers]
    assert codes[:WEBHOOK_BURST] == [202] * WEBHOOK_BURST
    limited = [a for a in answers if a.status_code == 429]
    assert limited and set(codes) == {202, 429}, codes
    assert all(a.json()["code"] == "RATE_LIMITED" for a in limited)
    wait = int(limited[-1].headers["retry-after"])
    assert 1 <= wait <= 60
    # Another connection is not held back by this one's limit.
    neighbour, _ = hook(owner, receiver)
    assert caller.post(neighbour["webhook_url"], json={}).status_code == 202
    time.sleep(wait)
    assert caller.post(url, json={"after": True}).status_code == 202


DEEP = 33  # nested objects/arrays: one more than a run's event may carry


@pytest.mark.parametrize(
    ("content", "content_type", "encoding"),
    [
        (b'{"a": NaN}', "application/json", "text"),
        (b'{"a": -Infinity}', "application/json", "text"),
        (b'{"a": 1e400}', "application/json", "text"),
        (b'{"a": ' + b"9" * 400 + b"}", "application/json", "text"),
        (b'{"\\ud800": "\\udfff"}', "application/json", "text"),
        (b"[" * DEEP + b"]" * DEEP, "application/json", "text"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "text"),
        (b'{"a": "\x00"}', "application/json", "base64"),
        (b"a\x00b", "text/plain", "base64"),
        (b"\xff\xfe not utf-8", "text/plain", "base64"),
    ],
    ids=[
        "nan",
        "infinity",
        "overflow",
        "huge-int",
        "surrogates",
        "deep",
        "very-deep",
        "nul-json",
        "nul-text",
        "not-utf8",
    ],  # fmt: skip
)
def test_bodies_no_json_store_can_hold_are_kept_as_text(
    mesh: Mesh,
    receiver: SharedReceiver,
    content: bytes,
    content_type: str,
    encoding: str,
):
    """What would not survive PostgreSQL's json or a google.protobuf.Value (NaN, infinities,
    lone surrogates, deep nesting, NUL) is logged and delivered as text (or base64), not a 500."""
    with mesh.client() as owner, mesh.client() as caller:
        register_and_login(owner)
        connection, path = hook(owner, receiver)
        accepted = caller.post(
            connection["webhook_url"], content=content, headers={"Content-Type": content_type}
        )
        assert accepted.status_code == 202, accepted.text
        run = finished(owner, accepted.json()["run_id"])
        assert run["status"] == "succeeded", run
        entry = log_entry(owner, connection["id"], run["run_id"])
        assert entry["body_encoding"] == encoding
        [request] = receiver.wait_to(path)
        assert request.json()["body"] == entry["body"] == run["event"]["body"]
        if encoding == "base64":
            assert base64.b64decode(entry["body"]) == content
        else:
            assert entry["body"] == content.decode()


def as_gateway(mesh: Mesh, method: str, request: Any, user_id: str) -> Any:
    """A runner RPC for the user, made the way the gateway makes it (its mesh certificate): what
    the runner holds of an account after its sessions ended."""
    there = MeshSettings(
        var_dir=mesh.var_dir, runner_addr=f"127.0.0.1:{mesh.env['RUNNER_PORT']}", _env_file=None
    )

    async def call() -> Any:
        channel = open_channel(there, "runner", caller="gateway")
        try:
            stub = runner_pb2_grpc.RunnerServiceStub(channel)
            return await getattr(stub, method)(request, metadata=user_metadata(user_id))
        finally:
            await channel.close()

    return asyncio.run(call())


def test_a_deleted_accounts_webhooks_answer_410_and_nothing_more_is_stored_or_delivered(
    mesh: Mesh, receiver: SharedReceiver
):
    with mesh.client() as owner, mesh.client() as caller, mesh.client() as other:
        register_and_login(owner)
        register_and_login(other)
        user_id = owner.get("/v1/me").json()["id"]
        key = f"sk_live_{uuid.uuid4().hex}"
        credential = owner.post(
            "/v1/credentials",
            json={"name": "CRM", "kind": "api_key", "provider": "crm",
                  "secret": {"key": key, "header": "X-Api-Key"}},
        )  # fmt: skip
        assert credential.status_code == 201, credential.text
        path, retrying_path = receiver.path("deleted"), receiver.path("deleted-retrying")
        connection = create(
            owner,
            trigger={"type": "webhook"},
            action=action(receiver.https_url(path), credential_id=credential.json()["id"]),
        )
        # A run still being retried when the deletion lands: each attempt a slow 503.
        receiver.answer(retrying_path, 503, delay=0.3)
        retrying = create(
            owner,
            trigger={"type": "webhook"},
            action=action(receiver.https_url(retrying_path)),
            max_attempts=20,
        )
        assert caller.post(connection["webhook_url"], json={"lead": 1}).status_code == 202
        [delivered] = receiver.wait_to(path)
        assert delivered.headers["x-api-key"] == key
        retried = caller.post(retrying["webhook_url"], json={"lead": "retried"})
        assert retried.status_code == 202, retried.text
        receiver.wait_to(retrying_path)

        deleted = owner.request("DELETE", "/v1/me", json={"password": PASSWORD})
        assert deleted.status_code == 202, deleted.text

        refused = caller.post(connection["webhook_url"], json={"lead": 2})
        assert refused.status_code == 410, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "ACCOUNT_DELETED" and refused.json()["status"] == 410
        run_id = retried.json()["run_id"]
        deadline = time.monotonic() + 15
        while (
            run := as_gateway(mesh, "GetRun", runner_pb2.GetRunRequest(id=run_id), user_id).run
        ).status != "cancelled":
            assert time.monotonic() < deadline, run.status
            time.sleep(0.05)
        assert run.error == "account deleted"
        attempts_made = len(receiver.to(retrying_path))
        listed = runner_pb2.ListRequest(page_size=100)
        log = as_gateway(mesh, "ListWebhookLog", listed, user_id).entries
        runs = as_gateway(mesh, "ListActivity", listed, user_id).runs
        assert len(log) == len(runs) == 2  # the two accepted before the deletion, no more

        # Another account's webhooks go on as before.
        others, others_path = hook(other, receiver)
        assert caller.post(others["webhook_url"], json={"lead": 3}).status_code == 202
        receiver.wait_to(others_path)
        time.sleep(1.0)
        assert len(receiver.to(path)) == 1
        assert len(receiver.to(retrying_path)) == attempts_made
