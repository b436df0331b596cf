"""A process's scrape endpoint: `GET /metrics` on LEADMESH_HOST and its metrics port answers the
Prometheus text format (and nothing else is served there), a taken port stops the process with
one line naming the variable, runner workers on one machine take the next free ports, and
`OTEL_SDK_DISABLED` turns it all off."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from services.kit.config import MeshSettings
from services.kit.metrics import setup_metrics
from services.kit.telemetry import _serve_metrics, resource_of
from tests.conftest import free_port


@pytest.fixture(autouse=True)
def _no_global_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """These providers stay the tests' own: the process's global one is set once, and
    test_domain_metrics.py reads through it."""
    monkeypatch.setattr("services.kit.metrics.metrics.set_meter_provider", lambda _provider: None)


@contextmanager
def taken(port: int) -> Iterator[socket.socket]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        yield holder


def _mesh(tmp_path, **settings: str) -> MeshSettings:
    return MeshSettings(LEADMESH_VAR_DIR=str(tmp_path), **settings)


def test_get_metrics_answers_the_prometheus_text_format_and_nothing_else(tmp_path):
    served = setup_metrics(resource_of("identity"), _mesh(tmp_path), 0)
    try:
        served.provider.get_meter("test").create_counter("leadmesh.logins").add(
            1, {"outcome": "success"}
        )
        answer = httpx.get(f"http://127.0.0.1:{served.port}/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'leadmesh_logins_total{otel_scope_name="test"' in answer.text
        assert 'service_name="identity"' in answer.text  # target_info names the process
        assert "process_resident_memory_bytes" in answer.text
        assert httpx.get(f"http://127.0.0.1:{served.port}/").status_code == 404
        assert httpx.post(f"http://127.0.0.1:{served.port}/metrics").status_code == 404
    finally:
        served.shutdown()


def test_a_taken_metrics_port_stops_the_process_with_one_line_naming_the_variable(tmp_path):
    port = free_port()
    with taken(port), pytest.raises(SystemExit) as stopped:
        _serve_metrics("vault", resource_of("vault"), _mesh(tmp_path, VAULT_METRICS_PORT=str(port)))
    message = str(stopped.value.code)
    assert message.startswith("leadmesh: vault cannot serve metrics on 127.0.0.1:")
    assert message.endswith("set VAULT_METRICS_PORT to a free port") and "\n" not in message


def test_runner_workers_take_the_next_free_port_from_theirs(tmp_path):
    port = free_port()
    mesh = _mesh(tmp_path, RUNNER_WORKER_METRICS_PORT=str(port))
    with taken(port):
        served = _serve_metrics("runner-worker", resource_of("runner-worker"), mesh)
    try:
        assert served.port is not None and served.port > port
    finally:
        served.shutdown()


def test_otel_sdk_disabled_serves_no_metrics(tmp_path):
    port = free_port()
    mesh = _mesh(tmp_path, OTEL_SDK_DISABLED="true", GATEWAY_METRICS_PORT=str(port))
    served = _serve_metrics("gateway", resource_of("gateway"), mesh)
    assert served.provider is None and served.port is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics")
