"""`leadmesh trace` reading the OTLP-JSON files the kit's exporter writes, or a Jaeger query API
holding the same spans: a scheduled run (no request started its trace) is found by the run id its
HTTP calls carry, each attempt's trace whole, and the tree orders children by start time whatever
order the files hold them in."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx
from leadmesh.runner.v1 import runner_pb2 as pb
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from cli.spans import tree
from cli.trace import spans_of
from services.kit.config import MeshSettings
from services.kit.telemetry import OtlpJsonFileExporter
from services.runner import tracing
from tests.support.jaeger import JaegerQuery, as_jaeger


def _attempt(provider: TracerProvider, run_id: str | None) -> None:
    """One delivery attempt as the worker makes it: no parent, an HTTP call, a step inside."""
    tracer = provider.get_tracer("test")
    with tracing.continuing(None, run_id):
        with tracer.start_as_current_span("deliver"):
            with tracing.http_call("POST", httpx.URL("https://api.example.com/leads")) as span:
                tracing.record_status(span, 503)
            with tracer.start_as_current_span("record outcome"):
                pass


def _provider(monkeypatch, path: Path) -> TracerProvider:
    """A provider writing OTLP-JSON to `path`; the runner's client spans go to it."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "runner"}))
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(path)))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("leadmesh.runner"))
    return provider


def test_a_scheduled_runs_attempts_are_found_by_its_run_id(tmp_path: Path, monkeypatch):
    provider = _provider(monkeypatch, tmp_path / "traces" / "runner.jsonl")
    _attempt(provider, "run-7")
    _attempt(provider, "run-7")
    _attempt(provider, "run-8")  # another run's, in the same file
    provider.shutdown()

    mesh = MeshSettings(var_dir=tmp_path, _env_file=None)
    args = argparse.Namespace(jaeger=None)
    found = spans_of(args, mesh, pb.RunTrace(run_id="run-7", trace_id="", status="failed"))
    assert len({s.trace_id for s in found}) == 2  # one trace per attempt
    roots = tree(found)
    assert [r.name for r in roots] == ["deliver", "deliver"]
    for root in roots:
        assert [c.name for c in root.children] == ["POST", "record outcome"]
        call = root.children[0]
        assert call.attributes["leadmesh.run_id"] == "run-7"
        assert call.error and call.service == "runner" and call.kind == "client"
    assert not [s for s in found if s.attributes.get("leadmesh.run_id") == "run-8"]


def test_a_span_outside_a_delivery_names_no_run(tmp_path: Path, monkeypatch):
    provider = _provider(monkeypatch, tmp_path / "runner.jsonl")
    _attempt(provider, None)
    provider.shutdown()
    written = (tmp_path / "runner.jsonl").read_text()
    assert '"name":"POST"' in written and "leadmesh.run_id" not in written


def _exported(path: Path) -> list[dict]:
    """The file's spans, each with its service, as Jaeger would have received them."""
    found = []
    for line in path.read_text().splitlines():
        for resource in json.loads(line)["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                found += [{**span, "service": "runner"} for span in scope["spans"]]
    return found


def test_a_scheduled_runs_attempts_are_found_in_jaeger_by_its_run_id(tmp_path: Path, monkeypatch):
    written = tmp_path / "runner.jsonl"
    provider = _provider(monkeypatch, written)
    _attempt(provider, "run-7")
    _attempt(provider, "run-8")
    provider.shutdown()
    by_trace: dict[str, list[dict]] = {}
    for span in _exported(written):
        by_trace.setdefault(span["traceId"], []).append(span)
    with JaegerQuery() as jaeger:
        jaeger.traces = {trace_id: as_jaeger(found) for trace_id, found in by_trace.items()}
        args = argparse.Namespace(jaeger=jaeger.url)
        mesh = MeshSettings(var_dir=tmp_path, _env_file=None)
        found = spans_of(args, mesh, pb.RunTrace(run_id="run-7", trace_id="", status="failed"))
    [root] = tree(found)
    assert root.name == "deliver" and [c.name for c in root.children] == ["POST", "record outcome"]
    assert root.children[0].attributes["leadmesh.run_id"] == "run-7"
    assert root.children[0].error and not root.error
    [search] = jaeger.asked
    assert search.startswith("/api/traces?service=runner&tags=")
