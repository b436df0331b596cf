"""`leadmesh up --profile scale` as an operator starts it: every service on a PostgreSQL database
of its own (created by `up`), Redis, and two `runner-worker` processes doing every delivery. A few
hundred webhooks go in concurrently while one worker is killed with SIGKILL; the supervisor starts
it again, and every webhook answered 202 is delivered, at least once.

Duplicates exist (at least once, not exactly once): the runs the killed worker held may have
reached the receiver before their outcome was recorded; their lease runs out and another worker
delivers them again. A worker holds at most RUNNER_CONCURRENCY runs (claimed, not yet recorded), so
one kill costs at most that many extra deliveries, only of the runs it held, each once: the test
prints them and holds them to that bound. Each delivery carries its run's id as `Idempotency-Key`,
so the receiver could drop them.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url

from tests.conftest import free_port
from tests.e2e.conftest import (
    METRICS_PORT_NAMES,
    Mesh,
    SharedReceiver,
    action,
    create,
    register_and_login,
    runner_env,
)

SERVICES = ("identity", "vault", "runner", "retention")
EVENTS = 200
SENDERS = 16  # webhooks in flight at once
CONCURRENCY = 16  # RUNNER_CONCURRENCY: deliveries one worker has in flight at most
LEASE_SECONDS = 6
SETTLE_TIMEOUT = 60.0
STARTED = re.compile(r"leadmesh: (runner-worker-\d+) (?:started|restarted) \(pid (\d+)\)")


def _scale_env(var: Path, **settings: str) -> dict[str, str]:
    """This shell's environment without any store of ours, plus `settings`."""
    ours = ("IDENTITY_", "VAULT_", "RUNNER_", "RETENTION_", "REDIS_", "LEADMESH_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(LEADMESH_VAR_DIR=str(var), **settings)
    return env


# --- what the operator is told when a store is missing ---


@pytest.mark.parametrize("case", ["missing", "unreachable", "sqlite"])
def test_a_missing_or_unreachable_store_is_one_line_naming_it_and_nothing_starts(
    tmp_path: Path, case: str
):
    var = tmp_path / "var"
    settings = {}
    if case == "unreachable":  # ports nothing listens on; a password that must not be echoed
        settings = {
            "LEADMESH_POSTGRES_URL": f"postgresql://lm:canary-pw@127.0.0.1:{free_port()}/postgres",
            "REDIS_URL": f"redis://:canary-pw@127.0.0.1:{free_port()}/0",
        }
    elif case == "sqlite":  # a service's own database, but not on PostgreSQL
        settings = {"VAULT_DATABASE_URL": f"sqlite:///{tmp_path / 'vault.db'}"}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "up", "--profile", "scale"],
        env=_scale_env(var, **settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("leadmesh: --profile scale: "), lines[0]
    assert "LEADMESH_POSTGRES_URL" in lines[0] and "REDIS_URL" in lines[0], lines[0]
    if case == "unreachable":
        assert lines[0].count("is not reachable") == 2, lines[0]
    if case == "sqlite":
        assert "VAULT_DATABASE_URL: --profile scale keeps every service on PostgreSQL" in lines[0]
    assert "Traceback" not in done.stderr and "canary" not in done.stderr + done.stdout
    assert not done.stdout and not var.exists(), "nothing is prepared or started"


def test_up_help_describes_the_profiles():
    done = subprocess.run(
        [sys.executable, "-m", "cli", "up", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for word in ("--profile", "scale", "LEADMESH_POSTGRES_URL", "REDIS_URL", "runner-worker"):
        assert word in done.stdout, (word, done.stdout)


# --- the profile under load, one worker killed ---


class ScaledUp:
    """`leadmesh up --profile scale` in its own process group; its output in `lines`."""

    def __init__(self, env: dict[str, str], https_port: int, var: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "up", "--profile", "scale"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.mesh = Mesh(
            base_url=f"https://localhost:{https_port}",
            http_url="",
            var_dir=var,
            tls_cert=var / "gateway" / "tls.pem",
            process=self.process,
            env=env,
        )
        self.lines = self.mesh.output
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first line matching `pattern` (a regular expression), waiting for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if found := re.search(pattern, line):
                        return found
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"no {pattern!r}:\n" + "".join(self.lines[-60:]))
                self._changed.wait(0.2)

    def pids(self) -> dict[str, int]:
        """{worker: its newest pid}, as the supervisor printed them."""
        found: dict[str, int] = {}
        for line in list(self.lines):
            if match := STARTED.search(line):
                found[match[1]] = int(match[2])
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                raise


@pytest.fixture(scope="module")
def scaled(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: str,
    redis_server: str,
    receiver: SharedReceiver,
) -> Iterator[tuple[ScaledUp, str]]:
    """The profile on free ports, databases of its own (prefix unique, dropped afterwards):
    (the mesh, the runner database's URL). One for the module: the tests below leave every
    worker running (or restarted) as they found it."""
    import psycopg

    prefix = f"lm_scale_{uuid.uuid4().hex[:8]}_"
    https_port, var = free_port(), tmp_path_factory.mktemp("scale") / "var"
    settings = {
        **runner_env(receiver),
        "LEADMESH_POSTGRES_URL": postgres_server,
        "LEADMESH_DATABASE_PREFIX": prefix,
        "REDIS_URL": redis_server,
        "LEADMESH_PUBLIC_URL": f"https://localhost:{https_port}",
        "GATEWAY_HTTPS_PORT": str(https_port),
        "GATEWAY_HTTP_PORT": "0",
        **{f"{service.upper()}_PORT": str(free_port()) for service in SERVICES},
        **{f"{name}_METRICS_PORT": str(free_port()) for name in METRICS_PORT_NAMES},
        "LEADMESH_LOG_LEVEL": "WARNING",
        "LEADMESH_RESTART_BACKOFF_SECONDS": "0.5",
        # Ingest is not the subject: no rate limit in the way of the load.
        "RUNNER_WEBHOOK_BURST": "100000",
        "RUNNER_WEBHOOK_RATE_PER_SECOND": "100000",
        "RUNNER_CONCURRENCY": str(CONCURRENCY),
        "RUNNER_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    began = time.monotonic()
    up = ScaledUp(_scale_env(var, **settings), https_port, var)
    try:
        up.wait_for(r"^leadmesh is up", timeout=120)
        print(f"\n[scale] up in {time.monotonic() - began:.1f}s")
        created = up.wait_for(r"leadmesh: created databases (.*)", timeout=1)[1].split(", ")
        assert sorted(created) == sorted(prefix + service for service in SERVICES)
        runner_db = make_url(postgres_server).set(database=prefix + "runner")
        yield up, runner_db.render_as_string(hide_password=False)
    finally:
        stopping = time.monotonic()
        up.stop()
        print(f"[scale] stopped in {time.monotonic() - stopping:.1f}s")
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            for service in SERVICES:
                admin.execute(f'DROP DATABASE IF EXISTS "{prefix}{service}" WITH (FORCE)')


def _held_by(runner_db: str, pid: int) -> list[str]:
    """Runs the worker process `pid` holds right now (its one worker claims as host-pid-0)."""
    import psycopg

    with psycopg.connect(runner_db) as db:
        rows = db.execute(
            "SELECT id FROM runs WHERE status = 'running' AND worker LIKE %s", (f"%-{pid}-0",)
        ).fetchall()
    return [row[0] for row in rows]


async def _send(url: str, cafile: Path, accepted: dict[int, str]) -> None:
    """EVENTS webhooks carrying {"n": i}, SENDERS at a time; accepted[n]: n's run id."""
    context = ssl.create_default_context(cafile=str(cafile))
    queue = iter(range(EVENTS))
    async with httpx.AsyncClient(verify=context, timeout=30) as client:

        async def sender() -> None:
            for n in queue:
                reply = await client.post(url, json={"n": n})
                assert reply.status_code == 202, reply.text
                accepted[n] = reply.json()["run_id"]

        await asyncio.gather(*(sender() for _ in range(SENDERS)))


def _statuses(api: httpx.Client, connection_id: str) -> Counter[str]:
    statuses: Counter[str] = Counter()
    params = {"connection_id": connection_id, "page_size": 100}
    while True:
        page = api.get("/v1/activity", params=params)
        assert page.status_code == 200, page.text
        statuses.update(run["status"] for run in page.json()["items"])
        if not (token := page.json().get("next_page_token")):
            return statuses
        params["page_token"] = token


def _workers_shown(up: ScaledUp) -> tuple[int, dict[str, dict]]:
    done = up.mesh.leadmesh("status", "--profile", "scale", "--json")
    assert "Traceback" not in done.stderr, done.stderr
    processes = json.loads(done.stdout)["processes"]
    return done.returncode, {p["name"]: p for p in processes if p["name"].startswith("runner-w")}


def test_status_and_config_know_the_profile_its_workers_and_databases(scaled):
    up, _ = scaled
    env, version = up.mesh.env, importlib.metadata.version("leadmesh")
    _two_workers_serve_metrics(env)  # a worker counts as up before its metrics may serve
    code, workers = _workers_shown(up)
    assert code == 0 and list(workers) == ["runner-worker-1", "runner-worker-2"], workers
    for shown in workers.values():
        assert (shown["state"], shown["version"]) == ("SERVING", version), shown
        assert shown["metrics"] == f"http://{shown['address']}/metrics", shown
        assert 'service_name="runner-worker"' in httpx.get(shown["metrics"], timeout=5).text
    assert len({shown["metrics"] for shown in workers.values()}) == 2
    plain = json.loads(up.mesh.leadmesh("status", "--json").stdout)["processes"]
    assert [p["name"] for p in plain] == ["identity", "vault", "runner", "retention", "gateway"]

    stopped = up.pids()["runner-worker-1"]  # as if hung: its port taken, nothing answers
    os.kill(stopped, signal.SIGSTOP)
    try:
        code, after = _workers_shown(up)
        text = up.mesh.leadmesh("status", "--profile", "scale")
    finally:
        os.kill(stopped, signal.SIGCONT)
    assert code == 1 and text.returncode == 1
    serving = [shown["metrics"] for shown in after.values() if shown["state"] == "SERVING"]
    assert serving == [workers["runner-worker-2"]["metrics"]], after
    rows = {line.split()[0]: line.split()[1] for line in text.stdout.splitlines()[1:8]}
    assert sorted(rows[name] for name in workers) == ["SERVING", "UNAVAILABLE"], text.stdout

    config = up.mesh.leadmesh("config", "--profile", "scale")
    assert config.returncode == 0, config.stderr
    header, *rest = config.stdout.splitlines()
    assert "runner-worker-2 as `leadmesh up --profile scale`" in header, header
    settings = dict(line.split("=", 1) for line in rest if not line.startswith("#"))
    server = make_url(env["LEADMESH_POSTGRES_URL"])
    for service in SERVICES:
        database = server.set(database=env["LEADMESH_DATABASE_PREFIX"] + service)
        expected = database.render_as_string(hide_password=True)
        assert settings[f"{service.upper()}_DATABASE_URL"] == expected, service
    assert settings["RUNNER_WORKERS"] == "0"
    assert settings["LEADMESH_RUNNER_WORKER_PROCESSES"] == "2"


def test_a_worker_killed_mid_load_loses_no_accepted_webhook(
    scaled: tuple[ScaledUp, str], receiver: SharedReceiver
):
    up, runner_db = scaled
    began = time.monotonic()
    workers = up.pids()
    assert set(workers) == {"runner-worker-1", "runner-worker-2"}, "".join(up.lines)
    _two_workers_serve_metrics(up.mesh.env)
    path = receiver.path("scale")
    # Slow enough that the victim has deliveries in flight when it dies.
    receiver.answer(path, 200, {"ok": True}, delay=0.05)
    with up.mesh.client() as api:
        register_and_login(api)
        credential = api.post(
            "/v1/credentials",
            json={"name": "CRM", "kind": "api_key", "provider": "crm",
                  "secret": {"key": "sk_scale_0123456789", "header": "X-Api-Key"}},
        )  # fmt: skip
        assert credential.status_code == 201, credential.text
        connection = create(
            api,
            trigger={"type": "webhook"},
            action=action(
                receiver.https_url(path),
                credential_id=credential.json()["id"],
                body_template={"n": "{{ body.n }}"},
            ),
            max_attempts=5,
        )
        accepted: dict[int, str] = {}
        victim = workers["runner-worker-1"]

        async def load_and_kill() -> list[str]:
            load = asyncio.create_task(_send(connection["webhook_url"], up.mesh.tls_cert, accepted))
            while len(receiver.to(path)) < 50:
                assert not load.done() or load.exception() is None, load.exception()
                await asyncio.sleep(0.02)
            # SIGSTOP first, so what the victim holds is known when it dies.
            orphans: list[str] = []
            for _ in range(100):
                os.kill(victim, signal.SIGSTOP)
                if orphans := _held_by(runner_db, victim):
                    break
                os.kill(victim, signal.SIGCONT)
                await asyncio.sleep(0.05)
            os.kill(victim, signal.SIGKILL)
            print(
                f"\n[scale] SIGKILL runner-worker-1 (pid {victim}) holding {len(orphans)} runs, "
                f"after {len(receiver.to(path))} deliveries and {len(accepted)} acceptances"
            )
            await load
            print(f"[scale] load sent in {time.monotonic() - began:.1f}s")
            return orphans

        orphans = asyncio.run(load_and_kill())
        assert orphans, "the victim never held a run: nothing would be tested"
        restarted = up.wait_for(r"leadmesh: runner-worker-1 restarted \(pid (\d+)\)", 15)
        assert int(restarted[1]) != victim
        os.kill(int(restarted[1]), 0)  # alive

        assert len(accepted) == EVENTS
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while not set(accepted.values()) <= {
            r.headers.get("idempotency-key") for r in receiver.to(path)
        }:
            assert time.monotonic() < deadline, "accepted webhooks not delivered in time"
            time.sleep(0.2)
        print(f"[scale] all delivered at {time.monotonic() - began:.1f}s")
        while (statuses := _statuses(api, connection["id"]))["succeeded"] < EVENTS:
            assert time.monotonic() < deadline, f"runs not all succeeded: {dict(statuses)}"
            time.sleep(0.5)

    deliveries = receiver.to(path)
    by_run = Counter(r.headers.get("idempotency-key") for r in deliveries)
    wrong = [
        r
        for r in deliveries
        if accepted.get(int(r.json()["n"])) != r.headers.get("idempotency-key")
    ]
    duplicates = {run: count - 1 for run, count in by_run.items() if count > 1}
    extra = sum(duplicates.values())
    print(
        f"[scale] accepted {len(accepted)}, deliveries {len(deliveries)}, distinct {len(by_run)}, "
        f"duplicates {extra} (of them the victim's orphans: {len(set(duplicates) & set(orphans))}; "
        f"bound {CONCURRENCY}), runs {dict(statuses)}, {time.monotonic() - began:.1f}s"
    )
    assert not wrong, "a delivery without its run's Idempotency-Key or with another's event"
    assert set(by_run) == set(accepted.values()), "delivered runs that were never accepted"
    assert statuses == {"succeeded": EVENTS}
    # One kill loses at most the outcomes of the runs the victim held (claimed, not recorded: at
    # most RUNNER_CONCURRENCY): only those are delivered again, each once at most.
    assert set(duplicates) <= set(orphans), (duplicates, orphans)
    assert extra <= len(orphans) <= CONCURRENCY and max(by_run.values()) <= 2, duplicates


def _two_workers_serve_metrics(env: dict[str, str]) -> None:
    """Each worker process serves GET /metrics on a port of its own, from the setting up (once it
    has started its telemetry: a worker counts as up after SETTLE_SECONDS, maybe before)."""
    first = int(env["RUNNER_WORKER_METRICS_PORT"])
    deadline = time.monotonic() + 20
    while True:
        serving = []
        for port in range(first, first + 10):
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            except httpx.TransportError:
                continue
            if answer.status_code == 200 and "process_start_time_seconds" in answer.text:
                serving.append(port)
        if len(serving) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(serving) == 2, serving
