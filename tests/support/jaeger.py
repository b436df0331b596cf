"""Jaeger's query API as far as `leadmesh trace` reads it, on loopback: `GET /api/traces/{traceID}`
and the search `GET /api/traces?service=…&tags={…}`, answering the JSON shape Jaeger's UI reads.
No Jaeger runs in the tests: the traces it holds are OTLP spans converted by `as_jaeger`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class JaegerQuery(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.traces: dict[str, dict] = {}
        self.asked: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> JaegerQuery:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_exc) -> None:
        self.shutdown()
        self.server_close()

    def answer(self, target: str) -> tuple[int, dict]:
        self.asked.append(target)
        parts = urlsplit(target)
        if parts.path == "/api/traces":  # a search: traces holding a span with every tag
            query = parse_qs(parts.query)
            tags = json.loads(query.get("tags", ["{}"])[0])
            found = [t for t in self.traces.values() if _has_tags(t, tags)]
            return 200, {"data": found, "total": 0, "limit": 0, "offset": 0, "errors": None}
        found = self.traces.get(parts.path.removeprefix("/api/traces/"))
        if found is None:
            return 404, {"data": None, "errors": [{"code": 404, "msg": "trace not found"}]}
        return 200, {"data": [found], "total": 0, "limit": 0, "offset": 0, "errors": None}


def _has_tags(trace: dict, tags: dict[str, str]) -> bool:
    return any(
        all({"key": k, "type": "string", "value": v} in span["tags"] for k, v in tags.items())
        for span in trace["spans"]
    )


class _Handler(BaseHTTPRequestHandler):
    server: JaegerQuery

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        status, body = self.server.answer(self.path)
        encoded = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(encoded)))
        self.end_headers()
        self.wfile.write(encoded)

    def log_message(self, *_args) -> None:
        return None


def as_jaeger(otlp: list[dict]) -> dict:
    """OTLP spans (as tests/e2e/conftest.py's `spans` reads them, with "service") as Jaeger's API
    answers one trace: hex ids, microseconds, tags, a process per service."""
    names = sorted({s["service"] for s in otlp})
    processes = {f"p{i}": {"serviceName": name, "tags": []} for i, name in enumerate(names)}
    process_of = {p["serviceName"]: key for key, p in processes.items()}
    return {
        "traceID": otlp[0]["traceId"],
        "spans": [_span(span, process_of[span["service"]]) for span in otlp],
        "processes": processes,
    }


def _span(span: dict, process: str) -> dict:
    start = int(span["startTimeUnixNano"]) // 1000
    kind = span["kind"].removeprefix("SPAN_KIND_").lower()
    tags = [{"key": "span.kind", "type": "string", "value": kind}]
    for attribute in span.get("attributes", []):
        value = next(iter(attribute["value"].values()))
        tags.append({"key": attribute["key"], "type": "string", "value": str(value)})
    if span["status"].get("code") == "STATUS_CODE_ERROR":
        tags += [{"key": "otel.status_code", "type": "string", "value": "ERROR"},
                 {"key": "error", "type": "bool", "value": True}]  # fmt: skip
        if span["status"].get("message"):
            tags.append({"key": "otel.status_description", "type": "string",
                         "value": span["status"]["message"]})  # fmt: skip
    references = []
    if span.get("parentSpanId"):
        references = [{"refType": "CHILD_OF", "traceID": span["traceId"],
                       "spanID": span["parentSpanId"]}]  # fmt: skip
    return {
        "traceID": span["traceId"],
        "spanID": span["spanId"],
        "operationName": span["name"],
        "references": references,
        "startTime": start,
        "duration": int(span["endTimeUnixNano"]) // 1000 - start,
        "tags": tags,
        "logs": [],
        "processID": process,
        "warnings": None,
    }
