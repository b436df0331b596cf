"""The mesh's list of series (`services.kit.metrics.SERIES`): the names Prometheus shows for each
are the ones the dashboard queries, so they must be the ones OpenTelemetry's Prometheus reader
really writes; and every label is a bounded one."""

from __future__ import annotations

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.kit.metrics import SERIES

# Label names that would carry a person, a secret or an unbounded value.
UNBOUNDED = ("user", "email", "account", "url", "path", "token", "ip", "address", "id")


def test_each_series_has_the_prometheus_name_the_reader_writes():
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    meter = provider.get_meter("test")
    for series in SERIES.values():
        labels = {label: "x" for label in series.labels}
        if series.kind == "counter":
            meter.create_counter(series.name, unit=series.unit).add(1, labels)
        elif series.kind == "histogram":
            meter.create_histogram(series.name, unit=series.unit).record(1, labels)
        else:
            meter.create_observable_gauge(
                series.name, [lambda _o, labels=labels: [Observation(1, labels)]], unit=series.unit
            )
    text = generate_latest(registry).decode()
    written = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    provider.shutdown()
    for series in SERIES.values():
        suffixes = ("_count", "_bucket", "_sum") if series.kind == "histogram" else ("",)
        assert {series.prometheus + s for s in suffixes} <= written, series.name


def test_no_series_has_a_label_that_names_a_person_a_secret_or_a_place():
    for series in SERIES.values():
        for label in series.labels:
            words = label.replace(".", "_").split("_")
            assert not set(words) & set(UNBOUNDED), (series.name, label)


def test_ours_are_named_leadmesh_and_the_conventions_keep_theirs():
    for name in SERIES:
        assert name.startswith(("leadmesh.", "http.server.", "rpc.server.")), name
