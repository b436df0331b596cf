"""The signed-in person's own account: profile, password, plan, history, sessions, deletion."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Annotated

import grpc
from fastapi import APIRouter, Request, Response, status
from leadmesh.identity.v1 import identity_pb2
from leadmesh.runner.v1 import runner_pb2
from leadmesh.vault.v1 import vault_pb2
from pydantic import BaseModel, Field

from gateway.auth import clear_session_cookies, client
from gateway.deps import CurrentUser, Services
from gateway.openapi import errors
from gateway.resources import IdentityPaged, listed
from gateway.routes.accounts import signed_in
from gateway.schemas import (
    Account,
    LoginAttempt,
    Page,
    Password,
    PostalAddress,
    Session,
    ShortText,
    SignedIn,
    Strict,
    timestamp,
)
from gateway.upstreams import Upstreams, call

log = logging.getLogger("leadmesh.gateway")

router = APIRouter(prefix="/me", tags=["me"])


class PasswordChange(Strict):
    current_password: Password
    new_password: Password


class PlanChange(Strict):
    plan: Annotated[str, Field(min_length=1, max_length=64)]
    billing_name: ShortText = ""
    billing_address: PostalAddress | None = None
    payment_reference: Annotated[str, Field(max_length=200)] = ""


class Revoked(BaseModel):
    revoked_count: int


class DeletionConfirmation(Strict):
    password: Password


class DeletionRequested(BaseModel):
    request_time: datetime | None
    erase_deadline: datetime | None


@router.get("", response_model=Account)
async def me(who: CurrentUser, mesh: Services) -> Account:
    account = await call(
        mesh.identity.GetAccount, identity_pb2.GetAccountRequest(), user_id=who.account_id
    )
    return Account.of(account)


@router.put(
    "/password",
    response_model=SignedIn,
    responses=errors({401: "INVALID_CREDENTIALS", 429: "LOGIN_THROTTLED"}),
)
async def change_password(
    body: PasswordChange,
    request: Request,
    response: Response,
    who: CurrentUser,
    mesh: Services,
) -> SignedIn:
    """Every session of the account ends; this one continues under a new token."""
    seen = client(request)
    reply = await call(
        mesh.identity.ChangePassword,
        identity_pb2.ChangePasswordRequest(
            current_password=body.current_password,
            new_password=body.new_password,
            ip_address=seen.ip_address,
            user_agent=seen.user_agent,
        ),
        user_id=who.account_id,
    )
    return signed_in(request, response, reply)


@router.put(
    "/plan", response_model=Account, responses=errors({422: ("CARD_DATA_REFUSED", "UNKNOWN_PLAN")})
)
async def change_plan(body: PlanChange, who: CurrentUser, mesh: Services) -> Account:
    address = body.billing_address or PostalAddress()
    account = await call(
        mesh.identity.UpdatePlan,
        identity_pb2.UpdatePlanRequest(
            plan=body.plan,
            billing_name=body.billing_name,
            billing_address=identity_pb2.PostalAddress(**address.model_dump()),
            payment_reference=body.payment_reference,
        ),
        user_id=who.account_id,
    )
    return Account.of(account)


@router.get("/login-history", response_model=Page[LoginAttempt])
async def login_history(
    page: IdentityPaged, who: CurrentUser, mesh: Services
) -> Page[LoginAttempt]:
    reply = await call(
        mesh.identity.ListLoginAttempts,
        identity_pb2.ListLoginAttemptsRequest(page_size=page.size, page_token=page.token),
        user_id=who.account_id,
    )
    return listed(LoginAttempt, map(LoginAttempt.of, reply.attempts), reply.next_page_token)


@router.get("/sessions", response_model=Page[Session])
async def sessions(who: CurrentUser, mesh: Services) -> Page[Session]:
    reply = await call(
        mesh.identity.ListSessions,
        identity_pb2.ListSessionsRequest(current_session_id=who.session_id),
        user_id=who.account_id,
    )
    return listed(Session, map(Session.of, reply.sessions))


@router.delete("/sessions/others", response_model=Revoked)
async def end_other_sessions(who: CurrentUser, mesh: Services) -> Revoked:
    reply = await call(
        mesh.identity.RevokeOtherSessions,
        identity_pb2.RevokeOtherSessionsRequest(current_session_id=who.session_id),
        user_id=who.account_id,
    )
    return Revoked(revoked_count=reply.revoked_count)


@router.delete(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeletionRequested,
    responses=errors({401: "INVALID_CREDENTIALS", 429: "LOGIN_THROTTLED"}),
)
async def request_deletion(
    body: DeletionConfirmation,
    request: Request,
    response: Response,
    who: CurrentUser,
    mesh: Services,
) -> DeletionRequested:
    """Disables the account and ends every session now; the account's webhooks answer 410,
    its schedules and queued runs stop, its credentials are no longer used; erasure follows
    within 60 days."""
    reply = await call(
        mesh.identity.RequestDeletion,
        identity_pb2.RequestDeletionRequest(
            password=body.password, ip_address=client(request).ip_address
        ),
        user_id=who.account_id,
    )
    await suspend_everywhere(mesh, who.account_id)
    clear_session_cookies(response)
    return DeletionRequested(
        request_time=timestamp(reply.request_time), erase_deadline=timestamp(reply.erase_deadline)
    )


async def suspend_everywhere(upstreams: Upstreams, user_id: str) -> None:
    """Stops the user's processing in the runner and the vault at once. Best effort: identity has
    recorded the request, and both reconcile from that record within half a minute (a service
    that is down catches up when it starts), so a failure here is logged, never the user's."""
    calls = {
        "runner": upstreams.runner.SuspendUser(runner_pb2.SuspendUserRequest(user_id=user_id)),
        "vault": upstreams.vault.SuspendUser(vault_pb2.SuspendUserRequest(user_id=user_id)),
    }
    outcomes = await asyncio.gather(*calls.values(), return_exceptions=True)
    for service, outcome in zip(calls, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            failure = (
                outcome.code().name
                if isinstance(outcome, grpc.aio.AioRpcError)
                else type(outcome).__name__
            )
            log.warning(
                "suspension left to the reconciler", extra={"service": service, "error": failure}
            )
