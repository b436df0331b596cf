"""Connecting a third-party account with OAuth 2: the browser is sent to the provider and comes
back to the callback, which must arrive in the same session that started it."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse
from leadmesh.vault.v1 import vault_pb2
from pydantic import BaseModel

from gateway.deps import CurrentUser, Services
from gateway.openapi import errors
from gateway.resources import API_PREFIX
from gateway.upstreams import UpstreamError, call

router = APIRouter(prefix="/oauth", tags=["credentials"])

Provider = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]
# Reasons that end the browser's round trip at the frontend rather than in a JSON problem.
_FLOW_ERRORS = {"OAUTH_STATE_INVALID", "OAUTH_DENIED", "OAUTH_EXCHANGE_FAILED"}
# Reasons a start is refused for; a browser (asking for a page) is sent back to the frontend with
# them, any other client gets the problem.
_START_ERRORS = {"UNKNOWN_PROVIDER", "CREDENTIAL_NOT_FOUND", "NOT_OAUTH2", "PROVIDER_MISMATCH"}


def _callback_url(request: Request, provider: str) -> str:
    public = request.app.state.settings.mesh.public_url.rstrip("/")
    return f"{public}{API_PREFIX}/oauth/{quote(provider, safe='')}/callback"


def _frontend(request: Request) -> str:
    return request.app.state.settings.mesh.frontend_url.rstrip("/")


def _failed(request: Request, reason: str) -> RedirectResponse:
    """Back to the frontend's credentials page, saying why."""
    query = urlencode({"oauth_error": reason})
    return RedirectResponse(f"{_frontend(request)}/credentials?{query}", status_code=302)


class OAuthProvider(BaseModel):
    name: str
    title: str
    scopes: list[str]


class OAuthProviders(BaseModel):
    providers: list[OAuthProvider]


@router.get("/providers", response_model=OAuthProviders)
async def providers(who: CurrentUser, mesh: Services) -> OAuthProviders:
    """The providers an account can be connected with (as the operator configured them)."""
    reply = await call(
        mesh.vault.ListOAuthProviders,
        vault_pb2.ListOAuthProvidersRequest(),
        user_id=who.account_id,
    )
    return OAuthProviders(
        providers=[
            OAuthProvider(name=p.name, title=p.title, scopes=list(p.scopes))
            for p in reply.providers
        ]
    )


@router.get(
    "/{provider}/start",
    status_code=302,
    response_class=RedirectResponse,
    responses={
        302: {
            "description": "to the provider's consent page; a browser (Accept: text/html) whose "
            "start is refused is sent to the frontend's /credentials?oauth_error=<code> instead"
        },
        **errors(
            {
                400: "NOT_OAUTH2",
                404: "CREDENTIAL_NOT_FOUND",
                422: ("UNKNOWN_PROVIDER", "PROVIDER_MISMATCH"),
            }
        ),
    },
)
async def start(
    provider: Provider,
    request: Request,
    who: CurrentUser,
    mesh: Services,
    name: Annotated[str, Query(max_length=200, pattern=r"^[^\x00-\x1f]*$")] = "",
    credential_id: Annotated[
        str,
        Query(
            max_length=64,
            pattern=r"^[0-9A-Fa-f-]*$",
            description="reconnect this oauth2 credential (same id, new tokens) instead of "
            "making a new one",
        ),
    ] = "",
) -> RedirectResponse:
    try:
        reply = await call(
            mesh.vault.StartOAuth,
            vault_pb2.StartOAuthRequest(
                provider=provider,
                name=name,
                session_id=who.session_id,
                redirect_uri=_callback_url(request, provider),
                credential_id=credential_id,
            ),
            user_id=who.account_id,
        )
    except UpstreamError as failed:
        browser = "text/html" in request.headers.get("accept", "")
        if not browser or failed.remote.reason not in _START_ERRORS:
            raise
        return _failed(request, failed.remote.reason)
    return RedirectResponse(reply.authorization_url, status_code=302)


@router.get(
    "/{provider}/callback",
    status_code=302,
    response_class=RedirectResponse,
    responses={302: {"description": "to the frontend: the new credential, or why it failed"}},
)
async def callback(
    provider: Provider,
    request: Request,
    who: CurrentUser,
    mesh: Services,
    state: Annotated[str, Query(max_length=500)] = "",
    code: Annotated[str, Query(max_length=2000)] = "",
    error: Annotated[str, Query(max_length=200)] = "",
) -> RedirectResponse:
    try:
        created = await call(
            mesh.vault.CompleteOAuth,
            vault_pb2.CompleteOAuthRequest(
                provider=provider,
                state=state,
                code=code,
                session_id=who.session_id,
                redirect_uri=_callback_url(request, provider),
                error=error,
            ),
            user_id=who.account_id,
        )
    except UpstreamError as failed:
        if failed.remote.reason not in _FLOW_ERRORS:
            raise
        return _failed(request, failed.remote.reason)
    query = urlencode({"oauth": "connected"})
    return RedirectResponse(f"{_frontend(request)}/credentials/{created.id}?{query}", 302)
