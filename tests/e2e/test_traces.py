"""One trace from a browser request through every service it touches: the gateway's server span,
its gRPC client span, identity's server span beneath it, and the database spans beneath that."""

from __future__ import annotations

import json
import re
import time

import httpx

from tests.e2e.conftest import (
    Mesh,
    SharedReceiver,
    action,
    create,
    finished,
    register_and_login,
    spans,
)


def test_a_request_is_one_trace_across_gateway_and_identity(api: httpx.Client, mesh_up: Mesh):
    register_and_login(api)
    assert api.get("/v1/me").status_code == 200
    time.sleep(1.5)
    everything = spans(mesh_up.var_dir)
    by_id = {span["spanId"]: span for span in everything}
    get_account = [
        s
        for s in everything
        if s["service"] == "identity" and s["name"].endswith("IdentityService/GetAccount")
    ]
    assert get_account, "identity exported no GetAccount span"
    server = get_account[-1]
    client = by_id[server["parentSpanId"]]
    assert client["service"] == "gateway" and client["kind"] == "SPAN_KIND_CLIENT"
    request = by_id[client["parentSpanId"]]
    while request.get("parentSpanId") and request["parentSpanId"] in by_id:
        request = by_id[request["parentSpanId"]]
    assert request["kind"] == "SPAN_KIND_SERVER" and request["name"] == "GET /v1/me"
    assert {s["traceId"] for s in (server, client, request)} == {server["traceId"]}
    database = [s for s in everything if s.get("parentSpanId") == server["spanId"]]
    assert database and all(s["service"] == "identity" for s in database)


def test_a_webhook_and_its_delivery_are_one_trace(mesh_up: Mesh, receiver: SharedReceiver):
    """The third party's POST /hooks/…, the runner's IngestWebhook, and later the worker's call
    to the user's API: one trace, the call a child of the ingest that queued it, carrying the
    destination's method, host and status but never its path or query."""
    with mesh_up.client() as owner:
        register_and_login(owner)
        path = receiver.path("traced")
        connection = create(
            owner,
            trigger={"type": "webhook"},
            # A method no other test delivers with, to tell this delivery's span from theirs.
            action=action(receiver.https_url(path) + "?api_key=trace-canary-key", method="PATCH"),
        )
    with mesh_up.client() as caller:
        accepted = caller.post(connection["webhook_url"], json={"lead": 1})
    assert accepted.status_code == 202, accepted.text
    receiver.wait_to(path)
    deadline = time.monotonic() + 15
    while True:  # each process exports in batches of its own: wait for the whole chain
        everything = spans(mesh_up.var_dir)
        by_id = {span["spanId"]: span for span in everything}
        chains = [_ancestors(s, by_id) for s in everything if _is_delivery_call(s)]
        chains = [c for c in chains if c[-1]["name"] == "POST /hooks/{token}"]
        if chains or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert chains, "no delivery span leading back to the webhook's request"
    call, ingest, hook = chains[-1][0], chains[-1][1], chains[-1][-1]
    assert ingest["service"] == "runner" and ingest["name"].endswith("RunnerService/IngestWebhook")
    assert hook["service"] == "gateway"
    assert call["traceId"] == ingest["traceId"] == hook["traceId"]
    attributes = {a["key"]: next(iter(a["value"].values())) for a in call["attributes"]}
    assert attributes["http.request.method"] == "PATCH"
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["http.response.status_code"] in ("200", 200)
    assert "trace-canary-key" not in json.dumps(call) and path not in json.dumps(call)


def _is_delivery_call(span: dict) -> bool:
    return (
        span["service"] == "runner"
        and span["kind"] == "SPAN_KIND_CLIENT"
        and span["name"] == "PATCH"
    )


def _ancestors(span: dict, by_id: dict[str, dict]) -> list[dict]:
    """The span, its parent, its parent's parent… as far as they are exported."""
    chain = [span]
    while chain[-1].get("parentSpanId") in by_id:
        chain.append(by_id[chain[-1]["parentSpanId"]])
    return chain


def _root_database_spans(mesh: Mesh) -> list[dict]:
    """The runner's database spans that belong to no request: what a background loop wrote."""
    return [
        s
        for s in spans(mesh.var_dir)
        if s["service"].startswith("runner")
        and not s.get("parentSpanId")
        and any(a["key"] == "db.query.text" for a in s.get("attributes", []))
    ]


