"""A run's delivery in the trace of the request that queued it, and a client span per HTTP call.

A run is queued by a request (a webhook, a manual run) and delivered later by a worker, perhaps in
another process: the run's row keeps the W3C traceparent of the queuing request, and the worker
continues that trace, so one trace leads from the third party's webhook through the gateway and
the runner to the call to the user's API (and the vault, when it is asked). Scheduled runs start
a trace of their own.

Each HTTP call of a delivery carries the run's id (`leadmesh.run_id`, an id, never data): the key
by which `leadmesh trace` finds a scheduled run's traces, which no request started.

HTTP client spans follow the semantic conventions but carry no URL (`url.full`), path or query
(any may hold a key or a token) and no error message (it may quote the destination): method,
scheme, host, port, status, the error's type and, on every request after a run's first (a retry,
the send after a token refresh, a redirect's next hop), `http.request.resend_count`. A status of
400 or more, or no answer, is the span's error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("leadmesh.runner")
RUN_ID = "leadmesh.run_id"
RESEND_COUNT = "http.request.resend_count"


@dataclass
class _Delivering:
    run_id: str | None
    sent: int  # requests of this run sent before (earlier attempts' included)


_delivering: ContextVar[_Delivering | None] = ContextVar("leadmesh_delivering", default=None)


def current_trace_parent() -> str | None:
    """The W3C traceparent of the current span (the request queuing a run), or None."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


# version-traceid-parentid-flags (W3C Trace Context §3.2); an all-zero trace id is invalid.
_TRACE_PARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id_of(trace_parent: str | None) -> str:
    """The 32-hex trace id a traceparent names, or "" for none (or a malformed one)."""
    found = _TRACE_PARENT.fullmatch(trace_parent or "")
    if found is None or found.group(1) == "0" * 32:
        return ""
    return found.group(1)


@contextmanager
def continuing(
    trace_parent: str | None, run_id: str | None = None, sent_before: int = 0
) -> Iterator[None]:
    """The block runs in the trace `trace_parent` names (in no trace for None), delivering
    `run_id` (which its HTTP calls name) after `sent_before` requests of earlier attempts."""
    token = otel_context.attach(
        _PROPAGATOR.extract({"traceparent": trace_parent} if trace_parent else {})
    )
    run = _delivering.set(_Delivering(run_id, sent_before))
    try:
        yield
    finally:
        _delivering.reset(run)
        otel_context.detach(token)


@contextmanager
def http_call(method: str, url: httpx.URL) -> Iterator[Span]:
    """A client span around one HTTP request; the caller sets the status code it got."""
    attributes = {
        "http.request.method": method,
        "url.scheme": url.scheme,
        "server.address": url.host,
        "server.port": url.port or (443 if url.scheme == "https" else 80),
    }
    delivering = _delivering.get()
    if delivering is not None:
        if delivering.run_id:
            attributes[RUN_ID] = delivering.run_id
        if delivering.sent:
            attributes[RESEND_COUNT] = delivering.sent
        delivering.sent += 1
    with _tracer.start_as_current_span(
        method,
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as error:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR))
            raise


def record_status(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 400:  # a client span's error (the HTTP conventions); a server's only from 500
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
