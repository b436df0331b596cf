"""`leadmesh status` against the shared mesh: every process's health, version, address and metrics
endpoint, the runner's queue and the retention summary; and what it says when processes do not
answer. (`--profile scale` and its runner-worker processes: tests/e2e/test_scale_profile.py.)"""

from __future__ import annotations

import importlib.metadata
import json

from tests.conftest import free_port
from tests.e2e.conftest import Mesh, action, create, register_and_login, start_run

NAMES = ["identity", "vault", "runner", "retention", "gateway"]


def _addresses(mesh: Mesh) -> dict[str, str]:
    env = mesh.env
    grpc = {name: f"127.0.0.1:{env[f'{name.upper()}_PORT']}" for name in NAMES[:4]}
    return {**grpc, "gateway": f"https://127.0.0.1:{env['GATEWAY_HTTPS_PORT']}"}


def _metrics(mesh: Mesh) -> dict[str, str]:
    return {name: f"http://127.0.0.1:{port}/metrics" for name, port in mesh.metrics_ports().items()}


def test_status_shows_every_process_serving_with_its_address(mesh_up: Mesh):
    done = mesh_up.leadmesh("status", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["healthy"] is True and shown["profile"] == "default"
    assert [p["name"] for p in shown["processes"]] == NAMES
    assert {p["name"]: p["state"] for p in shown["processes"]} == dict.fromkeys(NAMES, "SERVING")
    assert {p["name"]: p["address"] for p in shown["processes"]} == _addresses(mesh_up)
    assert {p["name"]: p["metrics"] for p in shown["processes"]} == _metrics(mesh_up)
    assert set(shown["queue"]) == {"pending_runs", "due_runs", "oldest_pending_age_seconds"}
    assert set(shown["retention"]["categories"]) == {"OK", "LATE", "UNREACHABLE"}
    assert sum(shown["retention"]["categories"].values()) > 0
    assert isinstance(shown["retention"]["erasures_at_risk"], list)

    text = mesh_up.leadmesh("status")
    assert text.returncode == 0, text.stderr
    header, *lines = text.stdout.splitlines()
    assert header.split() == ["PROCESS", "STATE", "VERSION", "ADDRESS", "METRICS"]
    rows = {line.split()[0]: line.split() for line in lines[:5]}
    assert list(rows) == NAMES and all(row[1] == "SERVING" for row in rows.values())
    assert {name: row[4] for name, row in rows.items()} == _metrics(mesh_up)
    assert lines[5].startswith("queue: ") and " pending (" in lines[5]
    assert lines[6].startswith("retention: ") and " erasure cases near their deadline" in lines[6]


def test_status_names_the_version_each_process_runs(mesh_up: Mesh):
    done = mesh_up.leadmesh("status", "--json")
    versions = {p["name"]: p["version"] for p in json.loads(done.stdout)["processes"]}
    assert versions == dict.fromkeys(NAMES, importlib.metadata.version("leadmesh"))


def test_status_counts_pending_runs_and_the_oldest_ones_age(mesh_up: Mesh, receiver):
    """A run held by a slow destination is pending (running) while it waits."""
    path = receiver.path("status-pending")
    receiver.answer(path, 200, delay=12.0)  # the CLI asks within it
    with mesh_up.client() as owner:
        register_and_login(owner)
        connection = create(owner, action=action(receiver.https_url(path)))
        start_run(owner, connection["id"])
        receiver.wait_to(path, timeout=15)
        done = mesh_up.leadmesh("status", "--json", "--only", "runner")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["queue"]["pending_runs"] >= 1
    assert shown["queue"]["oldest_pending_age_seconds"] > 0
    assert shown["retention"] is None  # not asked for


def test_status_shows_stopped_processes_down_and_fails(mesh_up: Mesh):
    """The runner and the gateway as if stopped (nothing listens where they should): down, the
    queue unknown, exit status 1, no traceback."""
    env = dict(mesh_up.env, RUNNER_PORT=str(free_port()), GATEWAY_HTTPS_PORT=str(free_port()))
    stopped = Mesh(**{**mesh_up.__dict__, "env": env})
    done = stopped.leadmesh("status")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:6]}
    assert rows["runner"].split()[1] == "UNAVAILABLE"
    assert rows["gateway"].split()[1] == "UNAVAILABLE"
    assert all(rows[name].split()[1] == "SERVING" for name in ("identity", "vault", "retention"))
    assert "queue: unknown (the runner is down)" in done.stdout
    assert "retention: " in done.stdout and "retention: unknown" not in done.stdout

    as_json = json.loads(stopped.leadmesh("status", "--json").stdout)
    assert as_json["healthy"] is False
    assert {p["name"]: p["up"] for p in as_json["processes"]} == {
        "identity": True, "vault": True, "runner": False, "retention": True, "gateway": False
    }  # fmt: skip
    assert as_json["queue"] == {"error": "the runner is down"}


def test_status_refuses_a_process_the_profile_does_not_start(mesh_up: Mesh):
    """A worker is a process of `--profile scale` only: asked for without it, it is a mistake to
    say (exit 2, one line), not a check that passes by finding nothing to check."""
    done = mesh_up.leadmesh("status", "--only", "runner-worker-1")
    assert done.returncode == 2 and not done.stdout
    assert done.stderr.splitlines() == [
        "leadmesh: status --only: no process runner-worker-1 "
        "(of identity, vault, runner, retention, gateway)"
    ]
