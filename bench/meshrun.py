"""What the mesh benchmarks share: `leadmesh up` on a fresh var/ and free ports, a signed-in
HTTPS client, percentiles."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402

PASSWORD = "benchmark passphrase that is long enough"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Mesh:
    """`leadmesh up` with `extra` environment, until `stop()`."""

    def __init__(self, extra: dict[str, str] | None = None) -> None:
        self.var = Path(tempfile.mkdtemp(prefix="leadmesh-bench-"))
        self.port = free_port()
        self.env = dict(
            os.environ,
            LEADMESH_VAR_DIR=str(self.var),
            LEADMESH_PUBLIC_URL=f"https://localhost:{self.port}",
            GATEWAY_HTTPS_PORT=str(self.port),
            GATEWAY_HTTP_PORT=str(free_port()),
            IDENTITY_PORT=str(free_port()),
            VAULT_PORT=str(free_port()),
            RUNNER_PORT=str(free_port()),
            LEADMESH_LOG_LEVEL="WARNING",
        )
        self.env.pop("REDIS_URL", None)
        self.env.update(extra or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "up"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        up = threading.Event()
        self.output: list[str] = []

        def pump() -> None:
            for line in self.process.stdout:  # type: ignore[union-attr]
                self.output.append(line)
                if line.startswith("leadmesh is up"):
                    up.set()

        threading.Thread(target=pump, daemon=True).start()
        if not up.wait(120):
            self.stop()
            raise SystemExit("the mesh did not come up:\n" + "".join(self.output[-40:]))
        self.context = ssl.create_default_context(cafile=str(self.var / "gateway" / "tls.pem"))
        self.base_url = f"https://localhost:{self.port}"

    def client(self, **kwargs) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, verify=self.context, timeout=60, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


async def sign_up(client: httpx.AsyncClient, email: str) -> None:
    created = await client.post("/v1/accounts", json={"email": email, "password": PASSWORD})
    assert created.status_code == 201, created.text
    signed = await client.post("/v1/sessions", json={"email": email, "password": PASSWORD})
    assert signed.status_code == 200, signed.text
    client.headers["X-CSRF-Token"] = client.cookies["lm_csrf"]
