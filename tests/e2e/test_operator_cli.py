"""The operators' command line against a running mesh, and `leadmesh up` stopping cleanly."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import METRICS_PORT_NAMES, Mesh, launch_up


def test_status_reports_every_process_serving(mesh_up: Mesh):
    done = mesh_up.leadmesh("status")
    assert done.returncode == 0, done.stderr
    states = {row[0]: row[1] for row in (line.split() for line in done.stdout.splitlines()[1:6])}
    assert states == {
        "identity": "SERVING",
        "vault": "SERVING",
        "runner": "SERVING",
        "retention": "SERVING",
        "gateway": "SERVING",
    }
    only = mesh_up.leadmesh("status", "--only", "identity")
    assert only.returncode == 0
    [row] = only.stdout.splitlines()[1:]  # no queue or retention line: neither was asked for
    assert row.split()[:2] == ["identity", "SERVING"]


def test_config_shows_effective_settings_with_secrets_masked(mesh_up: Mesh):
    env = dict(
        mesh_up.env,
        IDENTITY_UNSUBSCRIBE_SECRET="canary-unsubscribe-secret",
        SMTP_URL="smtp://mailer:canary-smtp-password@127.0.0.1:2525",
        IDENTITY_DATABASE_URL="postgresql://app:canary-db-password@db.internal/identity",
        VAULT_OAUTH_PROVIDERS=json.dumps(
            {
                "crm": {
                    "authorize_url": "https://auth.crm.example/authorize",
                    "token_url": "https://auth.crm.example/token",
                    "client_id": "c",
                    "client_secret": "canary-client",
                }
            }
        ),
        VAULT_MASTER_KEYS=json.dumps({"current": "v1", "keys": {"v1": "canary" + "A" * 37 + "="}}),
    )
    done = subprocess.run(
        [sys.executable, "-m", "cli", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "canary" not in done.stdout
    header, *lines = done.stdout.splitlines()
    # It says what it describes: the processes `leadmesh up` would start from this environment.
    assert header.startswith(
        "# settings of identity, vault, runner, retention, gateway as `leadmesh up`"
    )
    shown = dict(line.split("=", 1) for line in lines)
    assert shown["IDENTITY_PORT"] == mesh_up.env["IDENTITY_PORT"]
    assert shown["IDENTITY_PBKDF2_ITERATIONS"] == "210000"
    assert shown["IDENTITY_UNSUBSCRIBE_SECRET"] == "********"
    assert shown["IDENTITY_DATABASE_URL"] == "postgresql://app:***@db.internal/identity"
    assert shown["SMTP_URL"] == "smtp://mailer:***@127.0.0.1:2525"
    assert shown["VAULT_OAUTH_PROVIDERS"] == shown["VAULT_MASTER_KEYS"] == "********"
    assert shown["LEADMESH_RESTART_LIMIT"] == "5"


def test_rotating_the_key_of_an_unknown_user_is_an_error(mesh_up: Mesh):
    done = mesh_up.leadmesh("keys", "rotate-user", "no-such-user")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "refused: NOT_FOUND USER_KEY_NOT_FOUND: the vault holds no data key for this user "
        "(unknown, or no secret stored)"
    ]
    assert "re-encrypted" not in done.stdout


def test_a_status_against_nothing_fails(mesh_up: Mesh):
    env = dict(mesh_up.env, IDENTITY_PORT=str(free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "cli", "status", "--only", "identity"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "UNAVAILABLE" in done.stdout


def _own_up_env(var: Path, **extra: str) -> dict[str, str]:
    """The environment of a `leadmesh up` of a test's own, on free ports."""
    https_port = free_port()
    env = dict(
        os.environ,
        LEADMESH_VAR_DIR=str(var),
        LEADMESH_PUBLIC_URL=f"https://localhost:{https_port}",
        GATEWAY_HTTPS_PORT=str(https_port),
        GATEWAY_HTTP_PORT=str(free_port()),
        IDENTITY_PORT=str(free_port()),
        VAULT_PORT=str(free_port()),
        RUNNER_PORT=str(free_port()),
        RETENTION_PORT=str(free_port()),
        # Metrics endpoints too: other meshes run beside this one (never the default ports).
        **{f"{name}_METRICS_PORT": str(free_port()) for name in METRICS_PORT_NAMES},
        **extra,
    )
    env.pop("REDIS_URL", None)
    env.pop("SMTP_URL", None)
    return env


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_prints_where_it_listens_and_stops_everything_cleanly(tmp_path, stop_signal):
    env = _own_up_env(tmp_path / "var")
    https_port = env["GATEWAY_HTTPS_PORT"]
    up = launch_up(env)
    lines = []
    try:
        deadline = time.monotonic() + 90
        for line in up.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("Ctrl-C stops everything") or time.monotonic() > deadline:
                break
        banner = "".join(lines)
        assert "leadmesh is up" in banner, banner
        assert f"https://localhost:{https_port}/v1" in banner
        assert f"127.0.0.1:{env['IDENTITY_PORT']}" in banner
        up.send_signal(stop_signal)
        rest, _ = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    assert up.returncode == 0, rest
    assert "leadmesh: stopped" in rest
    assert '"level": "error"' not in rest and "Traceback" not in rest
    # No process of the group outlives the launcher.
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(up.pid, 0)
    assert (tmp_path / "var" / "identity" / "identity.db").exists()
    assert (tmp_path / "var" / "vault" / "vault.db").exists()
    keys = tmp_path / "var" / "vault" / "master-keys.json"
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "var" / "pki" / "ca.pem").exists()


