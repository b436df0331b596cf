"""The runner's HTTP client spans, as the HTTP semantic conventions write them: a status of 400 or
more is the client span's error, every request of a run after its first counts its resends
(earlier attempts included), and no URL, path or query is ever an attribute."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from services.runner import tracing

URL = httpx.URL("https://api.example.com:8443/leads/secret-path?api_key=secret-query")


@pytest.fixture
def memory(monkeypatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("leadmesh.runner"))
    return exporter


def _call(status: int) -> None:
    with tracing.http_call("POST", URL) as span:
        tracing.record_status(span, status)


@pytest.mark.parametrize(
    ("status", "error"), [(200, False), (302, False), (404, True), (429, True), (503, True)]
)
def test_a_status_of_400_or_more_is_the_client_spans_error(memory, status: int, error: bool):
    _call(status)
    (span,) = memory.get_finished_spans()
    assert span.attributes["http.response.status_code"] == status
    assert (span.status.status_code is StatusCode.ERROR) is error
    assert span.attributes.get("error.type") == (str(status) if error else None)


def test_the_attributes_name_the_server_never_the_url(memory):
    with tracing.continuing(None, "run-1"):
        _call(200)
    (span,) = memory.get_finished_spans()
    assert span.name == "POST"
    assert dict(span.attributes) == {
        "http.request.method": "POST",
        "url.scheme": "https",
        "server.address": "api.example.com",
        "server.port": 8443,
        "leadmesh.run_id": "run-1",
        "http.response.status_code": 200,
    }
    assert "secret" not in repr(dict(span.attributes))


def test_each_request_after_a_runs_first_counts_its_resends(memory):
    with tracing.continuing(None, "run-1"):  # the first attempt: a 307, then its next hop
        _call(307)
        _call(503)
    with tracing.continuing(None, "run-1", sent_before=2):  # a retry, claimed later
        _call(200)
    counts = [s.attributes.get(tracing.RESEND_COUNT) for s in memory.get_finished_spans()]
    assert counts == [None, 1, 2]


def test_a_call_outside_a_delivery_counts_nothing(memory):
    _call(200)
    _call(200)
    assert [tracing.RESEND_COUNT in s.attributes for s in memory.get_finished_spans()] == [
        False,
        False,
    ]
