"""The sealing migration as an operator runs it, on one mesh's var/ (`leadmesh up`): webhooks
accepted while the runner wrote plaintext (`RUNNER_SEAL_EXECUTION_DATA=false`), the mesh started
again with sealing on, `leadmesh retention seal --progress` run and the runner SIGKILLed while it
runs (the supervisor starts it again), `seal` run again: every row is sealed (the marked e-mail of
the leads is nowhere in the runner's database files), every run's details still read through the
API as they were, and no row is lost.

The retention service's own sealing job is off here (`RETENTION_SEALING_INTERVAL_SECONDS=0`), so
the operator's command does the work; small batches make it many calls long."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    PASSWORD,
    Mesh,
    SharedReceiver,
    _start_mesh,
    action,
    create,
    finished,
    register_and_login,
    runner_env,
)

LEADS = 120
# The runner's sealed categories the leads wrote rows of.
HELD = ("webhooks_log", "execution_details", "attempt_details")
MARK = f"sealing-{uuid.uuid4().hex[:12]}"


class Meshes:
    """One var/ of this module's, on which `leadmesh up` is started and stopped again."""

    def __init__(self, var: Path, inbox, oauth_provider, receiver: SharedReceiver) -> None:
        self.var = var
        self.inbox, self.oauth_provider, self.receiver = inbox, oauth_provider, receiver
        self._running: Iterator[Mesh] | None = None

    def start(self, *, sealing: bool) -> Mesh:
        extra = runner_env(self.receiver)
        extra.update(
            RUNNER_SEAL_EXECUTION_DATA="true" if sealing else "false",
            RUNNER_WEBHOOK_BURST="1000",
            RUNNER_WEBHOOK_RATE_PER_SECOND="1000",
            RETENTION_SEALING_INTERVAL_SECONDS="0",
            RETENTION_SEAL_BATCH_SIZE="5",
            RETENTION_DISCOVER_SECONDS="1",
        )
        self._running = _start_mesh(self.var, self.inbox, self.oauth_provider, extra)
        return next(self._running)

    def stop(self) -> None:
        if self._running is not None:
            next(self._running, None)  # past its yield: SIGTERM, and wait
            self._running = None


@pytest.fixture(scope="module")
def meshes(tmp_path_factory, inbox, oauth_provider, receiver) -> Iterator[Meshes]:
    built = Meshes(tmp_path_factory.mktemp("sealing-mesh"), inbox, oauth_provider, receiver)
    yield built
    built.stop()


def _runner_files(var: Path) -> dict[str, bytes]:
    """{name: bytes} of the runner's database files (the database, its -wal and -shm)."""
    files = sorted((var / "runner").glob("*.db*"))
    assert files, f"no runner database under {var / 'runner'}"
    return {path.name: path.read_bytes() for path in files if path.is_file()}


def _holding(var: Path, mark: str) -> list[str]:
    return [name for name, data in _runner_files(var).items() if mark.encode() in data]


def _runner_pid(up: subprocess.Popen) -> int | None:
    listed = subprocess.run(
        ["ps", "--ppid", str(up.pid), "-o", "pid=,args="], capture_output=True, text=True
    ).stdout
    for line in listed.splitlines():
        pid, _, args = line.strip().partition(" ")
        if args.split()[1:3] == ["-m", "services.runner"]:
            return int(pid)
    return None


def _login(api: httpx.Client, address: str) -> None:
    signed = api.post("/v1/sessions", json={"email": address, "password": PASSWORD})
    assert signed.status_code == 200, signed.text
    api.headers["X-CSRF-Token"] = api.cookies["lm_csrf"]


def _leads(api: httpx.Client, receiver: SharedReceiver) -> tuple[str, dict[str, dict]]:
    """A webhook connection and LEADS webhooks delivered through it: {run id: the lead}."""
    path = receiver.path("sealing")
    connection = create(
        api,
        trigger={"type": "webhook"},
        action=action(receiver.https_url(path), body_template={"email": "{{ body.email }}"}),
    )
    sent: dict[str, dict] = {}
    for number in range(LEADS):
        lead = {"email": f"{MARK}-{number}@example.com", "name": f"Lead {number}"}
        accepted = api.post(connection["webhook_url"], json=lead)
        assert accepted.status_code == 202, accepted.text
        sent[accepted.json()["run_id"]] = lead
    for run_id in sent:
        assert finished(api, run_id, timeout=60)["status"] == "succeeded"
    return connection["id"], sent


