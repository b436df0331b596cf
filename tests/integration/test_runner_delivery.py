"""Deliveries against real receivers on loopback: an HTTPS server with its own CA and a plain
HTTP one. Each auth kind, mappings, retries and Retry-After, 401 → refresh → success with the
authlib OAuth server, SSRF refusals, and egress bound to a fixed source address."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
from google.protobuf import empty_pb2
from leadmesh.runner.v1 import runner_pb2 as rpb
from leadmesh.vault.v1 import vault_pb2 as vpb

from services.kit.callers import user_metadata
from services.kit.config import MeshSettings
from services.kit.errors import from_rpc_error
from tests.integration.runner_support import RunnerMesh, runner_mesh
from tests.integration.test_vault_oauth import CALLBACK, providers
from tests.support.oauth_server import OAuthServer
from tests.support.receiver import Receiver

USER = "user-a"


async def connect(rm: RunnerMesh, oauth: OAuthServer) -> str:
    """An oauth2 credential made by the real authorization-code flow, through the vault."""
    started = await rm.vault_stub.StartOAuth(
        vpb.StartOAuthRequest(provider="crm", name="CRM", session_id="s1", redirect_uri=CALLBACK),
        metadata=user_metadata(USER),
    )
    async with httpx.AsyncClient() as browser:
        consent = await browser.get(started.authorization_url, follow_redirects=False)
    back = parse_qs(urlsplit(consent.headers["location"]).query)
    credential = await rm.vault_stub.CompleteOAuth(
        vpb.CompleteOAuthRequest(
            provider="crm",
            state=back["state"][0],
            code=back["code"][0],
            session_id="s1",
            redirect_uri=CALLBACK,
        ),
        metadata=user_metadata(USER),
    )
    return credential.id


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with Receiver(tmp_path / "receiver") as server:
        yield server


@pytest.fixture
async def rm(tmp_path: Path, mesh: MeshSettings, database_url: str, receiver: Receiver):
    (tmp_path / "receiver").mkdir(exist_ok=True)
    async with runner_mesh(
        tmp_path, mesh.pki_dir, database_url, ca_file=str(receiver.ca_file)
    ) as built:
        yield built


@pytest.mark.parametrize(
    ("kind", "secret", "check"),
    [
        (
            "api_key",
            {"key": "sk_test_header_0123456789", "header": "X-Api-Key"},
            lambda r: r.headers["x-api-key"] == "sk_test_header_0123456789",
        ),
        (
            "api_key",
            {"key": "sk_test_query_0123456789", "query": "api_key"},
            lambda r: "api_key=sk_test_query_0123456789" in r.query,
        ),
        (
            "login",
            {"username": "ann", "password": "p@ss:word-42"},
            lambda r: (
                r.headers["authorization"]
                == "Basic " + base64.b64encode(b"ann:p@ss:word-42").decode()
            ),
        ),
        (
            "oauth2",
            {
                "access_token": "at-0123456789",
                "refresh_token": "rt-0123456789",
                "expires_at": 4102444800,
            },  # fmt: skip
            lambda r: r.headers["authorization"] == "Bearer at-0123456789",
        ),
    ],
    ids=["api_key-header", "api_key-query", "login", "oauth2"],
)
async def test_each_auth_kind_arrives_over_verified_tls(rm, receiver, kind, secret, check):
    credential = await rm.credential(USER, kind, secret)
    made = await rm.connection(
        USER, receiver.https_url("/leads?src=lm"), credential_id=credential,
        body_template={"email": "{{ body.email }}"},
    )  # fmt: skip
    run_id = await rm.run(USER, made.connection.id, {"email": "ann@example.com"})
    detail = await rm.finished(USER, run_id)
    assert detail.run.status == "succeeded", detail
    (request,) = receiver.requests
    assert check(request)
    assert request.scheme == "https" and request.path == "/leads"
    assert request.json() == {"email": "ann@example.com"}
    assert request.headers["idempotency-key"] == run_id
    # What the owner reads of the attempt holds no credential.
    recorded = str(detail.attempts[0].request)
    for name in ("key", "password", "access_token", "refresh_token"):
        if name in secret:
            assert secret[name] not in recorded
    assert "[redacted]" in recorded


async def test_mapping_keeps_json_types_and_leaves_missing_fields_empty(rm, receiver):
    made = await rm.connection(
        USER,
        receiver.https_url("/map"),
        headers={"X-Lead-Source": "{{ body.source }}"},
        body_template={
            "n": "{{ body.n }}",
            "ratio": "{{ body.ratio }}",
            "flag": "{{ body.flag }}",
            "obj": "{{ body.obj }}",
            "list": "{{ body.tags }}",
            "missing": "{{ body.nope }}",
            "mixed": "lead {{ body.n }}: {{ body.nope }}!",
            "joined": "{{ join(', ', body.tags) }}",
            "literal": 5,
            "nested": [{"first": "{{ body.tags[0] }}"}],
        },
    )
    payload = {"n": 42, "ratio": 0.5, "flag": True, "obj": {"a": [1, 2]}, "tags": ["x", "y"],
               "source": "form-7"}  # fmt: skip
    run_id = await rm.run(USER, made.connection.id, payload)
    assert (await rm.finished(USER, run_id)).run.status == "succeeded"
    (request,) = receiver.requests
    assert request.json() == {
        "n": 42,
        "ratio": 0.5,
        "flag": True,
        "obj": {"a": [1, 2]},
        "list": ["x", "y"],
        "missing": None,
        "mixed": "lead 42: !",
        "joined": "x, y",
        "literal": 5,
        "nested": [{"first": "x"}],
    }
    assert request.headers["x-lead-source"] == "form-7"
    # 42 stays an integer on the wire, not 42.0.
    assert re.search(rb'"n":42[,}]', request.body)


async def test_retries_with_backoff_then_success(rm, receiver):
    receiver.respond(503, times=2)
    made = await rm.connection(USER, receiver.https_url("/flaky"), max_attempts=5)
    run_id = await rm.run(USER, made.connection.id, {"a": 1})
    detail = await rm.finished(USER, run_id)
    assert detail.run.status == "succeeded" and detail.run.attempts == 3
    assert [a.response_status for a in detail.attempts] == [503, 503, 200]
    assert len(receiver.requests) == 3
    # The same run id each time: the receiver can deduplicate.
    assert {r.headers["idempotency-key"] for r in receiver.requests} == {run_id}
    starts = [a.start_time.ToDatetime() for a in detail.attempts]
    assert starts[1] > starts[0] and starts[2] > starts[1]


async def test_retry_after_is_honoured(rm, receiver):
    receiver.respond(429, {"Retry-After": "1"})
    made = await rm.connection(USER, receiver.https_url("/slow-down"))
    run_id = await rm.run(USER, made.connection.id, {})
    detail = await rm.finished(USER, run_id)
    assert detail.run.status == "succeeded"
    first, second = (a.start_time.ToDatetime() for a in detail.attempts)
    # Backoff alone would be 0.05 s here; the server asked for a second.
    assert (second - first).total_seconds() >= 0.95


async def test_a_client_error_is_not_retried(rm, receiver):
    receiver.respond(422, body={"error": "bad email"})
    made = await rm.connection(USER, receiver.https_url("/strict"))
    run_id = await rm.run(USER, made.connection.id, {})
    detail = await rm.finished(USER, run_id)
    assert detail.run.status == "failed" and detail.run.attempts == 1
    assert detail.attempts[0].response_status == 422
    assert "bad email" in detail.attempts[0].response_body


async def test_exhausted_runs_notify_and_repeated_failures_pause_the_connection(
    tmp_path, mesh, database_url, receiver
):
    async with runner_mesh(
        tmp_path, mesh.pki_dir, database_url, ca_file=str(receiver.ca_file), pause_after_failures=2
    ) as rm:
        receiver.respond_with(lambda _request: (500, None, b"down"))
        made = await rm.connection(USER, receiver.https_url("/down"), max_attempts=2)
        for _ in range(2):
            detail = await rm.finished(USER, await rm.run(USER, made.connection.id, {}))
            assert detail.run.status == "failed" and detail.run.attempts == 2
            assert "HTTP 500" in detail.run.error
        kinds = sorted(n.kind for n in await rm.notifications(USER))
        assert kinds == ["connection_paused", "run_failed", "run_failed"]
        connection = await rm.stub.GetConnection(
            rpb.GetConnectionRequest(id=made.connection.id), metadata=user_metadata(USER)
        )
        assert connection.status == "paused" and "2 runs failed in a row" in connection.pause_reason
        # A paused connection takes no new runs until its owner activates it again.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await rm.run(USER, made.connection.id, {})
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        receiver.respond_with(None)
        active = await rm.set_status(USER, made.connection.id, "active")
        assert active.consecutive_failures == 0
        detail = await rm.finished(USER, await rm.run(USER, made.connection.id, {}))
        assert detail.run.status == "succeeded"


async def test_a_rejected_oauth_token_is_refreshed_once_and_the_call_retried(
    tmp_path, mesh, database_url
):
    with OAuthServer(access_token_lifetime=3600) as oauth:
        async with runner_mesh(
            tmp_path,
            mesh.pki_dir,
            database_url,
            allow_plain_http=True,
            vault_overrides={"oauth_providers": providers(oauth)},
        ) as rm:
            credential_id = await connect(rm, oauth)
            made = await rm.connection(
                USER, oauth.api_url, method="GET", credential_id=credential_id
            )
            assert (await rm.finished(USER, await rm.run(USER, made.connection.id))).run.status == (
                "succeeded"
            )
            before = oauth.refresh_count
            oauth.expire_access_tokens()  # the provider now answers 401 to the stored token
            detail = await rm.finished(USER, await rm.run(USER, made.connection.id))
            assert detail.run.status == "succeeded"
            assert [a.response_status for a in detail.attempts] == [401, 200]
            assert oauth.refresh_count == before + 1
            # A refresh token the provider revoked: the credential needs reconnecting, and the
            # owner is told which one.
            oauth.expire_access_tokens()
            oauth.revoke_refresh_tokens()
            detail = await rm.finished(USER, await rm.run(USER, made.connection.id))
            assert detail.run.status == "failed"
            problems = [n for n in await rm.notifications(USER) if n.kind == "credential_problem"]
            assert problems and problems[0].credential_id == credential_id
            assert "reconnect" in problems[0].message


async def test_ssrf_guard_refuses_private_metadata_and_loopback_destinations(
    tmp_path, mesh, database_url, receiver
):
    async with runner_mesh(
        tmp_path, mesh.pki_dir, database_url, allowed_networks=[], ca_file=str(receiver.ca_file)
    ) as rm:
        for url in ("https://10.0.0.1/in", "https://169.254.169.254/latest/meta-data/"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await rm.connection(USER, url)
            remote = from_rpc_error(refused.value)
            assert remote.code == grpc.StatusCode.INVALID_ARGUMENT
            assert remote.reason == "ADDRESS_REFUSED"
        # A name is checked where it resolves, when connecting: localhost is loopback.
        made = await rm.connection(USER, receiver.https_url("/in", host="localhost"))
        detail = await rm.finished(USER, await rm.run(USER, made.connection.id, {}))
        assert detail.run.status == "failed" and detail.run.attempts == 1
        assert "loopback" in detail.attempts[0].error
        assert receiver.requests == []


async def test_plain_http_only_when_allowed(tmp_path, mesh, database_url, receiver):
    async with runner_mesh(tmp_path, mesh.pki_dir, database_url) as rm:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await rm.connection(USER, receiver.http_url("/plain"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with runner_mesh(tmp_path, mesh.pki_dir, database_url, allow_plain_http=True) as rm:
        made = await rm.connection(USER, receiver.http_url("/plain"))
        detail = await rm.finished(USER, await rm.run(USER, made.connection.id, {"a": 1}))
        assert detail.run.status == "succeeded"
        assert receiver.requests[0].scheme == "http"


async def test_egress_is_bound_to_the_fixed_source_address(tmp_path, mesh, database_url, receiver):
    async with runner_mesh(
        tmp_path,
        mesh.pki_dir,
        database_url,
        ca_file=str(receiver.ca_file),
        egress_source_address="127.0.0.2",
        egress_addresses=["198.51.100.7"],
    ) as rm:
        made = await rm.connection(USER, receiver.https_url("/egress"))
        detail = await rm.finished(USER, await rm.run(USER, made.connection.id, {}))
        assert detail.run.status == "succeeded"
        assert receiver.requests[0].client_host == "127.0.0.2"
        listed = await rm.stub.GetEgressAddresses(empty_pb2.Empty(), metadata=user_metadata(USER))
        assert list(listed.addresses) == ["198.51.100.7"]


async def test_a_schedule_fires_runs(tmp_path, mesh, database_url, receiver):
    async with runner_mesh(
        tmp_path, mesh.pki_dir, database_url, ca_file=str(receiver.ca_file)
    ) as rm:
        await rm.connection(
            USER, receiver.https_url("/tick"), trigger="schedule", every_seconds=1,
            body_template={"at": "{{ received_at }}"},
        )  # fmt: skip
        arrived = await receiver.wait_for_async(2, timeout=10)
        assert all(r.json()["at"] for r in arrived)
        activity = await rm.stub.ListActivity(rpb.ListRequest(), metadata=user_metadata(USER))
        assert {r.trigger for r in activity.runs} == {"schedule"}


async def test_a_delivery_slower_than_its_lease_keeps_it(tmp_path, mesh, database_url, receiver):
    async with runner_mesh(
        tmp_path, mesh.pki_dir, database_url, ca_file=str(receiver.ca_file), lease_seconds=0.6
    ) as rm:
        receiver.respond(200, body={"ok": True}, delay=2.0)
        made = await rm.connection(USER, receiver.https_url("/slow"))
        detail = await rm.finished(USER, await rm.run(USER, made.connection.id, {}))
        assert detail.run.status == "succeeded" and detail.run.attempts == 1
        # Renewed all along: no other claim, so no second delivery.
        assert len(receiver.requests) == 1


async def test_a_burst_to_one_connection_resolves_its_credential_once(rm, receiver):
    from sqlalchemy import create_engine, text

    credential = await rm.credential(
        USER, "api_key", {"key": "sk_burst_0123456789", "header": "X-Api-Key"}
    )
    made = await rm.connection(USER, receiver.https_url("/burst"), credential_id=credential)
    runs = [await rm.run(USER, made.connection.id, {"i": i}) for i in range(8)]
    for run_id in runs:
        assert (await rm.finished(USER, run_id)).run.status == "succeeded"
    assert len(receiver.requests) == 8
    assert all(r.headers["x-api-key"] == "sk_burst_0123456789" for r in receiver.requests)
    await rm.vault.parts.audit.flush()  # resolves are committed within its flush
    engine = create_engine(f"sqlite:///{rm.var.parent / 'vault.db'}")
    with engine.connect() as connection:
        resolves = connection.execute(
            text("SELECT count(*) FROM audit_events WHERE action = 'resolve'")
        ).scalar()
    engine.dispose()
    # Kept in the worker's memory for a few seconds: one vault call, audited, for the burst.
    assert resolves == 1
