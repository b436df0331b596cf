"""The whole mesh as a user meets it: `leadmesh up` in its own process group, over HTTPS, with a
real SMTP server (aiosmtpd) on loopback receiving the mail it sends."""

from __future__ import annotations

import email
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from tests.conftest import free_port
from tests.support.oauth_server import OAuthServer
from tests.support.receiver import ReceivedRequest, Receiver, Reply

# Short enough for a test to outwait, long enough to lock out within.
LOCKOUT_WINDOW_SECONDS = 6
# Per connection: a test reaches the limit in a burst; each test has its own connections.
WEBHOOK_BURST, WEBHOOK_RATE_PER_SECOND = 20, 5
# Failed runs in a row before the runner pauses a connection.
PAUSE_AFTER_FAILURES = 3
# At most one failure mail per connection per this many seconds (production: an hour).
FAILURE_MAIL_WINDOW_SECONDS = 4


class Inbox:
    """An aiosmtpd handler keeping every delivered message."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self._arrived = threading.Condition()

    async def handle_DATA(self, _server, _session, envelope) -> str:  # noqa: N802 - aiosmtpd API
        message = email.message_from_bytes(envelope.content, policy=policy.default)
        message.raw = envelope.content  # type: ignore[attr-defined] - the bytes as sent
        with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()
        return "250 OK"

    def wait_for(self, to: str, subject_contains: str = "", timeout: float = 15.0) -> EmailMessage:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for message in reversed(self.messages):
                    if to in str(message["To"]) and subject_contains in str(message["Subject"]):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no mail to {to!r} within {timeout}s")
                self._arrived.wait(remaining)


@pytest.fixture(scope="session")
def inbox() -> Iterator[Inbox]:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    handler.port = controller.port  # type: ignore[attr-defined]
    yield handler
    controller.stop()


@dataclass
class Mesh:
    base_url: str
    http_url: str
    var_dir: Path
    tls_cert: Path
    process: subprocess.Popen
    env: dict[str, str]
    output: list[str] = field(default_factory=list)

    def leadmesh(self, *args: str) -> subprocess.CompletedProcess:
        """The operators' command line, against this mesh."""
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def pid(self, module: str) -> int:
        """The process `leadmesh up` runs as `python -m <module>` (services.vault, gateway …)."""
        listed = subprocess.run(
            ["ps", "--ppid", str(self.process.pid), "-o", "pid=,args="],
            capture_output=True,
            text=True,
        ).stdout
        for line in listed.splitlines():
            pid, _, args = line.strip().partition(" ")
            if args.split()[1:3] == ["-m", module]:
                return int(pid)
        raise AssertionError(f"no {module} process under leadmesh up:\n{listed}")

    def metrics_ports(self) -> dict[str, int]:
        """{process: the port of its GET /metrics} (runner workers run inside the runner)."""
        names = ("gateway", "identity", "vault", "runner", "retention")
        return {name: int(self.env[f"{name.upper()}_METRICS_PORT"]) for name in names}

    def scrape(self, process: str) -> httpx.Response:
        port = self.metrics_ports()[process]
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)

    def client(self, **kwargs) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.tls_cert))
        return httpx.Client(base_url=self.base_url, verify=context, timeout=30, **kwargs)


def launch_up(env: dict[str, str]) -> subprocess.Popen:
    """`leadmesh up` in its own process group, its output merged into one text pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="session")
def oauth_provider() -> Iterator[OAuthServer]:
    """A real OAuth 2 authorization server (authlib) on loopback, configured as provider "crm"."""
    with OAuthServer(access_token_lifetime=3600) as server:
        yield server


class SharedReceiver(Receiver):
    """The session's third-party API (HTTPS with its own CA, and plain HTTP), shared by every
    test: each test delivers to paths of its own (`path()`), scripts answers for those paths only
    (`answer()`) and reads only what arrived there (`to()`, `wait_to()`)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._answers: dict[str, Reply] = {}
        self._delays: dict[str, float] = {}

    def start(self) -> SharedReceiver:
        super().start()
        self.respond_with(self._answer)
        return self

    def path(self, label: str = "t") -> str:
        return f"/t/{label}/{uuid.uuid4().hex}"

    def answer(
        self, path: str, status: int, body: bytes | str | dict = b"", *, delay: float = 0.0
    ) -> None:
        """Every request to `path` is answered with `status` (after `delay` s) from now on."""
        self._answers[path] = (status, None, body)
        self._delays[path] = delay

    def _answer(self, request: ReceivedRequest) -> Reply:
        return self._answers.get(request.path, (200, None, {"ok": True}))

    def _reply_for(self, request: ReceivedRequest) -> tuple[Reply, float]:
        reply, delay = super()._reply_for(request)
        return reply, self._delays.get(request.path, delay)

    def to(self, path: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path == path]

    def wait_to(self, path: str, count: int = 1, timeout: float = 15.0) -> list[ReceivedRequest]:
        deadline = time.monotonic() + timeout
        while len(arrived := self.to(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(arrived)} of {count} requests to {path} in {timeout}s")
            time.sleep(0.02)
        return arrived


@pytest.fixture(scope="session")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedReceiver]:
    with SharedReceiver(tmp_path_factory.mktemp("receiver")) as server:
        yield server


