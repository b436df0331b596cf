"""Liveness of the gateway itself, and readiness: every upstream's gRPC health."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway.deps import Services
from services.kit.grpcserver import package_version

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    # The leadmesh release this process runs (`leadmesh status` shows it).
    version: str


class Readiness(BaseModel):
    status: str
    upstreams: dict[str, str]


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok", version=package_version())


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "an upstream is not serving"}},
)
async def readyz(services: Services) -> JSONResponse:
    states = await services.health()
    ready = all(state == "SERVING" for state in states.values())
    body = Readiness(status="ready" if ready else "not ready", upstreams=states)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
