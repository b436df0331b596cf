"""Every entry point an operator starts, given a setting as README writes it or a wrong one: a
comma-separated list starts, a wrong value is one line on stderr naming the variable, exit status
2, no traceback, and nothing started or written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# Each entry point, and the prefixes of the settings it reads.
ENTRY_POINTS = [
    (["cli", "up"], ("LEADMESH_", "IDENTITY_", "VAULT_", "RUNNER_")),
    (["cli", "config"], ("LEADMESH_", "IDENTITY_", "VAULT_", "RUNNER_")),
    (["cli", "migrate"], ("LEADMESH_", "IDENTITY_", "VAULT_", "RUNNER_")),
    (["cli", "runner-worker"], ("LEADMESH_", "RUNNER_")),
    (["services.identity"], ("LEADMESH_", "IDENTITY_")),
    (["services.vault"], ("LEADMESH_", "VAULT_")),
    (["services.runner"], ("LEADMESH_", "RUNNER_")),
    (["gateway"], ("LEADMESH_",)),
]
WRONG = [
    ("RUNNER_ALLOWED_NETWORKS", "not-a-cidr"),
    ("IDENTITY_PBKDF2_ITERATIONS", "5"),
    ("VAULT_OAUTH_PROVIDERS", '{"crm": {"client_id": "", "client_secret": "canary-secret"}}'),
    ("LEADMESH_RPC_TIMEOUT", "soon"),
    # "canary" in base64 as a KEK: never echoed, and the current version is not among the keys.
    ("VAULT_MASTER_KEYS", '{"current": "v2", "keys": {"v1": "Y2FuYXJ5"}}'),
    ("VAULT_MASTER_KEYS", "/nonexistent/master-keys.json"),
]
CASES = [
    pytest.param(command, variable, value, id=f"{' '.join(command)} {variable}")
    for command, reads in ENTRY_POINTS
    for variable, value in WRONG
    if variable.startswith(reads)
]


def _env(var: Path, **settings: str) -> dict[str, str]:
    ours = ("RUNNER_", "IDENTITY_", "VAULT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return dict(env, LEADMESH_VAR_DIR=str(var), **settings)


@pytest.mark.parametrize(("command", "variable", "value"), CASES)
def test_a_wrong_setting_stops_start_up_with_one_line_and_status_2(
    tmp_path, command, variable, value
):
    var = tmp_path / "var"
    done = subprocess.run(
        [sys.executable, "-m", *command],
        env=_env(var, **{variable: value}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"leadmesh: invalid setting {variable}")
    assert "Traceback" not in done.stderr + done.stdout and "canary" not in done.stderr
    assert not var.exists(), "nothing is prepared before the settings are known to be good"


def test_up_takes_allowed_networks_comma_separated_as_readme_writes_them(tmp_path):
    """It gets past reading every process's settings to preparing var/ (then is stopped)."""
    env = _env(
        tmp_path / "var",
        RUNNER_ALLOWED_NETWORKS="127.0.0.0/8, 10.0.0.0/8",
        RUNNER_EGRESS_ADDRESSES="198.51.100.7",
        GATEWAY_TRUSTED_PROXIES="127.0.0.1/32,::1/128",
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        first = up.stdout.readline()
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        _, stderr = up.communicate(timeout=60)
    assert first.startswith("leadmesh: preparing"), first + stderr
    assert "invalid setting" not in stderr and "SettingsError" not in stderr


def test_config_shows_a_comma_separated_list_as_the_list_it_is(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "cli", "config"],
        env=_env(tmp_path / "var", RUNNER_ALLOWED_NETWORKS="127.0.0.0/8,10.0.0.0/8"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert 'RUNNER_ALLOWED_NETWORKS=["127.0.0.0/8", "10.0.0.0/8"]' in done.stdout.splitlines()
