"""`leadmesh config --profile scale` and `leadmesh status`'s parts that need no mesh: the databases
the profile derives (shown without dialling anything or printing a password), a runner-worker told
apart by its metrics, the report's rendering, and an `--only` the profile has no process for."""

from __future__ import annotations

import argparse
import os

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from cli.config import config
from cli.retention import BadInput
from cli.status import ProcessState, _print, status, worker_version
from services.kit.config import InvalidSettings
from services.kit.telemetry import resource_of

# Nothing listens on port 1: a command that dialled a store would fail, not print.
SERVER = "postgresql://lm:canary-pw@127.0.0.1:1/postgres"
STORES = ("IDENTITY", "VAULT", "RUNNER", "RETENTION")


@pytest.fixture
def scale_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in [n for n in os.environ if n.startswith(("LEADMESH_", "REDIS_", "RUNNER_"))]:
        monkeypatch.delenv(name)
    for store in STORES:
        monkeypatch.delenv(f"{store}_DATABASE_URL", raising=False)
    monkeypatch.setenv("LEADMESH_VAR_DIR", str(tmp_path / "var"))  # never created
    monkeypatch.setenv("LEADMESH_POSTGRES_URL", SERVER)
    monkeypatch.setenv("LEADMESH_DATABASE_PREFIX", "lm_")
    monkeypatch.setenv("LEADMESH_RUNNER_WORKER_PROCESSES", "3")
    monkeypatch.setenv("REDIS_URL", "redis://:canary-pw@127.0.0.1:1/0")
    monkeypatch.setenv("VAULT_DATABASE_URL", "postgresql://app:canary-pw@db.internal/vaultdb")


def _config(profile: str, capsys) -> tuple[str, dict[str, str], list[str]]:
    assert config(argparse.Namespace(profile=profile)) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    comments = [line for line in lines if line.startswith("#")]
    return header, dict(line.split("=", 1) for line in lines if line not in comments), comments


def test_config_with_the_scale_profile_shows_the_databases_it_derives(scale_env, capsys):
    header, shown, comments = _config("scale", capsys)
    assert header.endswith("runner-worker-3 as `leadmesh up --profile scale` would start them "
                           "from this shell")  # fmt: skip
    for store in ("IDENTITY", "RUNNER", "RETENTION"):
        database = f"lm_{store.lower()}"
        assert shown[f"{store}_DATABASE_URL"] == f"postgresql://lm:***@127.0.0.1:1/{database}"
    # A service's own URL is kept, as `up` keeps it.
    assert shown["VAULT_DATABASE_URL"] == "postgresql://app:***@db.internal/vaultdb"
    assert shown["RUNNER_WORKERS"] == "0"
    assert shown["LEADMESH_POSTGRES_URL"] == "postgresql://lm:***@127.0.0.1:1/postgres"
    assert shown["LEADMESH_RUNNER_WORKER_PROCESSES"] == "3"
    assert comments == [
        f"# runner-worker-{i}: delivery only, /metrics on port {9469 + i} or the next free one"
        for i in (1, 2, 3)
    ]
    assert "canary" not in header + str(shown)
    # What the profile derives lived only while config read it.
    assert "RUNNER_WORKERS" not in os.environ and "IDENTITY_DATABASE_URL" not in os.environ


def test_config_without_the_profile_shows_what_plain_up_starts(scale_env, capsys):
    header, shown, comments = _config("default", capsys)
    assert "runner-worker" not in header and "`leadmesh up`" in header and not comments
    assert shown["IDENTITY_DATABASE_URL"].startswith("sqlite:///")
    assert shown["RUNNER_WORKERS"] == "1"
    assert "LEADMESH_POSTGRES_URL" not in shown


def test_config_refuses_the_scale_profile_as_up_would(scale_env, monkeypatch, capsys):
    monkeypatch.delenv("LEADMESH_POSTGRES_URL")
    monkeypatch.delenv("REDIS_URL")
    with pytest.raises(InvalidSettings) as refused:
        config(argparse.Namespace(profile="scale"))
    assert "LEADMESH_POSTGRES_URL is not set" in str(refused.value)
    assert "REDIS_URL is not set" in str(refused.value)
    assert capsys.readouterr().out == "", "nothing half-printed"


def _metrics_text(service: str) -> str:
    """What GET /metrics of such a process serves (its registry, rendered without a server)."""
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)],
        resource=resource_of(service),
    )
    provider.get_meter("test").create_counter("leadmesh.test").add(1)
    try:
        return generate_latest(registry).decode()
    finally:
        provider.shutdown()


def test_a_runner_worker_is_told_apart_by_its_metrics():
    version = resource_of("runner-worker").attributes["service.version"]
    assert worker_version(_metrics_text("runner-worker")) == version
    assert worker_version(_metrics_text("runner"), own_port=True) is None
    assert worker_version("<html>not metrics</html>", own_port=True) is None
    assert worker_version("", own_port=True) is None


def test_metrics_that_name_no_process_are_a_workers_only_on_its_own_port():
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    unnamed = generate_latest(registry).decode()
    assert worker_version(unnamed, own_port=True) == "-"
    assert worker_version(unnamed) is None


def test_the_report_renders_sections_and_their_errors_alike(capsys):
    processes = [
        ProcessState(
            "runner", "SERVING", "1.0", "127.0.0.1:50053", "http://127.0.0.1:9467/metrics"
        ),
        ProcessState("runner-worker-1", "UNAVAILABLE", "-", "-", "http://127.0.0.1:9470/metrics"),
    ]
    backlog = {"pending_runs": 3, "due_runs": 1, "oldest_pending_age_seconds": 90.0}
    _print(processes, {"queue": backlog, "retention": {"error": "retention is down"}})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines[:3]] == [
        ["PROCESS", "STATE", "VERSION", "ADDRESS", "METRICS"],
        ["runner", "SERVING", "1.0", "127.0.0.1:50053", "http://127.0.0.1:9467/metrics"],
        ["runner-worker-1", "UNAVAILABLE", "-", "-", "http://127.0.0.1:9470/metrics"],
    ]
    # One table: the columns line up across every process's row.
    assert lines[0].index("METRICS") == lines[1].index("http:") == lines[2].index("http:")
    assert lines[3:] == [
        "queue: 3 pending (1 due), oldest 1.5m",
        "retention: unknown (retention is down)",
    ]


@pytest.mark.parametrize(("profile", "only"), [("default", "runner-worker-1"), ("scale", "worker")])
def test_status_refuses_a_process_the_profile_does_not_start(scale_env, profile, only):
    with pytest.raises(BadInput, match=f"no process {only} "):
        status(argparse.Namespace(profile=profile, only=[only], json=False))
