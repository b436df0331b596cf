"""OpenTelemetry for a process (its metrics: `metrics.py`): traces exported with OTLP
(OTEL_EXPORTER_OTLP_PROTOCOL grpc or http/protobuf) when OTEL_EXPORTER_OTLP_ENDPOINT is set,
otherwise as OTLP-JSON lines under `var/traces/<service>.jsonl` (one ExportTraceServiceRequest a
line, ids in hex as the OTLP/JSON encoding wants), rotated by size and age
(`<service>.<UTC time>-<pid>.jsonl`) and deleted past `LEADMESH_TRACES_KEEP_DAYS` or
`LEADMESH_TRACES_KEEP_FILES`. Span attributes carry ids, never e-mail addresses, passwords or
secrets. Background polls that find nothing run `untraced()`: a span per idle poll buries the
traces worth reading.

Configured by OpenTelemetry's own variables only: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
win over our defaults (the process's name, the package version, a random instance id);
OTEL_TRACES_SAMPLER/_ARG are read by the SDK's TracerProvider (parent-based always-on when unset);
OTEL_SDK_DISABLED=true exports nothing. Instrumentations write the stable HTTP and database
semantic conventions (OTEL_SEMCONV_STABILITY_OPT_IN defaults to `http,database`), and gRPC
spans are named `{rpc.service}/{rpc.method}` as the RPC conventions write it (without the
instrumentation's leading slash)."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from services.kit.clock import Clock, SystemClock
from services.kit.config import MeshSettings
from services.kit.metrics import Metrics, setup_metrics

# A live file is rotated at least this often, so that the age limit deletes old spans even in a
# file that grows slowly.
ROTATE_EVERY = timedelta(days=1)
_STAMP = "%Y%m%dT%H%M%S"


@contextmanager
def untraced() -> Iterator[None]:
    """No instrumentation spans (database, Redis, gRPC client) inside; for background polls."""
    with suppress_instrumentation():
        yield


class OtlpJsonFileExporter(SpanExporter):
    """Appends to `<dir>/<service>.jsonl`; past `max_bytes` or `ROTATE_EVERY` the file is renamed
    `<service>.<time>-<pid>.jsonl` (several processes of one service may share the name: each
    rename is atomic and a renamed file is never written again), and rotated files past
    `keep_days` or beyond the newest `keep_files` are deleted."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock | None = None,
        max_bytes: int = 16 * 1024 * 1024,
        keep_days: float = 7.0,
        keep_files: int = 20,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()
        self._clock = clock or SystemClock()
        self._max_bytes = max_bytes
        self._keep = timedelta(days=keep_days)
        self._keep_files = keep_files
        self._since = self._clock.now()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        line = json.dumps(otlp_json(spans), separators=(",", ":")) + "\n"
        with self._lock:
            with self._path.open("a", encoding="utf-8") as out:
                out.write(line)
                size = out.tell()
            now = self._clock.now()
            if size >= self._max_bytes or now - self._since >= ROTATE_EVERY:
                self._rotate(now)
        return SpanExportResult.SUCCESS

    def rotated(self) -> list[tuple[datetime, Path]]:
        """This service's rotated files, oldest first, with the time each was rotated."""
        found = []
        for path in self._path.parent.glob(f"{self._path.stem}.*.jsonl"):
            stamp = path.name[len(self._path.stem) + 1 :].split("-", 1)[0]
            try:
                when = datetime.strptime(stamp, _STAMP).replace(tzinfo=self._since.tzinfo)
            except ValueError:
                continue  # another service's file whose name starts like ours
            found.append((when, path))
        return sorted(found)

    def _rotate(self, now: datetime) -> None:
        self._since = now
        target = self._path.with_name(
            f"{self._path.stem}.{now.strftime(_STAMP)}-{os.getpid()}.jsonl"
        )
        try:
            self._path.rename(target)
        except FileNotFoundError:
            pass  # another process of this service rotated it first
        rotated = self.rotated()
        for index, (when, path) in enumerate(rotated):
            if now - when > self._keep or index < len(rotated) - self._keep_files:
                path.unlink(missing_ok=True)

    def shutdown(self) -> None:
        return None


