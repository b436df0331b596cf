"""Consents per purpose, each with its history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from leadmesh.identity.v1 import identity_pb2
from pydantic import Field

from gateway.auth import Principal, principal, upstreams
from gateway.schemas import Consent, Page, Purpose, Strict, purpose_to_proto
from gateway.upstreams import Upstreams, call

router = APIRouter(prefix="/v1/me/consents", tags=["consents"])


class ConsentChange(Strict):
    purpose: Purpose
    granted: bool


class ConsentChanges(Strict):
    """Purposes not listed keep their state."""

    items: Annotated[list[ConsentChange], Field(max_length=10)]


def _page(reply: identity_pb2.Consents) -> Page[Consent]:
    return Page[Consent](items=[Consent.of(c) for c in reply.consents])


@router.get("", response_model=Page[Consent])
async def consents(
    who: Principal = Depends(principal), identity: Upstreams = Depends(upstreams)
) -> Page[Consent]:
    reply = await call(
        identity.identity.GetConsents, identity_pb2.GetConsentsRequest(), user_id=who.account_id
    )
    return _page(reply)


@router.put("", response_model=Page[Consent])
async def update_consents(
    body: ConsentChanges,
    who: Principal = Depends(principal),
    identity: Upstreams = Depends(upstreams),
) -> Page[Consent]:
    changes = [
        identity_pb2.ConsentChange(purpose=purpose_to_proto(c.purpose), granted=c.granted)
        for c in body.items
    ]
    reply = await call(
        identity.identity.UpdateConsents,
        identity_pb2.UpdateConsentsRequest(changes=changes),
        user_id=who.account_id,
    )
    return _page(reply)
