"""docker-compose.yml (no Docker engine here): every process of the mesh is in it, wired to its
database, Redis and the collector, with health checks that the command line really offers."""

from __future__ import annotations

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