def _read_back(api: httpx.Client, connection_id: str, sent: dict[str, dict]) -> None:
    """Every run's event and attempt, and every webhook log entry, as they were sent."""
    for run_id, lead in sent.items():
        run = api.get(f"/v1/runs/{run_id}")
        assert run.status_code == 200, run.text
        detail = run.json()
        assert not detail["details_purged"], run_id
        assert detail["event"]["body"] == lead
        assert detail["attempts"] and detail["attempts"][0]["request"]
        assert lead["email"] in str(detail["attempts"][0]["request"])
    logged: dict[str, dict] = {}
    token = ""
    while True:
        params = {"connection_id": connection_id, "page_size": 100}
        if token:
            params["page_token"] = token
        page = api.get("/v1/webhook-log", params=params)
        assert page.status_code == 200, page.text
        for entry in page.json()["items"]:
            logged[entry["run_id"]] = entry
        token = page.json().get("next_page_token") or ""
        if not token:
            break
    assert set(logged) == set(sent)  # no row lost
    for run_id, entry in logged.items():
        assert httpx.Response(200, text=entry["body"]).json() == sent[run_id]


class _Seal:
    """`leadmesh retention seal --progress` in flight, its stderr read line by line."""

    def __init__(self, mesh: Mesh) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "retention", "seal", "--progress"],
            env=mesh.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:  # type: ignore[union-attr]
            self.lines.append(line)

    def wait_for_runner_progress(self, timeout: float = 60.0) -> str:
        """The first progress line of a runner category (the runner seals four: the others are
        still to do, or being done, when it comes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith("runner/") and "sealed" in line:
                    return line
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.01)
        raise AssertionError("no progress of the runner's:\n" + "".join(self.lines))

    def finish(self, timeout: float = 300.0) -> tuple[int, str]:
        stdout, _ = self.process.communicate(timeout=timeout)
        self._reader.join(timeout=5)
        return self.process.returncode, stdout


def test_plaintext_rows_are_sealed_by_a_migration_that_survives_a_sigkill(meshes: Meshes):
    receiver = meshes.receiver
    mesh = meshes.start(sealing=False)
    with mesh.client() as api:
        address = register_and_login(api)
        connection_id, sent = _leads(api, receiver)
    meshes.stop()
    assert _holding(meshes.var, MARK), "the runner wrote no plaintext"

    mesh = meshes.start(sealing=True)
    first = _Seal(mesh)
    seen = first.wait_for_runner_progress()
    victim = _runner_pid(mesh.process)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    code, summary = first.finish()
    sys.stdout.write(f"\n[sealing] killed the runner after {seen.strip()!r}\n{summary}")
    if code != 0:  # the call in flight (and any after it while the runner was down) failed
        assert "failed" in summary and "runner/" in summary, summary
    assert any(line.startswith("runner/") for line in first.lines)

    deadline = time.monotonic() + 60
    while _runner_pid(mesh.process) in (None, victim) or mesh.leadmesh("status").returncode:
        assert time.monotonic() < deadline, "the runner was not started again"
        time.sleep(0.5)
    again = mesh.leadmesh("retention", "seal")
    assert again.returncode == 0, again.stdout + again.stderr
    runner_lines = [line for line in again.stdout.splitlines() if line.startswith("runner/")]
    assert runner_lines and all(
        ": ok," in line and line.endswith(", 0 still in plaintext") for line in runner_lines
    ), again.stdout
    shown = _status_json(mesh)
    sealed = [c for c in shown["categories"] if c["policy"].get("sealed")]
    assert {c["participant"] for c in sealed} >= {"runner"}
    # The days the migration sealed under have keys (notifications: none were written).
    days = {c["policy"]["category"]: c.get("oldest_epoch_day") for c in sealed}
    assert all(days.get(name) for name in HELD), days

    # A copy of the files taken now, the mesh running, holds no lead in plaintext either.
    live = _holding(meshes.var, MARK)
    assert not live, f"a lead in plaintext in the live runner files {live}"
    with mesh.client() as api:
        _login(api, address)
        _read_back(api, connection_id, sent)
    meshes.stop()  # every file closed and checkpointed as an operator's copy would be
    held = _holding(meshes.var, MARK)
    assert not held, f"a lead in plaintext in the runner's files {held}"


def _status_json(mesh: Mesh) -> dict:
    import json

    done = mesh.leadmesh("retention", "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
