"""One trace from a browser request through every service it touches: the gateway's server span,
its gRPC client span, identity's server span beneath it, and the database spans beneath that."""

from __future__ import annotations

import time

import httpx

from tests.e2e.conftest import Mesh, register_and_login, spans


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
