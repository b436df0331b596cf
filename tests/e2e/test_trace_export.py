"""Operators follow a lead in one trace: a mesh exporting OTLP/gRPC to a real receiver (what the
collector is in the compose deployment) is driven through a webhook's life, and the spans that
arrive make one trace from the third party's POST through the gateway, the runner and the vault to
the call to the user's API, edge by edge, with the semantic conventions' attributes and status
codes; a credential the vault refuses is NOT_FOUND on both sides of the runner → vault edge and an
error on the runner's call only (a server span errs on its own failures alone, as the RPC
conventions write it); retries are spans of the one run, counting their resends. Then each
standard OTEL_* variable, given to a process on its own, changes what that process exports."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    PASSWORD,
    Mesh,
    SharedReceiver,
    action,
    create,
    finished,
    register_and_login,
)
from tests.e2e.test_metrics import mesh_otlp, otlp  # noqa: F401 - the same mesh, as fixtures
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan

ROOT = Path(__file__).resolve().parents[2]
HOOK = "POST /hooks/{token}"
INGEST = "leadmesh.runner.v1.RunnerService/IngestWebhook"
RESOLVE = "leadmesh.vault.v1.VaultService/ResolveCredential"


def _trace(
    received: OtlpReceiver, trace_id: str, done: Callable[[list[ReceivedSpan]], bool]
) -> list[ReceivedSpan]:
    """The spans of one trace received so far, once `done(spans)` holds (or 30 s passed): each
    process exports in batches of its own."""

    def of_trace(found: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in found if s.trace_id == trace_id]

    return of_trace(received.wait_for_spans(lambda found: done(of_trace(found))))


def _one(spans: list[ReceivedSpan], **match) -> ReceivedSpan:
    hits = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(hits) == 1, f"{len(hits)} spans match {match}: {[s.name for s in spans]}"
    return hits[0]


def _nearest(span: ReceivedSpan, spans: list[ReceivedSpan], kind: str) -> ReceivedSpan | None:
    """The span's closest ancestor of `kind` (internal spans may lie between)."""
    by_id = {s.span_id: s for s in spans}
    parent = by_id.get(span.parent_id)
    while parent is not None and parent.kind != kind:
        parent = by_id.get(parent.parent_id)
    return parent


def _rpc(span: ReceivedSpan, code: int) -> None:
    service, method = span.name.rsplit("/", 1)
    assert span.attributes["rpc.system"] == "grpc"
    assert (span.attributes["rpc.service"], span.attributes["rpc.method"]) == (service, method)
    assert span.attributes["rpc.grpc.status_code"] == code


