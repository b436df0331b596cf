"""Pure-ASGI middleware (no per-request task or body copy beyond what each one needs).

Order, outside in: access log → security headers → body limit → CSRF → NUL guard.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import CSRF_HEADER, SESSION_COOKIE, csrf_matches
from gateway.docs import ASSETS, DOCS_PATHS
from gateway.docs import DOCS_CSP as _DOCS_CSP
from gateway.webapp import API_PREFIXES
from gateway.webapp import APP_CSP as _APP_CSP
from gateway.webapp import ASSETS as APP_ASSETS
from services.kit.metrics import histogram

log = logging.getLogger("leadmesh.gateway.access")

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _send_problem(send: Send, status: int, code: str, detail: str, title: str) -> None:
    body = json.dumps(
        {
            "type": f"urn:leadmesh:problem:{code.lower().replace('_', '-')}",
            "title": title,
            "status": status,
            "detail": detail,
            "code": code,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def route_template(scope: Scope) -> str | None:
    """The matched route's whole template (`/v1/connections/{connection_id}`), or None. FastAPI
    keeps the route as its router declared it (`/connections/{connection_id}`) in scope["route"]
    and the template with every prefix in its effective route context."""
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    return getattr(context, "path", None) or getattr(scope.get("route"), "path", None)


class AccessLog:
    """One line per request: method, route template (never the raw path: it may hold tokens),
    status and duration; and the same in the request metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 0

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            seconds = time.perf_counter() - started
            template = route_template(scope)
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": template or "(unmatched)",
                    "status": status or 500,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
            _record_request(scope["method"], template, status or 500, seconds)


# http.server.request.duration as the HTTP semantic conventions name it. Labels: a known method
# (else _OTHER), the route template (none for an unmatched path: a raw path may hold a token)
# and the status: a bounded set.
_request_duration = histogram("http.server.request.duration")
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                      "CONNECT"))  # fmt: skip


def _record_request(method: str, template: str | None, status: int, seconds: float) -> None:
    labels: dict[str, str | int] = {
        "http.request.method": method if method in _METHODS else "_OTHER",
        "http.response.status_code": status,
    }
    if template:
        labels["http.route"] = template
    _request_duration.record(seconds, labels)


# API answers are data, never a document to render: nothing may load or frame them.
API_CSP = b"default-src 'none'; frame-ancestors 'none'"
DOCS_CSP = _DOCS_CSP.encode()
APP_CSP = _APP_CSP.encode()


def _policy(path: str) -> tuple[bytes, bool]:
    """(Content-Security-Policy, cacheable) for a path: the documentation's, the API's (every
    API path, whether a route answers it or not), or the web app's for everything else."""
    if path in DOCS_PATHS or path.startswith(ASSETS + "/"):
        return DOCS_CSP, True
    if path == "/openapi.json":
        return API_CSP, True
    if any(path == prefix or path.startswith(prefix + "/") for prefix in API_PREFIXES):
        return API_CSP, False
    # The app's hashed bundles set their own year-long caching; its pages are never cached.
    return APP_CSP, path.startswith(APP_ASSETS + "/") or path == "/favicon.svg"


class SecurityHeaders:
    """HSTS on every HTTPS response, a Content-Security-Policy (the documentation pages' own, the
    strictest for everything else), and no caching or sniffing of API answers."""

    def __init__(self, app: ASGIApp, hsts_max_age: int) -> None:
        self.app = app
        self._headers = [
            (b"strict-transport-security", f"max-age={hsts_max_age}; includeSubDomains".encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        policy, cacheable = _policy(scope["path"])

        started = False

        async def add_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", ()))
                headers.extend(self._headers)
                headers.append((b"content-security-policy", policy))
                if not cacheable:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, add_headers)
        except Exception:
            # Starlette answers unexpected errors outside every middleware, so without this a 500
            # would leave without HSTS. The error is logged; the client gets a bare problem.
            if started:
                raise
            log.exception("unhandled error", extra={"path": scope["path"]})
            from gateway.problems import problem_response

            response = problem_response(500, "INTERNAL", "internal error")
            await response(scope, receive, add_headers)


class BodyLimit:
    """Refuses bodies over the limit with 413 before the application reads them: by
    Content-Length when given, else by counting a chunked body as it arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self._too_large(send)
            return await self.app(scope, receive, send)
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            return await self.app(scope, receive, send)
        # A chunked body: read it here, up to the limit, and hand it on whole.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await _send_problem(
            send,
            413,
            "BODY_TOO_LARGE",
            f"request bodies are limited to {self.max_bytes} bytes",
            "Content Too Large",
        )


class NulGuard:
    """A NUL character in the path or query string is refused (422): no identifier, filter or
    token holds one, and databases refuse it (bodies are checked field by field)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path", b"") + b"?" + scope.get("query_string", b"")
            if b"%00" in raw or b"\x00" in raw or "\x00" in scope.get("path", ""):
                return await _send_problem(
                    send,
                    422,
                    "INVALID_REQUEST",
                    "the path and query must not contain NUL characters",
                    "Unprocessable Content",
                )
        await self.app(scope, receive, send)


class CsrfGuard:
    """Every state-changing request that carries the session cookie must echo the CSRF token
    (bound to that session) in X-CSRF-Token; requests without the cookie are not at risk."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            return await self.app(scope, receive, send)
        connection = HTTPConnection(scope)
        session = connection.cookies.get(SESSION_COOKIE)
        if session and not csrf_matches(session, connection.headers.get(CSRF_HEADER)):
            return await _send_problem(
                send,
                403,
                "CSRF_TOKEN_INVALID",
                f"echo the lm_csrf cookie in the {CSRF_HEADER} header",
                "Forbidden",
            )
        await self.app(scope, receive, send)
