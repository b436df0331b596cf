"""The OpenAPI document: FastAPI's, with the errors each operation really answers and the ways a
browser authenticates.

Errors are derived from what an operation is, in one place, so that a new route is documented
without anyone remembering to: every one may meet the NUL guard (422); one with a body may be
malformed JSON (400) or too large (413); a state-changing one may lack the CSRF echo (403); one
needing a session may find none (401); one calling a service may find it unavailable or slow
(503, 504); one naming a resource in its path may find none (404, `<RESOURCE>_NOT_FOUND`). What
only the services know (a conflict, a throttle, a refused precondition) a route declares with
`errors(...)`. Each error is a `Problem` in application/problem+json, its description naming the
`code`s it carries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from gateway.auth import CSRF_HEADER, SESSION_COOKIE, principal, upstreams
from gateway.problems import MEDIA_TYPE, TITLES, Problem

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Operations that call a service without the `upstreams` dependency (the webhook route).
_CALLS_UPSTREAM = "x-calls-upstream"
_CODES = "x-problem-codes"

SECURITY_SCHEMES = {
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": "Set by POST /v1/sessions; the browser sends it by itself.",
    },
    "csrf": {
        "type": "apiKey",
        "in": "header",
        "name": CSRF_HEADER,
        "description": "The `csrf_token` of POST /v1/sessions (also the `lm_csrf` cookie): "
        "required on every POST, PUT, PATCH and DELETE that carries the session cookie.",
    },
}


def errors(declared: dict[int, str | tuple[str, ...]]) -> dict[int | str, dict[str, Any]]:
    """A route's own error answers, for FastAPI's `responses=`: status → the code or codes it
    carries (`()` when they vary), e.g. `errors({409: "EMAIL_TAKEN", 429: "LOGIN_THROTTLED"})`."""
    return {
        status: {
            "description": TITLES.get(status, "Error"),
            _CODES: [codes] if isinstance(codes, str) else list(codes),
        }
        for status, codes in declared.items()
    }


def calls_upstream() -> dict[str, Any]:
    """`openapi_extra` of a route that calls a service without the `upstreams` dependency."""
    return {_CALLS_UPSTREAM: True}


def api_routes(app: FastAPI) -> Iterator[APIRoute]:
    """Every API route, as mounted (with its router's prefix and dependencies)."""
    contexts = getattr(routing, "iter_route_contexts", None)
    if contexts is None:  # FastAPI before included routers were kept whole
        yield from (route for route in app.routes if isinstance(route, APIRoute))
        return
    for context in contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context  # type: ignore[misc] - it stands for the route, prefix included


def _calls(dependant: Dependant) -> set[Any]:
    found = {dependant.call}
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


def derived_errors(route: APIRoute) -> dict[int, set[str]]:
    """The errors an operation can answer because of what it is (see the module docstring)."""
    calls = _calls(route.dependant)
    extra = route.openapi_extra or {}
    found: dict[int, set[str]] = {422: {"INVALID_REQUEST"}}
    if route.body_field is not None or "requestBody" in extra:
        found[400] = {"MALFORMED_JSON"}
        found[413] = {"BODY_TOO_LARGE"}
    if route.methods & UNSAFE_METHODS:
        found[403] = {"CSRF_TOKEN_INVALID"}
    if principal in calls:
        found[401] = {"SESSION_REQUIRED", "SESSION_INVALID"}
    if principal in calls or upstreams in calls or extra.get(_CALLS_UPSTREAM):
        found[503] = {"UNAVAILABLE"}
        found[504] = {"DEADLINE_EXCEEDED"}
    if route.dependant.path_params:
        # `connection_id` names a connection that may not exist: CONNECTION_NOT_FOUND.
        found[404] = {
            f"{param.name.removesuffix('_id').upper()}_NOT_FOUND"
            for param in route.dependant.path_params
            if param.name.endswith("_id")
        }
    return found


def _describe(status: int, codes: set[str]) -> str:
    title = TITLES.get(status, "Error")
    return f"{title}: " + ", ".join(f"`{c}`" for c in sorted(codes)) if codes else title


def build(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with every error declared as a Problem in application/problem+json."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {})
    models = components.setdefault("schemas", {})
    models["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    models.update(models["Problem"].pop("$defs", {}))
    models.pop("HTTPValidationError", None)
    models.pop("ValidationError", None)
    components["securitySchemes"] = SECURITY_SCHEMES
    problem = {"content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for route in api_routes(app):
        if not route.include_in_schema:
            continue
        for method in route.methods:
            operation = schema["paths"][route.path_format].get(method.lower())
            if operation is None:
                continue
            _document_operation(route, method, operation, problem)
    app.openapi_schema = schema
    return schema


def _document_operation(route: APIRoute, method: str, operation: dict, problem: dict) -> None:
    operation.pop(_CALLS_UPSTREAM, None)
    operation.pop("security", None)  # FastAPI's, from the cookie dependency; ours follows
    if principal in _calls(route.dependant):
        required = {"session": []}
        if method in UNSAFE_METHODS:
            required["csrf"] = []
        operation["security"] = [required]
    responses = operation.setdefault("responses", {})
    fastapis = responses.pop("422", {})  # FastAPI's HTTPValidationError: ours is a Problem
    wanted = derived_errors(route)
    if _CODES in fastapis:  # the codes a route declares beside it (`errors({422: ...})`)
        wanted.setdefault(422, set()).update(fastapis[_CODES])
    for code, response in list(responses.items()):
        if code.isdigit() and int(code) >= 400 and _CODES in response:
            wanted.setdefault(int(code), set()).update(response.pop(_CODES))
    for status, codes in sorted(wanted.items()):
        existing = responses.get(str(status), {})
        if "content" in existing and MEDIA_TYPE not in existing["content"]:
            continue  # an error body of its own, declared by the route (readiness)
        responses[str(status)] = {"description": _describe(status, codes), **problem}
    if "204" in responses:
        responses["204"].pop("content", None)