# OTLP/JSON (the protobuf JSON mapping of ExportTraceServiceRequest, ids in hex), built straight
# from the SDK's spans: going through the protobuf messages and MessageToDict cost several times
# more, on every process's hot path. tests/unit/test_kit.py holds it equal to that reference.
_KINDS = ("SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT", "SPAN_KIND_PRODUCER",
          "SPAN_KIND_CONSUMER")  # fmt: skip
_STATUS = {StatusCode.UNSET: None, StatusCode.OK: "STATUS_CODE_OK",
           StatusCode.ERROR: "STATUS_CODE_ERROR"}  # fmt: skip


def otlp_json(spans: Sequence[ReadableSpan]) -> dict:
    resources: dict[int, tuple[dict, dict[tuple, list]]] = {}
    for span in spans:
        resource = span.resource
        entry = resources.get(id(resource))
        if entry is None:
            entry = resources[id(resource)] = ({"attributes": _attributes(resource.attributes)}, {})
        scope = span.instrumentation_scope
        key = (scope.name, scope.version or "") if scope else ("", "")
        entry[1].setdefault(key, []).append(_span(span))
    out = []
    for resource, scopes in resources.values():
        scope_spans = []
        for (name, version), encoded in scopes.items():
            scope: dict = {"name": name} if name else {}
            if version:
                scope["version"] = version
            scope_spans.append({"scope": scope, "spans": encoded})
        out.append({"resource": resource, "scopeSpans": scope_spans})
    return {"resourceSpans": out}


def _span(span: ReadableSpan) -> dict:
    context = span.context
    encoded: dict = {
        "traceId": f"{context.trace_id:032x}",
        "spanId": f"{context.span_id:016x}",
    }
    if context.trace_state:
        encoded["traceState"] = context.trace_state.to_header()
    if span.parent is not None:
        encoded["parentSpanId"] = f"{span.parent.span_id:016x}"
    encoded["flags"] = 0x100 | (0x200 if span.parent is not None and span.parent.is_remote else 0)
    encoded["name"] = span.name
    encoded["kind"] = _KINDS[span.kind.value]
    encoded["startTimeUnixNano"] = str(span.start_time)
    encoded["endTimeUnixNano"] = str(span.end_time)
    if span.attributes:
        encoded["attributes"] = _attributes(span.attributes)
    if span.dropped_attributes:
        encoded["droppedAttributesCount"] = span.dropped_attributes
    if span.events:
        encoded["events"] = [_event(e) for e in span.events]
    if span.links:
        encoded["links"] = [_link(link) for link in span.links]
    status: dict = {}
    if span.status.description:
        status["message"] = span.status.description
    code = _STATUS[span.status.status_code]
    if code:
        status["code"] = code
    encoded["status"] = status
    return encoded


def _event(event) -> dict:
    encoded: dict = {"timeUnixNano": str(event.timestamp), "name": event.name}
    if event.attributes:
        encoded["attributes"] = _attributes(event.attributes)
    return encoded


def _link(link) -> dict:
    encoded: dict = {
        "traceId": f"{link.context.trace_id:032x}",
        "spanId": f"{link.context.span_id:016x}",
    }
    if link.attributes:
        encoded["attributes"] = _attributes(link.attributes)
    encoded["flags"] = 0x100 | (0x200 if link.context.is_remote else 0)
    return encoded


def _attributes(attributes) -> list[dict]:
    return [{"key": k, "value": _any(v)} for k, v in attributes.items()]


def _any(value) -> dict:
    kind = type(value)
    if kind is str:  # by far the most common: checked first, exactly
        return {"stringValue": value}
    if kind is bool:
        return {"boolValue": value}
    if kind is int:
        return {"intValue": str(value)}
    if kind is float:
        return {"doubleValue": value}
    # Subclasses (enums and the like), bytes and sequences.
    if isinstance(value, bool):
        return {"boolValue": bool(value)}
    if isinstance(value, int):
        return {"intValue": str(int(value))}
    if isinstance(value, float):
        return {"doubleValue": float(value)}
    if isinstance(value, str):
        return {"stringValue": str(value)}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [_any(v) for v in value]}}
    return {"stringValue": str(value)}


