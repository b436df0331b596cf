"""OpenTelemetry metrics for a process: exported with OTLP beside the traces when
OTEL_EXPORTER_OTLP_ENDPOINT is set (the collector turns them into Prometheus), and always served
for scraping as the Prometheus text format at `GET /metrics`, plain HTTP on LEADMESH_HOST and the
process's metrics port (`<NAME>_METRICS_PORT`; 0 takes a free one). `OTEL_SDK_DISABLED=true`
turns both off, as it turns off the traces.

`SERIES` is the one list of what the mesh emits: the instruments below are made from it, the
dashboard (deploy/grafana/) may query only its names, and the end-to-end tests check that they
arrive. Labels are bounded sets (route templates, RPC methods, status codes, reasons, outcomes,
categories): never an id, an address, a URL, a path or anything a user typed.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from services.kit.config import MeshSettings

log = logging.getLogger("leadmesh.metrics")

# The HTTP semantic conventions' advised boundaries, in seconds (http.server.request.duration).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
MILLISECONDS_BUCKETS = tuple(b * 1000 for b in SECONDS_BUCKETS)


@dataclass(frozen=True)
class Series:
    name: str
    kind: str  # counter, histogram, gauge (observable)
    unit: str
    description: str
    labels: tuple[str, ...] = ()

    @property
    def prometheus(self) -> str:
        """The name Prometheus shows (OpenTelemetry's translation: dots to underscores, the
        unit's word appended, `_total` for counters)."""
        base = self.name.replace(".", "_")
        word = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}.get(self.unit, "")
        if word and not base.endswith(word):
            base += f"_{word}"
        return base + "_total" if self.kind == "counter" else base


_HTTP = ("http.request.method", "http.route", "http.response.status_code")
_RPC = ("rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code")

SERIES = {
    s.name: s
    for s in (
        Series("http.server.request.duration", "histogram", "s", "HTTP requests served", _HTTP),
        Series("rpc.server.duration", "histogram", "ms", "gRPC calls served", _RPC),
        Series(
            "leadmesh.webhooks.accepted", "counter", "{webhook}", "Webhooks accepted (202)",
            ("duplicate",),
        ),
        Series(
            "leadmesh.webhooks.refused", "counter", "{webhook}", "Webhooks refused", ("reason",)
        ),
        Series("leadmesh.queue.depth", "gauge", "{run}", "Runs waiting to be delivered"),
        Series(
            "leadmesh.queue.oldest_age", "gauge", "s", "Age of the oldest run waiting"
        ),
        Series(
            "leadmesh.deliveries", "counter", "{delivery}", "Deliveries ended, by outcome",
            ("outcome", "attempt"),
        ),
        Series(
            "leadmesh.vault.resolves", "counter", "{resolve}", "Credentials resolved",
            ("kind", "outcome"),
        ),
        Series(
            "leadmesh.vault.refreshes", "counter", "{refresh}", "OAuth token refreshes",
            ("outcome",),
        ),
        Series(
            "leadmesh.vault.execution_keys", "counter", "{key}",
            "Execution keys answered (GetExecutionKeys), by the caller (runner, identity) and the "
            "key's state (active, destroyed, absent) or the refusal's reason",
            ("participant", "outcome"),
        ),
        Series(
            "leadmesh.vault.audit.pending", "gauge", "{entry}",
            "Audit entries queued and not yet written",
        ),
        Series(
            "leadmesh.vault.audit.waits", "counter", "{wait}",
            "Resolves that waited for the audit queue (back-pressure)",
        ),
        Series("leadmesh.logins", "counter", "{login}", "Logins by outcome", ("outcome",)),
        Series(
            "leadmesh.logins.throttled", "counter", "{login}", "Logins held back, by rule",
            ("rule",),
        ),
        Series(
            "leadmesh.retention.purged", "counter", "{row}", "Rows purged", ("category", "owner")
        ),
        Series(
            "leadmesh.retention.compliant", "gauge", "1",
            "1 when a category's oldest row is within its max age",
            ("category", "owner"),
        ),
        Series(
            "leadmesh.retention.oldest_age", "gauge", "s",
            "Age of a category's oldest row", ("category", "owner"),
        ),
    )
}  # fmt: skip

