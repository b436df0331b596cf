"""The spans of one trace, read from where the mesh exports them: the OTLP-JSON lines under
`var/traces/` (services/kit/telemetry.py writes them) or Jaeger's query API (`GET
/api/traces/{traceID}`, the JSON its UI reads). Both become the same `Span` values.

Read-only: never writes or deletes a trace file (retention does, by age).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

RUN_ID = "leadmesh.run_id"  # as services/runner/tracing.py names it


class SourceUnreachable(Exception):
    """The trace store could not be read (Jaeger down, an answer that is not its JSON)."""


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    name: str
    service: str
    kind: str  # server, client, internal, producer, consumer
    start_ns: int
    end_ns: int
    error: bool
    message: str  # the status message of an error span, if any
    attributes: dict[str, object] = field(default_factory=dict)
    children: list[Span] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e6


# --- OTLP-JSON files ---


def _value(encoded: dict) -> object:
    """An OTLP AnyValue as JSON encodes it (ints arrive as strings)."""
    for key, value in encoded.items():
        if key == "intValue":
            return int(value)
        if key == "arrayValue":
            return [_value(v) for v in value.get("values", [])]
        return value
    return None


def _attributes(encoded: list[dict] | None) -> dict[str, object]:
    return {a["key"]: _value(a.get("value", {})) for a in encoded or []}


def _otlp_spans(line: str) -> Iterator[Span]:
    for resource in json.loads(line).get("resourceSpans", []):
        service = str(
            _attributes(resource.get("resource", {}).get("attributes")).get("service.name", "?")
        )
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                status = span.get("status", {})
                yield Span(
                    trace_id=span["traceId"],
                    span_id=span["spanId"],
                    parent_id=span.get("parentSpanId", ""),
                    name=span.get("name", ""),
                    service=service,
                    kind=span.get("kind", "SPAN_KIND_INTERNAL").removeprefix("SPAN_KIND_").lower(),
                    start_ns=int(span.get("startTimeUnixNano", 0)),
                    end_ns=int(span.get("endTimeUnixNano", 0)),
                    error=status.get("code") == "STATUS_CODE_ERROR",
                    message=status.get("message", ""),
                    attributes=_attributes(span.get("attributes")),
                )


def from_files(directory: Path, wanted: str) -> list[Span]:
    """Every exported span whose line mentions `wanted` (a trace id, or a run id in an attribute):
    a substring test first, so the files' other lines are never parsed."""
    found = []
    for path in sorted(directory.glob("*.jsonl")):
        try:
            with path.open(encoding="utf-8") as lines:
                for line in lines:
                    if wanted in line:
                        found += [s for s in _otlp_spans(line) if _mentions(s, wanted)]
        except FileNotFoundError:
            continue  # rotated away or deleted while we read
        except ValueError:
            continue  # a line being written as we read it
    return found


def _mentions(span: Span, wanted: str) -> bool:
    return span.trace_id == wanted or span.attributes.get(RUN_ID) == wanted


# --- Jaeger's query API ---


def _jaeger_tags(tags: list[dict] | None) -> dict[str, object]:
    return {t["key"]: t.get("value") for t in tags or []}


def _jaeger_spans(trace: dict) -> Iterator[Span]:
    processes = trace.get("processes", {})
    for span in trace.get("spans", []):
        tags = _jaeger_tags(span.get("tags"))
        parent = next(
            (r["spanID"] for r in span.get("references", []) if r.get("refType") == "CHILD_OF"),
            "",
        )
        start_ns = int(span.get("startTime", 0)) * 1000  # Jaeger speaks microseconds
        error = tags.get("otel.status_code") == "ERROR" or tags.get("error") in (True, "true")
        yield Span(
            trace_id=span["traceID"].rjust(32, "0"),
            span_id=span["spanID"].rjust(16, "0"),
            parent_id=parent.rjust(16, "0") if parent else "",
            name=span.get("operationName", ""),
            service=processes.get(span.get("processID"), {}).get("serviceName", "?"),
            kind=str(tags.get("span.kind", "internal")),
            start_ns=start_ns,
            end_ns=start_ns + int(span.get("duration", 0)) * 1000,
            error=error,
            message=str(tags.get("otel.status_description", "")),
            attributes=tags,
        )


def from_jaeger(base_url: str, trace_id: str, timeout: float = 10.0) -> list[Span]:
    """The trace's spans, or [] when Jaeger does not know it (purged, or never exported)."""
    url = f"{base_url.rstrip('/')}/api/traces/{trace_id}"
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as error:
        raise SourceUnreachable(f"Jaeger at {base_url}: {type(error).__name__}") from None
    if response.status_code == 404:
        return []
    if response.status_code != 200:
        raise SourceUnreachable(f"Jaeger at {base_url} answered {response.status_code}")
    try:
        traces = response.json().get("data") or []
    except ValueError:
        raise SourceUnreachable(
            f"Jaeger at {base_url} answered something that is not JSON"
        ) from None
    return [span for trace in traces for span in _jaeger_spans(trace)]


def from_jaeger_run(base_url: str, run_id: str, timeout: float = 10.0) -> list[Span]:
    """A scheduled run's traces (no request started them): searched by the runner's tag."""
    try:
        response = httpx.get(
            f"{base_url.rstrip('/')}/api/traces",
            params={"service": "runner", "tags": json.dumps({RUN_ID: run_id}), "limit": 50},
            timeout=timeout,
        )
    except httpx.HTTPError as error:
        raise SourceUnreachable(f"Jaeger at {base_url}: {type(error).__name__}") from None
    if response.status_code != 200:
        return []
    try:
        traces = response.json().get("data") or []
    except ValueError:
        return []
    return [span for trace in traces for span in _jaeger_spans(trace)]


# --- the tree ---


def tree(spans: list[Span]) -> list[Span]:
    """The roots (spans whose parent was not exported), each with its children, in start order;
    a span exported twice (a retried export) counts once."""
    by_id: dict[str, Span] = {}
    for span in spans:
        by_id.setdefault(span.span_id, span)
    roots = []
    for span in sorted(by_id.values(), key=lambda s: s.start_ns):
        parent = by_id.get(span.parent_id)
        (parent.children if parent is not None else roots).append(span)
    return roots
