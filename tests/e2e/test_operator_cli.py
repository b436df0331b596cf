"""The operators' command line against a running mesh, and `leadmesh up` stopping cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import Mesh, launch_up


def test_status_reports_every_process_serving(mesh_up: Mesh):
    done = mesh_up.leadmesh("status")
    assert done.returncode == 0, done.stderr
    states = dict(line.split() for line in done.stdout.splitlines())
    assert states == {
        "identity": "SERVING",
        "vault": "SERVING",
        "runner": "SERVING",
        "gateway": "SERVING",
    }
    only = mesh_up.leadmesh("status", "--only", "identity")
    assert only.returncode == 0 and only.stdout.split() == ["identity", "SERVING"]


def test_config_shows_effective_settings_with_secrets_masked(mesh_up: Mesh):
    env = dict(
        mesh_up.env,
        IDENTITY_UNSUBSCRIBE_SECRET="canary-unsubscribe-secret",
        SMTP_URL="smtp://mailer:canary-smtp-password@127.0.0.1:2525",
        IDENTITY_DATABASE_URL="postgresql://app:canary-db-password@db.internal/identity",
        VAULT_OAUTH_PROVIDERS='{"crm": {"client_id": "c", "client_secret": "canary-client"}}',
        VAULT_MASTER_KEYS=json.dumps({"current": "v1", "keys": {"v1": "canary" + "A" * 38}}),
    )
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "canary" not in done.stdout
    shown = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert shown["IDENTITY_PORT"] == mesh_up.env["IDENTITY_PORT"]
    assert shown["IDENTITY_PBKDF2_ITERATIONS"] == "210000"
    assert shown["IDENTITY_UNSUBSCRIBE_SECRET"] == "********"
    assert shown["IDENTITY_DATABASE_URL"] == "postgresql://app:***@db.internal/identity"
    assert shown["SMTP_URL"] == "smtp://mailer:***@127.0.0.1:2525"
    assert shown["VAULT_OAUTH_PROVIDERS"] == shown["VAULT_MASTER_KEYS"] == "********"


def test_a_status_against_nothing_fails(mesh_up: Mesh):
    env = dict(mesh_up.env, IDENTITY_PORT=str(free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "status", "--only", "identity"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "UNAVAILABLE" in done.stdout


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_prints_where_it_listens_and_stops_everything_cleanly(tmp_path, stop_signal):
    https_port = free_port()
    env = dict(
        os.environ,
        LEADMESH_VAR_DIR=str(tmp_path / "var"),
        LEADMESH_PUBLIC_URL=f"https://localhost:{https_port}",
        GATEWAY_HTTPS_PORT=str(https_port),
        GATEWAY_HTTP_PORT=str(free_port()),
        IDENTITY_PORT=str(free_port()),
        VAULT_PORT=str(free_port()),
    )
    env.pop("REDIS_URL", None)
    env.pop("SMTP_URL", None)
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