_METER = "leadmesh"


def counter(name: str) -> metrics.Counter:
    """The counter of `SERIES[name]`; before `setup_metrics` (tests in one process) it counts
    into nothing, afterwards into the process's provider."""
    series = SERIES[name]
    assert series.kind == "counter", name
    meter = metrics.get_meter(_METER)
    return meter.create_counter(series.name, unit=series.unit, description=series.description)


def histogram(name: str) -> metrics.Histogram:
    series = SERIES[name]
    assert series.kind == "histogram", name
    meter = metrics.get_meter(_METER)
    return meter.create_histogram(series.name, unit=series.unit, description=series.description)


Reading = Callable[[], Iterable[tuple[float, dict[str, str]]]]


def gauge(name: str, read: Reading) -> None:
    """An observable gauge of `SERIES[name]`: `read` gives (value, labels) pairs at each
    collection, from a thread of the SDK's: it must only read what the service keeps current."""
    series = SERIES[name]
    assert series.kind == "gauge", name

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, labels) for value, labels in read()]

    metrics.get_meter(_METER).create_observable_gauge(
        series.name, callbacks=[observe], unit=series.unit, description=series.description
    )


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base's signature
        return None  # a scrape every few seconds is no event worth a log line


@dataclass
class Metrics:
    """The process's meter provider and its scrape endpoint (None when the SDK is disabled)."""

    provider: MeterProvider | None
    server: WSGIServer | None

    @property
    def port(self) -> int | None:
        return self.server.server_port if self.server else None

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.provider is not None:
            self.provider.shutdown()


def _scrape_app(registry):
    from prometheus_client import make_wsgi_app

    inner = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in (
            "GET",
            "HEAD",
        ):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"GET /metrics\n"]
        return inner(environ, start_response)

    return app


def _otlp_exporter(mesh: MeshSettings):
    if mesh.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
    return OTLPMetricExporter()


def _views() -> list[View]:
    return [
        View(
            instrument_name=s.name,
            aggregation=ExplicitBucketHistogramAggregation(
                SECONDS_BUCKETS if s.unit == "s" else MILLISECONDS_BUCKETS
            ),
        )
        for s in SERIES.values()
        if s.kind == "histogram"
    ]


class _TargetInfo:
    """`target_info` (the resource: service name, version, instance id) on every scrape from the
    first. The OpenTelemetry exporter writes it only beside data points, so a process that has
    recorded nothing yet (an idle runner worker) would not say what it is or which version it
    runs, and `leadmesh status` finds a runner worker by it."""

    def __init__(self, resource: Resource) -> None:
        # Prometheus label names, as the exporter writes them (service.name -> service_name).
        self.labels = {
            re.sub(r"[^a-zA-Z0-9_]", "_", key): str(value)
            for key, value in resource.attributes.items()
        }

    def collect(self) -> Iterable:
        from prometheus_client.core import InfoMetricFamily

        yield InfoMetricFamily("target", "Target metadata", value=self.labels)


def setup_metrics(resource: Resource, mesh: MeshSettings, port: int) -> Metrics:
    """Installs the global meter provider (Prometheus reader, and OTLP when an endpoint is set)
    and serves `GET /metrics` on `mesh.host:port`; OSError when the port is taken."""
    if mesh.sdk_disabled:
        return Metrics(None, None)
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    registry.register(_TargetInfo(resource))
    readers: list[MetricReader] = [
        PrometheusMetricReader(disable_target_info=True, registry=registry)
    ]
    if mesh.otlp_endpoint:
        readers.append(PeriodicExportingMetricReader(_otlp_exporter(mesh)))
    provider = MeterProvider(metric_readers=readers, resource=resource, views=_views())
    server = make_server(
        mesh.host, port, _scrape_app(registry), server_class=_Server, handler_class=_Quiet
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    metrics.set_meter_provider(provider)
    log.info("metrics", extra={"metrics_port": server.server_port})
    return Metrics(provider, server)
