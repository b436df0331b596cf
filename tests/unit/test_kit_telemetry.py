"""The OTLP-JSON file exporter writes what the protobuf JSON mapping of the OTLP encoding would,
and rotates its files by size and age, deleting old ones."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from services.kit.clock import SettableClock
from services.kit.telemetry import OtlpJsonFileExporter, otlp_json


def reference(spans) -> dict:
    document = MessageToDict(encode_spans(spans))

    def hex_ids(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                    node[key] = base64.b64decode(value).hex()
                else:
                    hex_ids(value)
        elif isinstance(node, list):
            for item in node:
                hex_ids(item)

    hex_ids(document)
    return document


def test_the_encoding_matches_the_protobuf_reference():
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "unit", "n": 3}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("leadmesh.test", "1.2")
    other = provider.get_tracer("other")
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        parent.set_attributes(
            {"s": "x", "i": 7, "f": 0.5, "b": True, "list": ["a", "b"], "ints": [1, 2]}
        )
        parent.add_event("happened", {"k": "v"})
        with other.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.ERROR, "it broke"))
        linked = tracer.start_span("linked", links=[Link(parent.get_span_context(), {"w": 1})])
        linked.set_status(Status(StatusCode.OK))
        linked.end()
    spans = memory.get_finished_spans()
    assert otlp_json(spans) == reference(spans)


def _some_spans(count: int = 1):
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "unit"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for n in range(count):
        provider.get_tracer("t").start_span(f"span {n}").end()
    return memory.get_finished_spans()


def test_the_trace_file_rotates_by_size_and_old_files_are_deleted(tmp_path):
    clock = SettableClock()
    live = tmp_path / "runner.jsonl"
    exporter = OtlpJsonFileExporter(live, clock=clock, max_bytes=2000, keep_days=7, keep_files=100)
    spans = _some_spans(3)
    for _ in range(40):
        exporter.export(spans)
        clock.advance(hours=1)
    rotated = [path for _, path in exporter.rotated()]
    assert len(rotated) >= 5
    assert all(path.stat().st_size < 2000 + 1000 for path in rotated)
    # Every span is in exactly one file, whole lines of OTLP-JSON.
    files = [p for p in [*rotated, live] if p.exists()]
    lines = [line for p in files for line in p.read_text().splitlines()]
    assert len(lines) == 40 and all(json.loads(line)["resourceSpans"] for line in lines)
    # A week later, files rotated more than 7 days ago are gone; the newer ones stay.
    clock.advance(days=7, hours=-20)
    exporter.export(spans)
    kept = exporter.rotated()
    assert kept and all(clock.now() - when <= timedelta(days=7) for when, _ in kept)
    assert not rotated[0].exists() and rotated[-1].exists()


def test_a_slow_trace_file_rotates_daily_and_at_most_the_newest_files_are_kept(tmp_path):
    clock = SettableClock()
    live = tmp_path / "vault.jsonl"
    other = tmp_path / "vault-worker.20250101T000000-1.jsonl"  # another service's file
    other.write_text("")
    exporter = OtlpJsonFileExporter(live, clock=clock, max_bytes=10**9, keep_days=30, keep_files=3)
    for _ in range(6):
        clock.advance(days=1)
        exporter.export(_some_spans())
    assert len(exporter.rotated()) == 3
    assert other.exists()
