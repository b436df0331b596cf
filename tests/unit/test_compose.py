"""docker-compose.yml (no Docker engine here): every process of the mesh is in it, wired to its
database, Redis and the collector, with health checks that the command line really offers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from cli.main import main
from cli.mesh import PROCESSES

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_process_runs_in_compose_with_a_health_check():
    services = _compose()["services"]
    for process in PROCESSES:
        service = services[process.name]
        assert service["command"] == [process.module]
        assert service["healthcheck"]["test"][-2:] == ["--only", process.name]
        assert service["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel")
        assert "leadmesh-var:/var/lib/leadmesh" in service["volumes"]


def test_services_with_a_database_get_postgres_and_a_migration_first():
    services = _compose()["services"]
    assert services["setup"]["command"] == ["cli", "migrate"]
    for process in PROCESSES:
        if process.migrations is None:
            continue
        url = services[process.name]["environment"][f"{process.name.upper()}_DATABASE_URL"]
        assert url.startswith("postgresql://") and "@postgres:5432/" in url
        condition = services[process.name]["depends_on"]["setup"]["condition"]
        assert condition == "service_completed_successfully"


def test_the_collector_config_exports_to_jaeger():
    compose = _compose()
    mount = compose["services"]["otel-collector"]["volumes"][0].split(":")[0]
    collector = yaml.safe_load((ROOT / mount).read_text())
    assert collector["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger"]
    assert compose["services"]["gateway"]["ports"] == ["8443:8443", "8080:8080"]


def test_the_health_check_command_exists(capsys):
    try:
        main(["status", "--help"])
    except SystemExit as done:
        assert done.code == 0
    assert "--only" in capsys.readouterr().out


def test_every_service_database_is_created():
    compose = _compose()
    postgres = compose["services"]["postgres"]
    created = {postgres["environment"]["POSTGRES_DB"]}
    init = next(v for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v).split(":")[0]
    created |= set(re.findall(r"CREATE DATABASE (\w+);", (ROOT / init).read_text()))
    for process in PROCESSES:
        if process.migrations is not None:
            url = compose["services"][process.name]["environment"][
                f"{process.name.upper()}_DATABASE_URL"
            ]
            assert url.rsplit("/", 1)[1] in created, process.name


def test_the_collector_turns_metrics_into_prometheus_which_prometheus_scrapes():
    compose = _compose()
    mount = compose["services"]["otel-collector"]["volumes"][0].split(":")[0]
    collector = yaml.safe_load((ROOT / mount).read_text())
    metrics = collector["service"]["pipelines"]["metrics"]
    assert metrics["receivers"] == ["otlp"] and metrics["exporters"] == ["prometheus"]
    exporter_port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    config = compose["services"]["prometheus"]["volumes"][0].split(":")
    assert config[1] == "/etc/prometheus/prometheus.yml"
    scraped = yaml.safe_load((ROOT / config[0]).read_text())["scrape_configs"]
    targets = [t for job in scraped for group in job["static_configs"] for t in group["targets"]]
    assert f"otel-collector:{exporter_port}" in targets


def _grafana_mounts() -> dict[str, Path]:
    volumes = _compose()["services"]["grafana"]["volumes"]
    return {inside: ROOT / here for here, inside, _ro in (v.split(":") for v in volumes)}


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard():
    mounts = _grafana_mounts()
    provisioning = mounts["/etc/grafana/provisioning"]
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "leadmesh.yaml").read_text())[
        "providers"
    ]
    assert mounts[provider["options"]["path"]].joinpath("leadmesh.json").is_file()
    panels = json.loads((mounts[provider["options"]["path"]] / "leadmesh.json").read_text())[
        "panels"
    ]
    assert all(t["datasource"]["uid"] == source["uid"] for p in panels for t in p["targets"])


# A series name in PromQL, by the endings OpenTelemetry's Prometheus names of ours have.
_ENDINGS = "_total|_seconds|_milliseconds|_depth|_pending|_compliant"
_SERIES_IN_EXPR = re.compile(rf"\b([a-z_]+(?:{_ENDINGS})(?:_bucket|_count|_sum)?)\b")


def test_the_dashboard_shows_every_series_and_queries_only_what_the_code_emits():
    from services.kit.metrics import SERIES

    emitted = {series.prometheus: name for name, series in SERIES.items()}
    path = _grafana_mounts()["/var/lib/grafana/dashboards"] / "leadmesh.json"
    dashboard = json.loads(path.read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for found in _SERIES_IN_EXPR.findall(target["expr"]):
                queried.add(re.sub(r"_(bucket|count|sum)$", "", found))
    assert queried, "no series found in the dashboard's queries"
    assert queried <= set(emitted), f"queried but never emitted: {queried - set(emitted)}"
    assert set(emitted) <= queried, f"emitted but not shown: {set(emitted) - queried}"