def runner_env(receiver: SharedReceiver) -> dict[str, str]:
    """The runner may deliver to the receiver on loopback (its CA trusted, plain HTTP allowed),
    retries quickly, and limits webhooks so that a test reaches the limit at once."""
    return {
        # As README writes it (comma-separated); GATEWAY_TRUSTED_PROXIES below keeps JSON.
        "RUNNER_ALLOWED_NETWORKS": "127.0.0.0/8",
        "RUNNER_CA_FILE": str(receiver.ca_file),
        "RUNNER_ALLOW_PLAIN_HTTP": "1",
        "RUNNER_BACKOFF_BASE_SECONDS": "0.05",
        "RUNNER_BACKOFF_CAP_SECONDS": "0.5",
        # The fuzzers make connections to hosts that do not answer: do not wait on them long.
        "RUNNER_CONNECT_TIMEOUT_SECONDS": "3",
        "RUNNER_RECONCILE_SECONDS": "0.2",
        # Identity's deletion requests re-read every second (production: 30 s), so a cancelled
        # deletion's suspension is lifted within a test's patience.
        "RUNNER_SUSPENSION_RECONCILE_SECONDS": "1",
        # Redis: a stream of this mesh's own (others share the test database).
        "RUNNER_QUEUE_STREAM": f"leadmesh:e2e:{uuid.uuid4().hex[:8]}:runs",
        "RUNNER_REQUEUE_AFTER_SECONDS": "2",
        "RUNNER_WEBHOOK_BURST": str(WEBHOOK_BURST),
        "RUNNER_WEBHOOK_RATE_PER_SECOND": str(WEBHOOK_RATE_PER_SECOND),
        "RUNNER_PAUSE_AFTER_FAILURES": str(PAUSE_AFTER_FAILURES),
        # Failure mails gathered per connection over seconds, not the hour of production.
        "RUNNER_FAILURE_MAIL_WINDOW_SECONDS": str(FAILURE_MAIL_WINDOW_SECONDS),
    }


METRICS_PORT_NAMES = ("GATEWAY", "IDENTITY", "VAULT", "RUNNER", "RETENTION", "RUNNER_WORKER")