def test_an_idle_runner_writes_no_poll_spans(mesh_up: Mesh):
    """Its workers poll the queue several times a second; polls that find nothing leave no
    span (they once wrote 1 200 SELECT spans in five idle minutes)."""
    time.sleep(1.0)  # spans of earlier tests' work reach the files
    before = {s["spanId"] for s in _root_database_spans(mesh_up)}
    time.sleep(4.0)  # some sixteen polls, exported every 0.2 s
    polls = [
        s
        for s in _root_database_spans(mesh_up)
        if s["spanId"] not in before
        and s["name"].startswith("SELECT")
        and "FROM runs" in json.dumps(s["attributes"])
    ]
    assert polls == []


def test_a_run_answers_its_trace_id_and_its_attempts_log_it(
    mesh_up: Mesh, receiver: SharedReceiver
):
    """GET /v1/runs/{id} names the trace its delivery continued; the runner's log line for the
    attempt carries the run, the connection, that trace and the outcome, never the URL."""
    path = receiver.path("trace-id")
    with mesh_up.client() as owner:
        register_and_login(owner)
        connection = create(
            owner,
            trigger={"type": "webhook"},
            action=action(receiver.https_url(path) + "?api_key=trace-id-canary-key"),
        )
        with mesh_up.client() as caller:
            accepted = caller.post(connection["webhook_url"], json={"lead": 2})
        assert accepted.status_code == 202, accepted.text
        run = finished(owner, accepted.json()["run_id"])
    assert run["status"] == "succeeded" and re.fullmatch(r"[0-9a-f]{32}", run["trace_id"])
    deadline = time.monotonic() + 15
    while True:
        delivered = [
            s for s in spans(mesh_up.var_dir)
            if s["service"] == "runner" and s["kind"] == "SPAN_KIND_CLIENT"
            and s["traceId"] == run["trace_id"]
        ]  # fmt: skip
        lines = [line for line in _log_lines(mesh_up) if line.get("run_id") == run["run_id"]]
        if (delivered and lines) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert delivered, "no delivery span in the trace the run names"
    (attempt,) = [line for line in lines if line["event"] == "delivery attempt"]
    assert attempt["trace_id"] == run["trace_id"]
    assert attempt["connection_id"] == connection["id"]
    assert (attempt["attempt"], attempt["outcome"], attempt["status_code"]) == (1, "succeeded", 200)
    assert attempt["duration_ms"] >= 0
    assert "trace-id-canary-key" not in json.dumps(lines) and path not in json.dumps(lines)


def _log_lines(mesh: Mesh) -> list[dict]:
    out = []
    for line in list(mesh.output):
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def test_a_webhook_on_the_scale_out_stores_has_postgresql_and_redis_spans_beneath(
    mesh_scaled: Mesh, receiver: SharedReceiver
):
    """On PostgreSQL and Redis (the queue's stream) the runner's IngestWebhook has both kinds of
    client span beneath it, in the stable database conventions, and neither carries the lead."""
    path = receiver.path("scaled-trace")
    lead = f"scaled-trace-canary-{time.monotonic_ns()}"
    with mesh_scaled.client() as owner:
        register_and_login(owner)
        connection = create(
            owner, trigger={"type": "webhook"}, action=action(receiver.https_url(path))
        )
        with mesh_scaled.client() as caller:
            accepted = caller.post(connection["webhook_url"], json={"lead": lead})
        assert accepted.status_code == 202, accepted.text
        run = finished(owner, accepted.json()["run_id"])
    assert run["status"] == "succeeded"
    deadline = time.monotonic() + 15
    while True:
        found = [s for s in spans(mesh_scaled.var_dir) if s["traceId"] == run["trace_id"]]
        by_id = {span["spanId"]: span for span in found}
        ingest = [
            s for s in found if s["service"] == "runner" and s["kind"] == "SPAN_KIND_SERVER"
            and s["name"].endswith("RunnerService/IngestWebhook")
        ]  # fmt: skip
        beneath = [
            _attributes(s) for s in found
            if ingest and ingest[0] in _ancestors(s, by_id)[1:] and s["service"] == "runner"
        ]  # fmt: skip
        systems = {a.get("db.system.name") for a in beneath}
        if {"postgresql", "redis"} <= systems or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert {"postgresql", "redis"} <= systems, systems
    assert lead not in json.dumps(found) and path not in json.dumps(found)


def _attributes(span: dict) -> dict:
    return {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}
