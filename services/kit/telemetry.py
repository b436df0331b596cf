"""OpenTelemetry for a process: traces exported with OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set,
otherwise as OTLP-JSON lines under `var/traces/<service>.jsonl` (one ExportTraceServiceRequest a
line, ids in hex as the OTLP/JSON encoding wants). Span attributes carry ids, never e-mail
addresses, passwords or secrets."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Sequence
from pathlib import Path

from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from services.kit.config import MeshSettings

_HEX_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class OtlpJsonFileExporter(SpanExporter):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        document = MessageToDict(encode_spans(spans))
        _ids_to_hex(document)
        line = json.dumps(document, separators=(",", ":")) + "\n"
        with self._lock, self._path.open("a", encoding="utf-8") as out:
            out.write(line)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _ids_to_hex(node) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _HEX_ID_FIELDS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _ids_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            _ids_to_hex(item)


def setup_telemetry(service: str, mesh: MeshSettings) -> TracerProvider:
    """Installs the global tracer provider for this process and returns it (to flush at exit)."""
    resource = Resource.create({SERVICE_NAME: service})
    provider = TracerProvider(resource=resource)
    if mesh.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter: SpanExporter = OTLPSpanExporter()
    else:
        exporter = OtlpJsonFileExporter(mesh.var_dir / "traces" / f"{service}.jsonl")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def instrument_engine(engine) -> None:
    """Database spans beneath the RPC that caused them (statements only, never parameters)."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # The instrumentation declares SQLAlchemy < 2.1 but only uses the cursor-execute events,
    # which 2.1 keeps; without skipping the check it silently instruments nothing.
    SQLAlchemyInstrumentor().instrument(
        engine=getattr(engine, "sync_engine", engine), skip_dep_check=True
    )