def _start_mesh(
    var: Path, inbox: Inbox, oauth_provider: OAuthServer, extra: dict[str, str]
) -> Iterator[Mesh]:
    """`leadmesh up` on var/ and free ports, until the generator is closed."""
    https_port, http_port = free_port(), free_port()
    env = dict(
        os.environ,
        LEADMESH_VAR_DIR=str(var),
        LEADMESH_PUBLIC_URL=f"https://localhost:{https_port}",
        LEADMESH_FRONTEND_URL=f"https://localhost:{https_port}",
        GATEWAY_HTTPS_PORT=str(https_port),
        GATEWAY_HTTP_PORT=str(http_port),
        IDENTITY_PORT=str(free_port()),
        VAULT_PORT=str(free_port()),
        RUNNER_PORT=str(free_port()),
        RETENTION_PORT=str(free_port()),
        # Two meshes run at once (pytest-xdist): never the default metrics ports. Runner workers
        # take a port the kernel picks (0): from a base they would count up into ports handed to
        # other processes of the mesh (a gateway once failed to bind the one a worker took).
        **{f"{n}_METRICS_PORT": str(free_port()) for n in METRICS_PORT_NAMES if "WORKER" not in n},
        RUNNER_WORKER_METRICS_PORT="0",
        SMTP_URL=f"smtp://127.0.0.1:{inbox.port}",  # type: ignore[attr-defined]
        IDENTITY_LOCKOUT_WINDOW_SECONDS=str(LOCKOUT_WINDOW_SECONDS),
        # As RUNNER_SUSPENSION_RECONCILE_SECONDS (runner_env): a lifted suspension within seconds.
        VAULT_SUSPENSION_RECONCILE_SECONDS="1",
        # Tests play clients at several addresses through X-Forwarded-For from loopback.
        OTEL_BSP_SCHEDULE_DELAY="200",  # export spans every 0.2 s, so tests need not wait long
        GATEWAY_TRUSTED_PROXIES='["127.0.0.1/32", "::1/128"]',
        VAULT_OAUTH_PROVIDERS=json.dumps(
            {
                "crm": {
                    "title": "Acme CRM",
                    "authorize_url": oauth_provider.authorize_url,
                    "token_url": oauth_provider.token_url,
                    "client_id": oauth_provider.client_id,
                    "client_secret": oauth_provider.client_secret,
                    "scopes": ["contacts.read"],
                }
            }
        ),
    )
    env.pop("REDIS_URL", None)
    env.update(extra)
    process = launch_up(env)
    mesh = Mesh(
        base_url=f"https://localhost:{https_port}",
        http_url=f"http://127.0.0.1:{http_port}",
        var_dir=var,
        tls_cert=var / "gateway" / "tls.pem",
        process=process,
        env=env,
    )
    up = threading.Event()

    def pump() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            mesh.output.append(line)
            if line.startswith("leadmesh is up"):
                up.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 120
    while not up.is_set():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("leadmesh up did not come up:\n" + "".join(mesh.output[-60:]))
        time.sleep(0.1)
    yield mesh
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise


@pytest.fixture(scope="session")
def mesh_up(
    tmp_path_factory: pytest.TempPathFactory,
    inbox: Inbox,
    oauth_provider: OAuthServer,
    receiver: SharedReceiver,
) -> Iterator[Mesh]:
    """The embedded default: SQLite files, in-process counters, no Redis."""
    var = tmp_path_factory.mktemp("mesh-var")
    yield from _start_mesh(var, inbox, oauth_provider, runner_env(receiver))


@pytest.fixture(scope="session")
def mesh_scaled(
    tmp_path_factory: pytest.TempPathFactory,
    inbox: Inbox,
    oauth_provider: OAuthServer,
    postgres_server: str,
    redis_server: str,
    receiver: SharedReceiver,
) -> Iterator[Mesh]:
    """The scale-out stores: a fresh PostgreSQL database per service, and Redis."""
    import psycopg
    from sqlalchemy import make_url

    names = {
        service: f"lm_e2e_{service}_{uuid.uuid4().hex[:8]}"
        for service in ("identity", "vault", "runner", "retention")
    }
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        for name in names.values():
            admin.execute(f'CREATE DATABASE "{name}"')
    base = make_url(postgres_server)
    extra = {
        f"{service.upper()}_DATABASE_URL": base.set(database=name).render_as_string(
            hide_password=False
        )
        for service, name in names.items()
    }
    extra["REDIS_URL"] = redis_server
    extra.update(runner_env(receiver))
    yield from _start_mesh(tmp_path_factory.mktemp("mesh-scaled"), inbox, oauth_provider, extra)
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        for name in names.values():
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def api(mesh_up: Mesh) -> Iterator[httpx.Client]:
    with mesh_up.client() as client:
        yield client


_counter = iter(range(10**6))


