"""The FastAPI application: routes, error mapping, middleware, upstream channels."""

from __future__ import annotations

import ipaddress
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.metrics import NoOpMeterProvider

from gateway import docs, openapi, problems, webapp
from gateway.middleware import AccessLog, BodyLimit, CsrfGuard, NulGuard, SecurityHeaders
from gateway.resources import API_PREFIX
from gateway.routes import (
    accounts,
    activity,
    connections,
    consents,
    credentials,
    deletion,
    export,
    health,
    hooks,
    me,
    oauth,
)
from gateway.settings import GatewaySettings
from gateway.upstreams import Upstreams
from services.kit.clock import Clock, SystemClock

DESCRIPTION = """The leadmesh REST API.

Errors are `application/problem+json` with a stable `code`; each operation lists the statuses it
can answer and their codes. Browser sessions use the `lm_session` cookie (security scheme
`session`); every POST, PUT, PATCH and DELETE that carries it must echo the `lm_csrf` cookie, or
the `csrf_token` of the sign-in answer, in the `X-CSRF-Token` header (security scheme `csrf`). To
try operations here: sign in with POST /v1/sessions, then enter its `csrf_token` under Authorize.
"""

# Span attributes that may carry a raw URL, path or query (a webhook's token is its path, and
# tokens travel in queries) or the caller's address (personal data): the route template
# (`http.route`, and the span's name) says which endpoint it was. Old names and stable ones.
_REDACTED_ATTRIBUTES = (
    "http.url", "http.target", "url.full", "url.path", "url.query",
    "net.peer.ip", "client.address",
)  # fmt: skip


def _scrub_span(span, _scope) -> None:
    if span and span.is_recording():
        for name in _REDACTED_ATTRIBUTES:
            span.set_attribute(name, "[redacted]")


def _v1() -> APIRouter:
    """Every REST resource, under the one version prefix; health, webhooks and the docs are not
    versioned."""
    v1 = APIRouter(prefix=API_PREFIX)
    for module in (
        accounts,
        deletion,
        me,
        export,
        consents,
        credentials,
        oauth,
        connections,
        activity,
    ):
        v1.include_router(module.router)
    return v1


def create_app(settings: GatewaySettings, *, clock: Clock | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.upstreams = Upstreams(settings)
        try:
            yield
        finally:
            await app.state.upstreams.close()

    app = FastAPI(
        title="leadmesh",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served by gateway/docs.py, from this origin only.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.clock = clock or SystemClock(settings.mesh.clock_offset_seconds)
    app.state.trusted_proxies = [
        ipaddress.ip_network(n, strict=False) for n in settings.trusted_proxies
    ]
    app.include_router(health.router)
    app.include_router(_v1())
    app.include_router(hooks.router)
    problems.install(app)
    docs.install(app)
    webapp.install(app, settings.web_dir)  # last: its page route takes every other path
    app.openapi = lambda: openapi.build(app)  # type: ignore[method-assign]
    # Added innermost first: the access log sees everything, CSRF runs last before routing.
    app.add_middleware(NulGuard)
    app.add_middleware(CsrfGuard)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders, hsts_max_age=settings.hsts_max_age)
    app.add_middleware(AccessLog)
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls="healthz,readyz",
        server_request_hook=_scrub_span,
        exclude_spans=["receive", "send"],
        # Its metrics would label requests with raw targets; AccessLog records them by template.
        meter_provider=NoOpMeterProvider(),
    )
    return app