def _credential(owner: httpx.Client, key: str) -> str:
    made = owner.post(
        "/v1/credentials",
        json={"name": "CRM", "kind": "api_key", "provider": "crm",
              "secret": {"key": key, "header": "X-Api-Key"}},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    return made.json()["id"]


@pytest.fixture(scope="module")
def delivered(mesh_otlp: Mesh, receiver: SharedReceiver) -> dict:  # noqa: F811
    """One lead through a webhook to the receiver, with an API key from the vault."""
    key = f"sk_canary_trace_{uuid.uuid4().hex}"
    path = receiver.path("exported")
    with mesh_otlp.client() as owner, mesh_otlp.client() as caller:
        address = register_and_login(owner)
        credential_id = _credential(owner, key)
        url = receiver.https_url(path) + "?api_key=trace-export-canary"
        connection = create(
            owner,
            trigger={"type": "webhook"},
            action=action(url, credential_id=credential_id),
        )
        accepted = caller.post(connection["webhook_url"], json={"lead": "traced"})
        assert accepted.status_code == 202, accepted.text
        run = finished(owner, accepted.json()["run_id"])
    assert run["status"] == "succeeded", run
    return {
        "run": run,
        "secrets": {
            "key": key,
            "address": address,
            "password": PASSWORD,
            "receiver path": path,
            "query": "trace-export-canary",
            "webhook token": connection["webhook_url"].rsplit("/", 1)[1],
        },
    }


def test_a_webhook_is_one_trace_from_gateway_to_the_users_api(
    otlp: OtlpReceiver,  # noqa: F811
    delivered: dict,
    receiver: SharedReceiver,
):
    run = delivered["run"]

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {(s.service, s.kind, s.name) for s in spans}
        return {("gateway", "SERVER", HOOK), ("vault", "SERVER", RESOLVE)} <= names and any(
            s.service == "runner" and s.kind == "CLIENT" and s.name == "POST" for s in spans
        )

    spans = _trace(otlp, run["trace_id"], complete)
    assert complete(spans), f"incomplete trace: {sorted({(s.service, s.name) for s in spans})}"

    # The third party's POST: the gateway's server span, the root.
    hook = _one(spans, service="gateway", kind="SERVER", name=HOOK)
    assert hook.parent_id == "" and hook.status == "UNSET"
    assert hook.attributes["http.request.method"] == "POST"
    assert hook.attributes["url.scheme"] == "https"
    assert hook.attributes["http.route"] == "/hooks/{token}"
    assert hook.attributes["http.response.status_code"] == 202
    # gateway → runner: IngestWebhook, client beneath the request, server beneath the client.
    ingest_call = _one(spans, service="gateway", kind="CLIENT", name=INGEST)
    assert _nearest(ingest_call, spans, "SERVER") == hook
    ingest = _one(spans, service="runner", kind="SERVER", name=INGEST)
    assert ingest.parent_id == ingest_call.span_id
    for span in (ingest_call, ingest):
        _rpc(span, 0)
        assert span.status == "UNSET"
    # The worker continues the trace: runner → vault for the key, then the call to the user's API.
    resolve_call = _one(spans, service="runner", kind="CLIENT", name=RESOLVE)
    resolve = _one(spans, service="vault", kind="SERVER", name=RESOLVE)
    assert resolve.parent_id == resolve_call.span_id
    for span in (resolve_call, resolve):
        _rpc(span, 0)
        assert span.status == "UNSET"
    call = _one(spans, service="runner", kind="CLIENT", name="POST")
    for span in (resolve_call, call):
        assert _nearest(span, spans, "SERVER") == ingest
    port = httpx.URL(receiver.https_url()).port
    assert call.attributes["http.request.method"] == "POST"
    assert call.attributes["server.address"] == "127.0.0.1"
    assert call.attributes["server.port"] == port
    assert call.attributes["url.scheme"] == "https"
    assert call.attributes["http.response.status_code"] == 200
    assert call.attributes["leadmesh.run_id"] == run["run_id"]
    assert "http.request.resend_count" not in call.attributes  # the run's first request
    assert not {"url.full", "url.path", "url.query", "http.url"} & set(call.attributes)
    assert call.status == "UNSET"
    # Database spans beneath the servers that caused them.
    for server in (ingest, resolve):
        beneath = [
            s
            for s in spans
            if s.service == server.service and _nearest(s, spans, "SERVER") == server
        ]
        assert any("db.query.text" in s.attributes for s in beneath), server.name
    assert all(s.status != "ERROR" for s in spans)
    # Every process names itself, its version and its instance.
    for span in spans:
        assert {"service.name", "service.version", "service.instance.id"} <= set(span.resource)


def test_no_secret_or_personal_data_in_exported_spans(
    otlp: OtlpReceiver,  # noqa: F811
    delivered: dict,
):
    _trace(otlp, delivered["run"]["trace_id"], lambda spans: any(s.name == "POST" for s in spans))
    text = otlp.traces_text()
    assert HOOK in text
    leaked = {name for name, value in delivered["secrets"].items() if value in text}
    assert not leaked, f"exported spans carry: {sorted(leaked)}"


def test_a_refused_credential_is_the_vaults_answer_and_the_runners_error(
    mesh_otlp: Mesh,  # noqa: F811
    otlp: OtlpReceiver,  # noqa: F811
    receiver: SharedReceiver,
):
    path = receiver.path("refused")
    with mesh_otlp.client() as owner, mesh_otlp.client() as caller:
        register_and_login(owner)
        credential_id = _credential(owner, f"sk_deleted_{uuid.uuid4().hex}")
        connection = create(
            owner,
            trigger={"type": "webhook"},
            action=action(receiver.https_url(path), credential_id=credential_id),
        )
        assert owner.delete(f"/v1/credentials/{credential_id}").status_code == 204
        accepted = caller.post(connection["webhook_url"], json={"lead": "refused"})
        assert accepted.status_code == 202, accepted.text
        run = finished(owner, accepted.json()["run_id"])
    assert run["status"] == "failed" and receiver.to(path) == []

    def pairs(spans: list[ReceivedSpan]) -> list[tuple[ReceivedSpan, ReceivedSpan]]:
        """(the runner's ResolveCredential call, the vault's span serving it)"""
        by_id = {s.span_id: s for s in spans}
        served = [s for s in spans if s.service == "vault" and s.name == RESOLVE]
        return [(by_id[s.parent_id], s) for s in served if s.parent_id in by_id]

    spans = _trace(otlp, run["trace_id"], lambda spans: bool(pairs(spans)) and any(
        s.name == HOOK for s in spans
    ))  # fmt: skip
    assert pairs(spans), sorted({(s.service, s.name) for s in spans})
    for client, server in pairs(spans):
        assert (client.service, client.kind, server.kind) == ("runner", "CLIENT", "SERVER")
        _rpc(client, 5)  # NOT_FOUND, on both sides of the edge
        _rpc(server, 5)
        # A client span errs on any status but OK; a server span only on its own failures
        # (UNKNOWN, INTERNAL, UNAVAILABLE…): a caller asking for what does not exist is not one.
        assert client.status == "ERROR" and client.status_message == "no such credential"
        assert server.status == "UNSET"
    errors = {s.span_id for s in spans if s.status == "ERROR"}
    assert errors == {client.span_id for client, _ in pairs(spans)}, "an error on another span"
    hook = _one(spans, service="gateway", kind="SERVER", name=HOOK)
    assert hook.attributes["http.response.status_code"] == 202
    assert not [s for s in spans if s.service == "runner" and s.name == "POST"]


def test_each_retry_is_a_span_of_the_run_counting_its_resends(
    mesh_otlp: Mesh,  # noqa: F811
    otlp: OtlpReceiver,  # noqa: F811
    receiver: SharedReceiver,
):
    path = receiver.path("retried")
    receiver.answer(path, 503, {"error": "busy"})
    with mesh_otlp.client() as owner:
        register_and_login(owner)
        connection = create(
            owner, trigger={"type": "webhook"}, action=action(receiver.https_url(path)),
            max_attempts=3,
        )  # fmt: skip
        with mesh_otlp.client() as caller:
            accepted = caller.post(connection["webhook_url"], json={"lead": "retried"})
        assert accepted.status_code == 202, accepted.text
        run = finished(owner, accepted.json()["run_id"])
    assert run["status"] == "failed" and run["attempt_count"] == 3

    def calls(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.kind == "CLIENT" and s.name == "POST"]

    sent = calls(_trace(otlp, run["trace_id"], lambda spans: len(calls(spans)) >= 3))
    assert len(sent) == 3
    assert {s.attributes["leadmesh.run_id"] for s in sent} == {run["run_id"]}
    counts = sorted(s.attributes.get("http.request.resend_count", 0) for s in sent)
    assert counts == [0, 1, 2]
    for span in sent:
        assert span.attributes["http.response.status_code"] == 503
        assert span.status == "ERROR" and span.attributes["error.type"] == "503"


# A process on its own, set up as every service sets itself up, making one span.
_PROBE = """
from opentelemetry import trace
from services.kit.config import MeshSettings
from services.kit.telemetry import setup_telemetry

telemetry = setup_telemetry("vault", MeshSettings())
with trace.get_tracer("probe").start_as_current_span("probe"):
    pass
telemetry.shutdown()
"""


@pytest.fixture
def probe(tmp_path: Path) -> Iterator:
    """Runs the probe process with the given OTEL_* settings (none of the caller's) against a
    receiver of this test's; returns the probe spans it received so far, in this test."""
    with OtlpReceiver() as receiver:

        def run(endpoint: str | None = "grpc", **settings: str) -> list[ReceivedSpan]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
            env.update(LEADMESH_VAR_DIR=str(tmp_path / "var"), VAULT_METRICS_PORT="0", **settings)
            if endpoint == "grpc":
                env.update(
                    OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                    OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                )
            elif endpoint == "http":
                env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint)
            done = subprocess.run(
                [sys.executable, "-c", _PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            return [s for s in receiver.spans() if s.name == "probe"]

        yield run


def test_resource_names_service_version_and_instance(probe):
    first, second = probe()[0], probe()[-1]
    assert first.resource["service.name"] == "vault"
    assert first.resource["service.version"]
    assert first.resource["service.instance.id"] != second.resource["service.instance.id"]


def test_otel_service_name_wins_over_ours(probe):
    (span,) = probe(OTEL_SERVICE_NAME="vault-eu-1")
    assert span.resource["service.name"] == "vault-eu-1"


def test_otel_resource_attributes_are_added_and_win(probe):
    (span,) = probe(
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=staging,service.instance.id=vault-a"
    )
    assert span.resource["deployment.environment.name"] == "staging"
    assert span.resource["service.instance.id"] == "vault-a"
    assert span.resource["service.name"] == "vault"


def test_otel_traces_sampler_and_its_argument(probe):
    assert probe(OTEL_TRACES_SAMPLER="always_off") == []
    assert probe(OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0") == []
    assert len(probe(OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="1")) == 1


def test_otel_sdk_disabled_exports_nothing(probe, tmp_path: Path):
    assert probe(OTEL_SDK_DISABLED="true") == []
    assert probe(None, OTEL_SDK_DISABLED="true") == []
    assert not (tmp_path / "var" / "traces").exists()


def test_otlp_protocols_and_the_file_fallback(probe, tmp_path: Path):
    assert len(probe("http")) == 1  # OTEL_EXPORTER_OTLP_PROTOCOL unset: http/protobuf
    assert len(probe("grpc")) == 2
    assert not (tmp_path / "var" / "traces").exists()  # exported, not written
    assert len(probe(None)) == 2
    assert '"name":"probe"' in (tmp_path / "var" / "traces" / "vault.jsonl").read_text()
