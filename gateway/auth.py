"""Sessions as the browser sees them: the cookies, the CSRF token, and the `Principal` dependency.

- `lm_session`: the opaque session token; HttpOnly, Secure, SameSite=Lax, Path=/, Max-Age renewed
  to the session's rolling expiry on every authenticated request.
- `lm_csrf`: readable by scripts; echoed in X-CSRF-Token. It is an HMAC keyed by the session token,
  so it is bound to the session (a planted cookie cannot match) and the gateway keeps no state.
- `lm_email`: the e-mail address (URL-encoded) for the frontend to fill in the login form, kept one
  year, only when the login asked for it; readable by scripts since that is its whole purpose.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request, Response
from fastapi.security import APIKeyCookie
from leadmesh.identity.v1 import identity_pb2

from gateway.upstreams import UpstreamError, Upstreams, call
from services.kit.clock import Clock
from services.kit.tokens import b64url

SESSION_COOKIE = "lm_session"
CSRF_COOKIE = "lm_csrf"
EMAIL_COOKIE = "lm_email"
CSRF_HEADER = "X-CSRF-Token"

_session_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, scheme_name="session")


def csrf_token_for(session_token: str) -> str:
    digest = hmac.new(session_token.encode(), b"leadmesh csrf v1", hashlib.sha256).digest()
    return b64url(digest)


def csrf_matches(session_token: str, presented: str | None) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(csrf_token_for(session_token).encode(), presented.encode())


def set_session_cookies(response: Response, token: str, expire: datetime, now: datetime) -> None:
    max_age = max(0, int((expire - now).total_seconds()))
    response.set_cookie(
        SESSION_COOKIE, token, max_age=max_age, path="/", secure=True, httponly=True, samesite="lax"
    )
    response.set_cookie(
        CSRF_COOKIE,
        csrf_token_for(token),
        max_age=max_age,
        path="/",
        secure=True,
        httponly=False,
        samesite="lax",
    )


def clear_session_cookies(response: Response) -> None:
    for name, http_only in ((SESSION_COOKIE, True), (CSRF_COOKIE, False)):
        response.delete_cookie(name, path="/", secure=True, httponly=http_only, samesite="lax")


def remember_email(response: Response, email: str | None, days: int) -> None:
    if email:
        response.set_cookie(
            EMAIL_COOKIE,
            quote(email, safe=""),
            max_age=days * 86400,
            path="/",
            secure=True,
            httponly=False,
            samesite="lax",
        )
    else:
        response.delete_cookie(EMAIL_COOKIE, path="/", secure=True, samesite="lax")


@dataclass(frozen=True)
class Principal:
    account_id: str
    session_id: str
    token: str


async def upstreams(request: Request) -> Upstreams:
    """A dependency: async, so FastAPI calls it on the loop rather than in a worker thread."""
    return request.app.state.upstreams


def clock(request: Request) -> Clock:
    return request.app.state.clock


async def principal(
    request: Request,
    response: Response,
    token: Annotated[str | None, Depends(_session_cookie)],
) -> Principal:
    """The signed-in person, from the session cookie; 401 without a live session."""
    if not token:
        raise HTTPException(
            401, {"code": "SESSION_REQUIRED", "detail": "sign in first"}, _challenge()
        )
    try:
        reply = await call(
            request.app.state.upstreams.identity.AuthenticateSession,
            identity_pb2.AuthenticateSessionRequest(session_token=token),
        )
    except UpstreamError as error:
        if error.remote.reason == "SESSION_INVALID":
            raise HTTPException(
                401, {"code": "SESSION_INVALID", "detail": "the session has ended"}, _challenge()
            ) from None
        raise
    # Rolling session: the cookie lives as long as the session now does.
    expire = reply.session.expire_time.ToDatetime(tzinfo=clock(request).now().tzinfo)
    set_session_cookies(response, token, expire, clock(request).now())
    return Principal(account_id=reply.account_id, session_id=reply.session.id, token=token)


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": f'Cookie realm="leadmesh", cookie-name="{SESSION_COOKIE}"'}


@dataclass(frozen=True)
class Client:
    ip_address: str
    user_agent: str


def client(request: Request) -> Client:
    """The client's address (X-Forwarded-For only from a trusted proxy) and user agent."""
    peer = request.client.host if request.client else ""
    trusted = request.app.state.trusted_proxies
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded and trusted and _within(peer, trusted):
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        # The right-most address not belonging to a trusted proxy is the client.
        for hop in reversed(hops):
            if not _within(hop, trusted):
                peer = hop
                break
    return Client(ip_address=peer, user_agent=request.headers.get("user-agent", "")[:512])


def _within(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