@dataclass
class Telemetry:
    """A process's tracer provider and metrics: `shutdown()` at exit flushes both."""

    tracer_provider: TracerProvider
    metrics: Metrics

    @property
    def metrics_port(self) -> int | None:
        return self.metrics.port

    def shutdown(self) -> None:
        self.metrics.shutdown()
        self.tracer_provider.shutdown()


def resource_of(service: str) -> Resource:
    """service.name, its version and this process's instance id; OTEL_SERVICE_NAME and
    OTEL_RESOURCE_ATTRIBUTES (the operator's word) win over each of them."""
    try:
        version = importlib.metadata.version("leadmesh")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    ours = {SERVICE_NAME: service, SERVICE_VERSION: version, SERVICE_INSTANCE_ID: str(uuid.uuid4())}
    # Resource.create merges the given attributes over the environment's: ours would win.
    return Resource.create(ours).merge(OTELResourceDetector().detect())


# The standard's switch, defaulted to the stable conventions (http.request.method, url.scheme,
# http.response.status_code, db.query.text…) rather than the instrumentations' old names.
SEMCONV_OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"


class RpcSpanNames(SpanProcessor):
    """gRPC spans named `leadmesh.vault.v1.VaultService/ResolveCredential`, as the RPC semantic
    conventions write it; the instrumentation names them by the path, with a leading slash."""

    def on_start(self, span: Span, parent_context=None) -> None:
        if span.name.startswith("/") and (span.attributes or {}).get("rpc.system") == "grpc":
            span.update_name(span.name[1:])


def setup_telemetry(service: str, mesh: MeshSettings) -> Telemetry:
    """Installs the global tracer and meter providers for this process (metrics served on the
    process's `<NAME>_METRICS_PORT` when it has one) and returns them, to flush at exit."""
    os.environ.setdefault(SEMCONV_OPT_IN, "http,database")
    resource = resource_of(service)
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER/_ARG
    trace.set_tracer_provider(provider)
    if mesh.sdk_disabled:  # no span leaves the process (its tracers are no-ops too)
        return Telemetry(provider, _serve_metrics(service, resource, mesh))
    provider.add_span_processor(RpcSpanNames())
    if mesh.otlp_endpoint:
        exporter: SpanExporter = _otlp_span_exporter(mesh)
    else:
        exporter = OtlpJsonFileExporter(
            mesh.var_dir / "traces" / f"{service}.jsonl",
            clock=SystemClock(mesh.clock_offset_seconds),
            max_bytes=mesh.traces_max_bytes,
            keep_days=mesh.traces_keep_days,
            keep_files=mesh.traces_keep_files,
        )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Telemetry(provider, _serve_metrics(service, resource, mesh))


def _otlp_span_exporter(mesh: MeshSettings) -> SpanExporter:
    if mesh.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()


# Runner workers scale by count on one machine: each takes the first free port from its setting.
_WORKER_PORTS_TRIED = 100


def _serve_metrics(service: str, resource: Resource, mesh: MeshSettings) -> Metrics:
    setting = f"{service.replace('-', '_')}_metrics_port"
    if setting not in MeshSettings.model_fields:
        return Metrics(None, None)  # a benchmark's stand-in process: no metrics of its own
    first = mesh.metrics_port(service)
    tries = _WORKER_PORTS_TRIED if service == "runner-worker" and first else 1
    for port in range(first, first + tries):
        try:
            return setup_metrics(resource, mesh, port)
        except OSError as error:
            failure = error
    variable = setting.upper()
    raise SystemExit(
        f"leadmesh: {service} cannot serve metrics on {mesh.host}:{first} ({failure.strerror}); "
        f"set {variable} to a free port"
    )


def instrument_engine(engine) -> None:
    """Database spans beneath the RPC that caused them (statements only, never parameters)."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # The instrumentation declares SQLAlchemy < 2.1 but only uses the cursor-execute events,
    # which 2.1 keeps; without skipping the check it silently instruments nothing.
    # Its connection-pool metrics are labelled with the database's address or file: not ours.
    SQLAlchemyInstrumentor().instrument(
        engine=getattr(engine, "sync_engine", engine),
        skip_dep_check=True,
        meter_provider=NoOpMeterProvider(),
    )
