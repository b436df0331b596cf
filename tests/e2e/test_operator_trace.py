"""`leadmesh trace RUN_ID` against the shared mesh: a delivered run's trace as a tree across the
gateway, the runner, the vault and the outgoing call, from var/traces/ and from a Jaeger query API.

No Jaeger runs here: the Jaeger test serves its `/api/traces/{traceID}` JSON shape from a local
HTTP server, built from the same run's exported spans."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import (
    Mesh,
    SharedReceiver,
    action,
    create,
    finished,
    register_and_login,
    spans,
)
from tests.support.jaeger import JaegerQuery, as_jaeger


def _delivered_run(mesh: Mesh, receiver: SharedReceiver, status: int = 200) -> dict:
    """A webhook's run delivered with a vault credential; the receiver answers `status`."""
    path = receiver.path("operator-trace")
    receiver.answer(path, status)
    with mesh.client() as owner:
        register_and_login(owner)
        credential = owner.post(
            "/v1/credentials",
            json={"name": "CRM", "kind": "api_key", "provider": "crm",
                  "secret": {"key": f"sk_{uuid.uuid4().hex}", "header": "X-Api-Key"}},
        )  # fmt: skip
        assert credential.status_code == 201, credential.text
        connection = create(
            owner,
            trigger={"type": "webhook"},
            action=action(receiver.https_url(path), credential_id=credential.json()["id"]),
            max_attempts=1,
        )
        with mesh.client() as caller:
            accepted = caller.post(connection["webhook_url"], json={"lead": "traced"})
        assert accepted.status_code == 202, accepted.text
        return finished(owner, accepted.json()["run_id"])


def _whole(mesh: Mesh, trace_id: str) -> list[dict]:
    """The run's spans once every process has exported its part (each in batches of its own)."""
    deadline = time.monotonic() + 15
    while True:
        found = [s for s in spans(mesh.var_dir) if s["traceId"] == trace_id]
        services = {s["service"] for s in found}
        calls = [s for s in found if s["service"] == "runner" and s["name"] == "POST"]
        if ({"gateway", "runner", "vault"} <= services and calls) or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def _walk(nodes: list[dict], depth: int = 0) -> Iterator[tuple[int, dict]]:
    for node in nodes:
        yield depth, node
        yield from _walk(node["children"], depth + 1)


