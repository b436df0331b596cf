"""Every error the gateway answers is `application/problem+json` (RFC 9457) with a stable `code`.

Upstream gRPC status maps to HTTP once, here, after grpc-gateway's table, with one deliberate
difference: INVALID_ARGUMENT is 422 (the request was well-formed JSON that a rule refused), so 400
stays for bodies that are not JSON at all. The `code` is the upstream's ErrorInfo reason, the same
UPPER_SNAKE word clients can switch on.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.upstreams import UpstreamError
from services.kit.errors import DomainError, RemoteError, to_remote

log = logging.getLogger("leadmesh.gateway")

MEDIA_TYPE = "application/problem+json"

HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# Reasons whose HTTP status differs from their gRPC code's: a state conflict the client can
# resolve, a body over the runner's limit (RESOURCE_EXHAUSTED, but not a rate limit), a webhook
# of an account whose deletion was requested (gone for good: senders should stop), a deletion
# cancel link that is unknown, used or past the grace period (a bad link, not a refused field),
# a retry of a run not finished, or whose details retention purged.
REASON_STATUS = {
    "CONNECTION_PAUSED": 409,
    "NOT_A_WEBHOOK": 409,
    "BODY_TOO_LARGE": 413,
    "ACCOUNT_DELETED": 410,
    "DELETION_CANCEL_TOKEN_INVALID": 400,
    "RUN_NOT_FINISHED": 409,
    "RUN_DETAILS_PURGED": 409,
}


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = None


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:leadmesh:problem:{code.lower().replace('_', '-')}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def _upstream(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, UpstreamError)
    return _remote_problem(error.remote)


async def _domain(_request: Request, error: Exception) -> JSONResponse:
    """A domain error raised by the gateway itself renders as one from a service would."""
    assert isinstance(error, DomainError)
    return _remote_problem(to_remote(error))


def _remote_problem(remote: RemoteError) -> JSONResponse:
    status = REASON_STATUS.get(remote.reason) or HTTP_STATUS.get(remote.code, 500)
    headers = {}
    if remote.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(remote.retry_after + 0.499)))
    if status >= 500:
        # Upstream messages on internal failures are not for the public.
        log.warning("upstream failure", extra={"grpc_code": remote.code.name})
        detail = {
            503: "a service is unavailable; try again shortly",
            504: "a service did not answer in time",
        }.get(status, "internal error")
        code = remote.code.name if status in (503, 504) else "INTERNAL"
        return problem_response(status, code, detail, headers=headers)
    errors = [{"field": v.field, "message": v.description} for v in remote.violations]
    code = remote.reason or remote.code.name
    return problem_response(status, code, remote.message, errors=errors or None, headers=headers)


def _field_path(location: tuple[Any, ...]) -> str:
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or str(location[0] if location else "")


async def _validation(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    details = error.errors()
    if any(d.get("type") == "json_invalid" for d in details):
        return problem_response(400, "MALFORMED_JSON", "the request body is not valid JSON")
    # Inputs are echoed nowhere: a refused password must not come back in an error.
    errors = [{"field": _field_path(tuple(d.get("loc", ()))), "message": d["msg"]} for d in details]
    return problem_response(422, "INVALID_REQUEST", "the request is not valid", errors=errors)


async def _http(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = {
        404: "NOT_FOUND",
        405: "METHOD_NOT_ALLOWED",
        401: "UNAUTHENTICATED",
        403: "FORBIDDEN",
        413: "BODY_TOO_LARGE",
        415: "UNSUPPORTED_MEDIA_TYPE",
    }.get(error.status_code, "HTTP_ERROR")
    if isinstance(error.detail, dict):
        code, detail = error.detail["code"], error.detail["detail"]
    else:
        detail = str(error.detail)
    headers = error.headers
    if error.status_code == 405 and (allowed := _allowed_methods(request)):
        headers = {**(headers or {}), "Allow": allowed}
    return problem_response(error.status_code, code, detail, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route of this path takes (RFC 9110 §15.5.6): Starlette names only those
    of the first route matching the path, and one path often has a route per method."""
    from starlette.routing import Match

    from gateway.openapi import api_routes

    methods: set[str] = set()
    for route in api_routes(request.app):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    app.add_exception_handler(UpstreamError, _upstream)
    app.add_exception_handler(DomainError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    # Unexpected exceptions are answered by middleware.SecurityHeaders, inside the middleware
    # stack, so that the 500 still carries HSTS (Starlette's own handler runs outside it).
    # The errors of each operation are documented by gateway/openapi.py.
