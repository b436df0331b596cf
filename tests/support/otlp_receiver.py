"""A real OTLP receiver for the tests, what a collector is to the mesh: the `MetricsService`
and `TraceService` of opentelemetry-proto's generated stubs on loopback (OTLP/gRPC), and the same
requests as OTLP/HTTP protobuf (`POST /v1/traces`, `/v1/metrics` at `http_endpoint`), keeping
every request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import grpc
from google.protobuf.json_format import MessageToJson
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class Point:
    """One data point as received: the exporting process, the metric, its labels and value."""

    service: str
    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as received: ids in hex, kind and status by their short names (SERVER, ERROR…),
    attributes with their values as sent (str, int, float, bool)."""

    service: str
    resource: dict[str, Any]
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    status: str
    status_message: str
    attributes: dict[str, Any] = field(default_factory=dict)


def _value(any_value) -> str:
    kind = any_value.WhichOneof("value")
    return str(getattr(any_value, kind)) if kind else ""


def _native(any_value) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


_KIND = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUS = ("UNSET", "OK", "ERROR")


class OtlpReceiver(metrics_service_pb2_grpc.MetricsServiceServicer,
                   trace_service_pb2_grpc.TraceServiceServicer):  # fmt: skip
    def __init__(self) -> None:
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self))
        self._http.daemon_threads = True

    @property
    def endpoint(self) -> str:
        """OTLP/gRPC (OTEL_EXPORTER_OTLP_PROTOCOL=grpc)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def http_endpoint(self) -> str:
        """OTLP/HTTP protobuf (the standard's default protocol)."""
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def Export(self, request, context):  # noqa: N802 - the generated servicer's name
        with self._lock:
            if isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
                self.metric_requests.append(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()
            self.trace_requests.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    def points(self) -> list[Point]:
        with self._lock:
            requests = list(self.metric_requests)
        found = []
        for request in requests:
            for resource in request.resource_metrics:
                attributes = {a.key: _value(a.value) for a in resource.resource.attributes}
                service = attributes.get("service.name", "")
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        found += _points(service, metric)
        return found

    def text(self) -> str:
        """Every metrics request received, as JSON: for scans of what left the processes."""
        with self._lock:
            return "\n".join(MessageToJson(r) for r in self.metric_requests)

    def traces_text(self) -> str:
        """Every trace request received, as JSON: for scans of what left the processes."""
        with self._lock:
            return "\n".join(MessageToJson(r) for r in self.trace_requests)

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            requests = list(self.trace_requests)
        found = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: _native(a.value) for a in resource_spans.resource.attributes}
                service = str(resource.get("service.name", ""))
                for scope in resource_spans.scope_spans:
                    found += [_span(service, resource, span) for span in scope.spans]
        return found

    def wait_for_spans(
        self, check: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while not check(found := self.spans()):
            if time.monotonic() > deadline:
                return found
            time.sleep(0.2)
        return found

    def wait_for(self, check: Callable[[list[Point]], bool], timeout: float = 30.0) -> list[Point]:
        deadline = time.monotonic() + timeout
        while not check(points := self.points()):
            if time.monotonic() > deadline:
                return points
            time.sleep(0.2)
        return points

    def __enter__(self) -> Self:
        self._server.start()
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._server.stop(grace=None)


def _http_handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    requests = {
        "/v1/traces": trace_service_pb2.ExportTraceServiceRequest,
        "/v1/metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    }

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            kind = requests.get(self.path)
            if kind is None or self.headers.get("content-type") != "application/x-protobuf":
                self.send_error(404 if kind is None else 415)
                return
            answer = receiver.Export(kind.FromString(body), None)
            payload = answer.SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_args: object) -> None:
            return None

    return Handler


def _span(service: str, resource: dict[str, Any], span) -> ReceivedSpan:
    return ReceivedSpan(
        service=service,
        resource=resource,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex(),
        name=span.name,
        kind=_KIND[span.kind],
        status=_STATUS[span.status.code],
        status_message=span.status.message,
        attributes={a.key: _native(a.value) for a in span.attributes},
    )


def _points(service: str, metric) -> list[Point]:
    kind = metric.WhichOneof("data")
    out = []
    for point in getattr(metric, kind).data_points:
        labels = {a.key: _value(a.value) for a in point.attributes}
        if kind == "histogram":
            value = float(point.count)
        else:
            value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
        out.append(Point(service, metric.name, labels, float(value)))
    return out
