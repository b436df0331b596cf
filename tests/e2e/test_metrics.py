"""Operators see the mesh in numbers: a mesh exporting OTLP/gRPC to a real receiver (what the
collector is in the compose deployment) is driven through a webhook's life, and the metrics of
every process arrive with the names and bounded labels the dashboard reads; each process answers
`GET /metrics` in the Prometheus text format with the same series; and none of it carries the
e-mail, password, session, token, key or user id that went through."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.kit.metrics import SERIES
from tests.e2e.conftest import (
    PASSWORD,
    Inbox,
    Mesh,
    SharedReceiver,
    _start_mesh,
    action,
    create,
    finished,
    new_email,
    register_and_login,
    runner_env,
)
from tests.support.oauth_server import OAuthServer
from tests.support.otlp_receiver import OtlpReceiver, Point


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def mesh_otlp(
    tmp_path_factory: pytest.TempPathFactory,
    inbox: Inbox,
    oauth_provider: OAuthServer,
    receiver: SharedReceiver,
    otlp: OtlpReceiver,
) -> Iterator[Mesh]:
    extra = {
        **runner_env(receiver),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        # Retention lists its participants' categories at once and then often.
        "RETENTION_DISCOVER_SECONDS": "1",
    }
    yield from _start_mesh(tmp_path_factory.mktemp("mesh-otlp"), inbox, oauth_provider, extra)


@pytest.fixture(scope="module")
def webhook_life(mesh_otlp: Mesh, receiver: SharedReceiver) -> dict[str, str]:
    """A user signs up (and once mistypes the password), stores an API key, connects a webhook
    to the receiver; a lead arrives and is delivered with the key; a stranger's webhook to an
    address that does not exist is refused. Returns what must never appear in a metric."""
    secrets: dict[str, str] = {}
    with mesh_otlp.client() as owner, mesh_otlp.client() as caller:
        address = register_and_login(owner)
        assert owner.post("/v1/sessions", json={"email": address, "password": "wrong"}).status_code
        user_id = owner.get("/v1/me").json()["id"]
        key = f"sk_canary_metrics_{uuid.uuid4().hex}"
        credential = owner.post(
            "/v1/credentials",
            json={"name": "CRM", "kind": "api_key", "provider": "crm",
                  "secret": {"key": key, "header": "X-Api-Key"}},
        )  # fmt: skip
        assert credential.status_code == 201, credential.text
        path = receiver.path("metrics")
        connection = create(
            owner,
            trigger={"type": "webhook"},
            action=action(receiver.https_url(path), credential_id=credential.json()["id"]),
        )
        lead = new_email("canary-lead")
        accepted = caller.post(connection["webhook_url"], json={"email": lead})
        assert accepted.status_code == 202, accepted.text
        missing = caller.post(f"/hooks/{uuid.uuid4().hex}", json={"email": lead})
        assert missing.status_code == 404
        receiver.wait_to(path)
        assert finished(owner, accepted.json()["run_id"])["status"] == "succeeded"
        secrets = {
            "address": address,
            "local part": address.split("@")[0],
            "password": PASSWORD,
            "user id": user_id,
            "session": owner.cookies["lm_session"],
            "csrf": owner.cookies["lm_csrf"],
            "key": key,
            "webhook token": connection["webhook_url"].rsplit("/", 1)[1],
            "lead": lead,
            "receiver path": path,
        }
    return secrets


# (process, metric, labels that a point must carry) the webhook's life must produce.
EXPECTED = [
    ("gateway", "http.server.request.duration",
     {"http.route": "/hooks/{token}", "http.request.method": "POST",
      "http.response.status_code": "202"}),
    ("gateway", "http.server.request.duration",
     {"http.route": "/v1/sessions", "http.response.status_code": "401"}),
    ("runner", "rpc.server.duration",
     {"rpc.system": "grpc", "rpc.service": "leadmesh.runner.v1.RunnerService",
      "rpc.method": "IngestWebhook", "rpc.grpc.status_code": "0"}),
    ("runner", "rpc.server.duration",
     {"rpc.method": "IngestWebhook", "rpc.grpc.status_code": "5"}),
    ("vault", "rpc.server.duration",
     {"rpc.service": "leadmesh.vault.v1.VaultService", "rpc.method": "ResolveCredential"}),
    ("identity", "rpc.server.duration", {"rpc.service": "leadmesh.identity.v1.IdentityService"}),
    ("runner", "leadmesh.webhooks.accepted", {"duplicate": "False"}),
    ("runner", "leadmesh.webhooks.refused", {"reason": "WEBHOOK_NOT_FOUND"}),
    ("runner", "leadmesh.deliveries", {"outcome": "succeeded", "attempt": "1"}),
    ("runner", "leadmesh.queue.depth", {}),
    ("runner", "leadmesh.queue.oldest_age", {}),
    ("vault", "leadmesh.vault.resolves", {"kind": "api_key", "outcome": "ok"}),
    ("vault", "leadmesh.vault.audit.pending", {}),
    ("identity", "leadmesh.logins", {"outcome": "success"}),
    ("identity", "leadmesh.logins", {"outcome": "invalid_credentials"}),
    ("retention", "leadmesh.retention.compliant", {"owner": "runner", "category": "webhooks_log"}),
    ("retention", "rpc.server.duration", {"rpc.service": "grpc.health.v1.Health"}),
]  # fmt: skip


def _missing(points: list[Point]) -> list[tuple]:
    def found(service: str, name: str, labels: dict[str, str]) -> bool:
        return any(
            p.service == service and p.name == name and labels.items() <= p.labels.items()
            for p in points
        )

    return [e for e in EXPECTED if not found(*e)]


def test_metrics_arrive_by_otlp_with_their_names_and_labels(
    otlp: OtlpReceiver, webhook_life: dict[str, str]
):
    points = otlp.wait_for(lambda points: not _missing(points))
    assert not _missing(points), f"not received: {_missing(points)}"
    assert {p.name for p in points} <= set(SERIES), "a series SERIES does not declare"
    # Bounded labels only: each label name is one SERIES declares for its metric.
    for point in points:
        if point.name in SERIES:
            assert set(point.labels) <= set(SERIES[point.name].labels), point


def test_every_process_answers_get_metrics_in_the_prometheus_text_format(
    mesh_otlp: Mesh, webhook_life: dict[str, str]
):
    wanted = {}
    for service, name, _labels in EXPECTED:
        wanted.setdefault(service, set()).add(SERIES[name].prometheus)
    for process in mesh_otlp.metrics_ports():
        answer = mesh_otlp.scrape(process)
        assert answer.status_code == 200, process
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = list(text_string_to_metric_families(answer.text))
        names = {s.name for family in families for s in family.samples}
        samples = {name.removesuffix("_bucket").removesuffix("_count") for name in names}
        for series in wanted.get(process, set()):
            assert series in samples or f"{series}_total" in names, (process, series)
        info = [s for f in families if f.name in ("target", "target_info") for s in f.samples]
        assert info and info[0].labels["service_name"] == process
    assert (
        httpx.get(f"http://127.0.0.1:{mesh_otlp.metrics_ports()['gateway']}/elsewhere").status_code
        == 404
    )


def test_no_personal_data_or_secret_in_any_metric(
    otlp: OtlpReceiver, mesh_otlp: Mesh, webhook_life: dict[str, str]
):
    otlp.wait_for(lambda points: not _missing(points))
    time.sleep(1.0)  # one more export of every process, after the whole life
    corpus = otlp.text() + "".join(mesh_otlp.scrape(p).text for p in mesh_otlp.metrics_ports())
    assert "leadmesh_webhooks_accepted_total" in corpus and "IngestWebhook" in corpus
    for what, secret in webhook_life.items():
        assert secret not in corpus, f"the {what} leaked into a metric"


def test_up_prints_where_metrics_listen(mesh_otlp: Mesh):
    banner = "".join(mesh_otlp.output)
    for process, port in mesh_otlp.metrics_ports().items():
        assert f"http://127.0.0.1:{port}/metrics" in banner, process
