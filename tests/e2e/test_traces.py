"""One trace from a browser request through every service it touches: the gateway's server span,
its gRPC client span, identity's server span beneath it, and the database spans beneath that."""

from __future__ import annotations

import json
import time

import httpx

from tests.e2e.conftest import (
    Mesh,
    SharedReceiver,
    action,
    create,
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