def _child_pid(up: subprocess.Popen, module: str) -> int | None:
    """The pid of the launcher's child serving `python -m <module>`, if one runs."""
    listed = subprocess.run(
        ["ps", "--ppid", str(up.pid), "-o", "pid=,args="], capture_output=True, text=True
    ).stdout
    for line in listed.splitlines():
        pid, _, args = line.strip().partition(" ")
        if args.split()[1:3] == ["-m", module]:
            return int(pid)
    return None


class _Lines:
    """The launcher's output, read on a thread, awaited line by line."""

    def __init__(self, up: subprocess.Popen) -> None:
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(up,), daemon=True).start()

    def _pump(self, up: subprocess.Popen) -> None:
        for line in up.stdout:  # type: ignore[union-attr]
            self._lines.put(line)

    def wait_for(self, start: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line {start!r}:\n{''.join(self.seen)}") from None
            self.seen.append(line)
            if line.startswith(start):
                return line


def _healthy(env: dict[str, str], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-m", "cli", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode == 0:
            return True
        time.sleep(0.3)
    return False


def test_up_restarts_a_crashed_process_and_gives_up_on_one_that_keeps_crashing(tmp_path):
    env = _own_up_env(
        tmp_path / "var",
        LEADMESH_RESTART_BACKOFF_SECONDS="0.5",
        LEADMESH_RESTART_LIMIT="3",
        LEADMESH_RESTART_WINDOW_SECONDS="300",
    )
    up = launch_up(env)
    output = _Lines(up)
    try:
        output.wait_for("Ctrl-C stops everything")
        first = _child_pid(up, "services.runner")
        assert first is not None
        os.kill(first, signal.SIGKILL)
        crashed = output.wait_for("leadmesh: runner exited")
        assert "SIGKILL (crash 1; 3 within 300s stop the mesh); restarting in 0.5s" in crashed
        output.wait_for("leadmesh: runner restarted")
        assert _healthy(env), "the mesh did not serve again after the restart"
        second = _child_pid(up, "services.runner")
        assert second not in (None, first)
        os.kill(second, signal.SIGKILL)
        # The backoff doubles with each crash inside the window.
        assert "restarting in 1s" in output.wait_for("leadmesh: runner exited")
        output.wait_for("leadmesh: runner restarted")
        third = _child_pid(up, "services.runner")
        assert third is not None
        os.kill(third, signal.SIGKILL)
        gave_up = output.wait_for("leadmesh: runner exited")
        assert "has crashed 3 times within 300s; giving up and stopping the mesh" in gave_up
        output.wait_for("leadmesh: stopped", timeout=60)
        assert up.wait(timeout=30) == 1
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    assert "Traceback" not in "".join(output.seen)
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(up.pid, 0)
