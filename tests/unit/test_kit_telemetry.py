"""The OTLP-JSON file exporter writes what the protobuf JSON mapping of the OTLP encoding would."""

from __future__ import annotations

import base64

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from services.kit.telemetry import otlp_json


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