def spans(var_dir: Path) -> list[dict]:
    """Every span every process has exported so far (OTLP-JSON lines under var/traces/)."""
    found = []
    for path in sorted((var_dir / "traces").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            for resource in json.loads(line).get("resourceSpans", []):
                service = next(
                    a["value"]["stringValue"]
                    for a in resource["resource"]["attributes"]
                    if a["key"] == "service.name"
                )
                for scope in resource.get("scopeSpans", []):
                    found += [{**span, "service": service} for span in scope.get("spans", [])]
    return found


def new_email(label: str = "user") -> str:
    return f"{label}-{os.getpid()}-{next(_counter)}-{time.monotonic_ns()}@example.com"


PASSWORD = "correct horse battery staple 42"


def register_and_login(client: httpx.Client, address: str | None = None) -> str:
    address = address or new_email()
    created = client.post("/v1/accounts", json={"email": address, "password": PASSWORD})
    assert created.status_code == 201, created.text
    signed = client.post("/v1/sessions", json={"email": address, "password": PASSWORD})
    assert signed.status_code == 200, signed.text
    client.headers["X-CSRF-Token"] = client.cookies["lm_csrf"]
    return address


# --- connections and their runs ---

TERMINAL = ("succeeded", "failed")


def announced(client: httpx.Client, mesh: Mesh, inbox: Inbox) -> EmailMessage:
    """The `new_features` mail of `leadmesh announce`, as the signed-in `client`'s account gets
    it once it consents to that purpose."""
    address = client.get("/v1/me").json()["email"]
    grant = {"items": [{"purpose": "new_features", "granted": True}]}
    assert client.put("/v1/me/consents", json=grant).status_code == 200
    subject = f"What is new {time.monotonic_ns()}"
    sent = mesh.leadmesh(
        "announce", "--purpose", "new_features", "--subject", subject, "--body", "Hello."
    )
    assert sent.returncode == 0, sent.stderr
    return inbox.wait_for(address, subject)


def action(url: str, **fields: Any) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "url": url, **fields}


def create(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"name": f"conn {uuid.uuid4().hex[:8]}", "trigger": {"type": "manual"}, **fields}
    created = client.post("/v1/connections", json=body)
    assert created.status_code == 201, created.text
    return created.json()


def start_run(client: httpx.Client, connection_id: str, payload: Any = None) -> str:
    started = client.post(f"/v1/connections/{connection_id}/runs", json={"payload": payload})
    assert started.status_code == 202, started.text
    assert set(started.json()) == {"run_id"}
    return started.json()["run_id"]


def finished(client: httpx.Client, run_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """The run once it succeeded or failed; every status seen on the way is in `seen`."""
    deadline, seen = time.monotonic() + timeout, []
    while True:
        run = client.get(f"/v1/runs/{run_id}")
        assert run.status_code == 200, run.text
        detail = run.json()
        if not seen or seen[-1] != detail["status"]:
            seen.append(detail["status"])
        if detail["status"] in TERMINAL:
            return {**detail, "seen": seen}
        assert time.monotonic() < deadline, f"run {run_id} still {detail['status']}"
        time.sleep(0.05)


# --- the web app in a browser (tests/e2e/web.py) ---


@pytest.fixture(scope="module")
def purging_mesh(
    tmp_path_factory, inbox, oauth_provider, receiver: SharedReceiver
) -> Iterator[Mesh]:
    """A mesh of one test file's own, for a file that purges as of days ahead: that destroys
    today's day keys, and a mesh without them takes no webhook for the rest of the day, so the
    files after it in the process could not share it. Such a file overrides `mesh_up` with it."""
    yield from _start_mesh(
        tmp_path_factory.mktemp("purging"), inbox, oauth_provider, runner_env(receiver)
    )


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium under Playwright, one per test file: Playwright's sync API keeps an
    event loop running while it is open, which the asyncio tests after it in the same process
    could not start theirs beside."""
    from playwright.sync_api import sync_playwright

    from tests.e2e.web import chromium_path

    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


@pytest.fixture
def browser_context(chromium, mesh_up: Mesh):
    """A fresh browser profile (no cookies, no storage) on the mesh's origin. The gateway's
    certificate is self-signed, made by `leadmesh up`: the profile accepts it."""
    from tests.e2e.web import DESKTOP

    context = chromium.new_context(
        base_url=mesh_up.base_url, ignore_https_errors=True, viewport=DESKTOP
    )
    context.set_default_timeout(15_000)
    yield context
    context.close()


@pytest.fixture
def page(browser_context):
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    assert not errors, f"the app threw in the browser: {errors}"


def sign_up_in_browser(page, address: str | None = None, password: str = PASSWORD) -> str:
    """A new account made through the sign-up page, then signed in through the sign-in page."""
    address = address or new_email("web")
    page.goto("/sign-up")
    page.get_by_label("E-mail", exact=True).fill(address)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url("**/sign-in**")
    sign_in_in_browser(page, address, password)
    return address


def sign_in_in_browser(page, address: str, password: str = PASSWORD) -> None:
    """Signed in through the sign-in page, which leads to the connections."""
    if "/sign-in" not in page.url:
        page.goto("/sign-in")
    page.get_by_label("E-mail", exact=True).fill(address)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/connections")
