"""Signing up, signing in and out, password resets, and the unsubscribe link of marketing mail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from leadmesh.identity.v1 import identity_pb2
from pydantic import BaseModel, Field

from gateway.auth import (
    SESSION_COOKIE,
    clear_session_cookies,
    client,
    clock,
    csrf_token_for,
    remember_email,
    set_session_cookies,
)
from gateway.deps import Services
from gateway.openapi import errors
from gateway.resources import set_location
from gateway.schemas import (
    Account,
    Email,
    Password,
    Purpose,
    Session,
    SignedIn,
    Strict,
    purpose_from_proto,
)
from gateway.upstreams import call

router = APIRouter(tags=["accounts"])


class NewAccount(Strict):
    email: Email
    password: Password


class Credentials(Strict):
    email: Email
    password: Password
    remember_email: bool = False


class ResetRequest(Strict):
    email: Email


class ResetConfirmation(Strict):
    token: Annotated[str, Field(min_length=1, max_length=200)]
    new_password: Password


class Accepted(BaseModel):
    status: str = "accepted"


class Unsubscribed(BaseModel):
    purpose: Purpose
    subscribed: bool = False


@router.post(
    "/accounts",
    status_code=status.HTTP_201_CREATED,
    response_model=Account,
    responses=errors({409: "EMAIL_TAKEN"}),
)
async def create_account(body: NewAccount, response: Response, mesh: Services) -> Account:
    account = await call(
        mesh.identity.CreateAccount,
        identity_pb2.CreateAccountRequest(email=body.email, password=body.password),
    )
    set_location(response, "/me")
    return Account.of(account)


def signed_in(request: Request, response: Response, reply: identity_pb2.LoginResponse) -> SignedIn:
    """Sets the session cookies of a fresh session and describes it."""
    now = clock(request).now()
    expire = reply.session.expire_time.ToDatetime(tzinfo=now.tzinfo)
    set_session_cookies(response, reply.session_token, expire, now)
    return SignedIn(
        account=Account.of(reply.account),
        session=Session.of(reply.session),
        csrf_token=csrf_token_for(reply.session_token),
    )


@router.post(
    "/sessions",
    response_model=SignedIn,
    responses=errors({401: "INVALID_CREDENTIALS", 403: "ACCOUNT_DISABLED", 429: "LOGIN_THROTTLED"}),
)
async def login(
    body: Credentials,
    request: Request,
    response: Response,
    mesh: Services,
) -> SignedIn:
    seen = client(request)
    reply = await call(
        mesh.identity.Login,
        identity_pb2.LoginRequest(
            email=body.email,
            password=body.password,
            ip_address=seen.ip_address,
            user_agent=seen.user_agent,
        ),
    )
    days = request.app.state.settings.remember_email_days
    remember_email(response, body.email if body.remember_email else None, days)
    return signed_in(request, response, reply)


@router.delete("/sessions/current", status_code=status.HTTP_204_NO_CONTENT)
async def logout(request: Request, response: Response, mesh: Services) -> None:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await call(mesh.identity.EndSession, identity_pb2.EndSessionRequest(session_token=token))
    clear_session_cookies(response)


@router.post("/password-resets", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted)
async def request_password_reset(body: ResetRequest, mesh: Services) -> Accepted:
    """Sends a reset link if the address has an account; answers the same either way."""
    await call(
        mesh.identity.RequestPasswordReset,
        identity_pb2.RequestPasswordResetRequest(email=body.email),
    )
    return Accepted()


@router.post(
    "/password-resets/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors({422: "RESET_TOKEN_INVALID"}),
)
async def confirm_password_reset(
    body: ResetConfirmation, response: Response, mesh: Services
) -> None:
    await call(
        mesh.identity.ConfirmPasswordReset,
        identity_pb2.ConfirmPasswordResetRequest(token=body.token, new_password=body.new_password),
    )
    clear_session_cookies(response)


UnsubscribeToken = Annotated[str, Query(min_length=1, max_length=500)]


@router.get(
    "/unsubscribe",
    response_model=Unsubscribed,
    tags=["consents"],
    responses=errors({422: "UNSUBSCRIBE_TOKEN_INVALID"}),
)
async def unsubscribe(token: UnsubscribeToken, mesh: Services) -> Unsubscribed:
    """The link in every marketing e-mail: withdraws that consent, no sign-in needed."""
    reply = await call(mesh.identity.Unsubscribe, identity_pb2.UnsubscribeRequest(token=token))
    return Unsubscribed(purpose=purpose_from_proto(reply.purpose))


@router.post(
    "/unsubscribe",
    response_model=Unsubscribed,
    tags=["consents"],
    responses=errors({422: "UNSUBSCRIBE_TOKEN_INVALID"}),
)
async def unsubscribe_one_click(token: UnsubscribeToken, mesh: Services) -> Unsubscribed:
    """RFC 8058 one-click: mail clients POST `List-Unsubscribe=One-Click` to the link."""
    return await unsubscribe(token, mesh)


class PlanTerms(BaseModel):
    name: str
    amount: int = Field(description="per billing period, in the currency's minor unit (cents)")
    currency: str


class Terms(BaseModel):
    plans: list[PlanTerms] = Field(description="cheapest first")
    deletion_grace_days: int = Field(description="days a deletion's cancel link works (0: none)")
    erase_after_days: int = Field(
        description="a deleted account is erased within this many days of the request"
    )


@router.get("/terms", response_model=Terms)
async def terms(mesh: Services) -> Terms:
    """The plans on offer and how deleting an account goes; the same for everyone, no sign-in
    needed."""
    reply = await call(mesh.identity.GetTerms, identity_pb2.GetTermsRequest())
    return Terms(
        plans=[PlanTerms(name=p.name, amount=p.amount, currency=p.currency) for p in reply.plans],
        deletion_grace_days=reply.deletion_grace_days,
        erase_after_days=reply.erase_after_days,
    )
