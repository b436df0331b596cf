"""The web app's build and serving when things are missing: without Node.js `make web` says so in
one line and succeeds (the API runs without the app); without a build the gateway's pages say how
to get one, and the API answers as ever. The lock file and the ignore rules keep the app's build
reproducible and its output out of git."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_build_the_pages_say_how_and_the_api_answers(tmp_path):
    app = create_app(GatewaySettings(web_dir=tmp_path / "no-build"))
    client = TestClient(app, base_url="https://testserver")
    page = client.get("/connections")
    assert page.status_code == 503
    assert "Node.js" in page.text and "make run" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/no/such/page").status_code == 404
    missing = client.get("/v1/no-such-resource")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_make_web_without_node_says_so_in_one_line(tmp_path):
    # A PATH with what the Makefile itself needs, and no node or npm.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "sh", "find", "cat", "cksum", "cut", "python3"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    done = subprocess.run(
        ["make", "--always-make", "--no-print-directory", "web"],
        cwd=ROOT,
        env={"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/tmp")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines == [
        "Node.js (with npm) is not installed: the web app is not built; the API runs without it"
    ]


def test_the_apps_dependencies_are_locked_and_its_build_is_not_committed():
    package = json.loads((ROOT / "web" / "package.json").read_text())
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    locked = lock["packages"]
    for name in {**package["dependencies"], **package["devDependencies"]}:
        assert f"node_modules/{name}" in locked, f"{name} is not in web/package-lock.json"
    ignored = (ROOT / "web" / ".gitignore").read_text().split()
    assert "node_modules/" in ignored and "dist/" in ignored
