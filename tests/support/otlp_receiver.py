"""A real OTLP/gRPC receiver for the tests, what a collector is to the mesh: the `MetricsService`
and `TraceService` of opentelemetry-proto's generated stubs on loopback, keeping every request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Self

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


def _value(any_value) -> str:
    kind = any_value.WhichOneof("value")
    return str(getattr(any_value, kind)) if kind else ""


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

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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

    def wait_for(self, check: Callable[[list[Point]], bool], timeout: float = 30.0) -> list[Point]:
        deadline = time.monotonic() + timeout
        while not check(points := self.points()):
            if time.monotonic() > deadline:
                return points
            time.sleep(0.2)
        return points

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stop(grace=None)


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