def test_trace_prints_a_delivered_runs_tree_across_the_mesh(mesh_up: Mesh, receiver):
    run = _delivered_run(mesh_up, receiver)
    assert run["status"] == "succeeded"
    _whole(mesh_up, run["trace_id"])

    shown = mesh_up.leadmesh("trace", run["run_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    tree = json.loads(shown.stdout)
    assert tree["run_id"] == run["run_id"] and tree["trace_ids"] == [run["trace_id"]]
    [root] = tree["spans"]
    assert (root["service"], root["name"]) == ("gateway", "POST /hooks/{token}")
    nodes = list(_walk(tree["spans"]))
    by_id = {node["span_id"]: node for _, node in nodes}
    # Parent → child: every span but the root hangs under the span that caused it.
    for depth, node in nodes[1:]:
        assert depth > 0 and node["parent_span_id"] in by_id
        assert node["start_time_unix_nano"] >= by_id[node["parent_span_id"]]["start_time_unix_nano"]
    ingest = next(n for _, n in nodes if n["name"].endswith("RunnerService/IngestWebhook")
                  and n["service"] == "runner")  # fmt: skip
    [call] = [n for _, n in nodes if n["service"] == "runner" and n["kind"] == "client"
              and n["name"] == "POST"]  # fmt: skip
    assert call["parent_span_id"] == ingest["span_id"]  # the delivery continued the webhook's
    assert call["attributes"]["leadmesh.run_id"] == run["run_id"]
    assert call["status"] == "ok" and call["duration_ms"] > 0
    resolve = [n for _, n in nodes if n["service"] == "vault"
               and n["name"].endswith("VaultService/ResolveCredential")]  # fmt: skip
    assert resolve and all(n["status"] == "ok" for n in resolve)
    for siblings in [tree["spans"], *(n["children"] for _, n in nodes)]:
        starts = [s["start_time_unix_nano"] for s in siblings]
        assert starts == sorted(starts)

    text = mesh_up.leadmesh("trace", run["run_id"])
    assert text.returncode == 0, text.stderr
    header, first, *rest = text.stdout.splitlines()
    assert header == f"run {run['run_id']} (succeeded), trace {run['trace_id']}"
    assert first.startswith("POST /hooks/{token}  [gateway]  ") and first.endswith(" ms  ok")
    assert len(rest) == len(nodes) - 1
    vault = next(line for line in rest if "ResolveCredential  [vault]" in line)
    assert vault.startswith("    ") and vault.endswith(" ok")  # beneath the runner's client span
    outgoing = next(line for line in rest if line.lstrip().startswith("POST  [runner]"))
    indent = len(outgoing) - len(outgoing.lstrip())
    assert indent == 2 * next(d for d, n in nodes if n is call)


def test_trace_marks_the_failed_call_an_error(mesh_up: Mesh, receiver):
    run = _delivered_run(mesh_up, receiver, status=503)
    assert run["status"] == "failed"
    _whole(mesh_up, run["trace_id"])
    shown = mesh_up.leadmesh("trace", run["run_id"])
    assert shown.returncode == 0, shown.stderr
    [call] = [line for line in shown.stdout.splitlines() if "POST  [runner]" in line]
    assert call.endswith(" ERROR")
    assert sum(line.endswith(" ERROR") or " ERROR: " in line
               for line in shown.stdout.splitlines()) >= 1  # fmt: skip


def test_trace_of_an_unknown_run_is_one_line_and_fails(mesh_up: Mesh):
    shown = mesh_up.leadmesh("trace", str(uuid.uuid4()))
    assert shown.returncode == 1 and shown.stdout == ""
    [line] = shown.stderr.splitlines()
    assert line.startswith("refused: run ") and "unknown" in line


def test_trace_whose_files_were_purged_is_one_line_and_fails(
    mesh_up: Mesh, receiver, tmp_path: Path
):
    run = _delivered_run(mesh_up, receiver)
    # The same mesh seen from a var/ whose traces/ retention emptied: the same certificates.
    (tmp_path / "pki").symlink_to(mesh_up.var_dir / "pki")
    env = dict(mesh_up.env, LEADMESH_VAR_DIR=str(tmp_path))
    purged = Mesh(**{**mesh_up.__dict__, "env": env, "var_dir": tmp_path})
    shown = purged.leadmesh("trace", run["run_id"])
    assert shown.returncode == 1 and shown.stdout == ""
    [line] = shown.stderr.splitlines()
    assert run["trace_id"] in line and "no spans" in line and "purged" in line


@pytest.fixture
def jaeger() -> Iterator[JaegerQuery]:
    with JaegerQuery() as server:
        yield server


def test_trace_reads_jaegers_query_api(mesh_up: Mesh, receiver, jaeger: JaegerQuery):
    run = _delivered_run(mesh_up, receiver)
    exported = _whole(mesh_up, run["trace_id"])
    jaeger.traces[run["trace_id"]] = as_jaeger(exported)
    url = jaeger.url

    from_jaeger = mesh_up.leadmesh("trace", run["run_id"], "--jaeger", url)
    from_files = mesh_up.leadmesh("trace", run["run_id"])
    assert from_jaeger.returncode == 0, from_jaeger.stderr
    assert jaeger.asked == [f"/api/traces/{run['trace_id']}"]

    # The same tree, names, services and statuses (durations rounded to Jaeger's microseconds).
    def shape(text: str) -> list[str]:
        header, *lines = text.splitlines()
        return [header] + [line.split(" ms")[0].rsplit("  ", 1)[0] + line.rsplit(" ms", 1)[1]
                           for line in lines]  # fmt: skip

    assert shape(from_jaeger.stdout) == shape(from_files.stdout)
    assert "ResolveCredential  [vault]" in from_jaeger.stdout

    jaeger.traces.clear()  # Jaeger's own retention dropped it
    gone = mesh_up.leadmesh("trace", run["run_id"], "--jaeger", url)
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.splitlines() == [
        f"refused: run {run['run_id']}: trace {run['trace_id']} has no spans in Jaeger at {url} "
        "(purged past its retention, or not exported yet)"
    ]


def test_trace_when_the_runner_or_jaeger_is_down_is_one_line_and_fails(mesh_up: Mesh, receiver):
    no_runner = Mesh(**{**mesh_up.__dict__, "env": dict(mesh_up.env, RUNNER_PORT=str(free_port()))})
    shown = no_runner.leadmesh("trace", str(uuid.uuid4()))
    assert shown.returncode == 1 and shown.stdout == ""
    [line] = shown.stderr.splitlines()
    assert line.startswith("refused: the runner answered UNAVAILABLE: ")

    run = _delivered_run(mesh_up, receiver)
    nowhere = f"http://127.0.0.1:{free_port()}"
    shown = mesh_up.leadmesh("trace", run["run_id"], "--jaeger", nowhere)
    assert shown.returncode == 1 and shown.stdout == ""
    assert shown.stderr.splitlines() == [f"refused: Jaeger at {nowhere}: ConnectError"]
