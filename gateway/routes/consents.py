"""Consents per purpose, each with its history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from leadmesh.identity.v1 import identity_pb2
from pydantic import Field

from gateway.deps import CurrentUser, Services
from gateway.resources import listed
from gateway.schemas import Consent, Page, Purpose, Strict, purpose_to_proto
from gateway.upstreams import call

router = APIRouter(prefix="/me/consents", tags=["consents"])


class ConsentChange(Strict):
    purpose: Purpose
    granted: bool


class ConsentChanges(Strict):
    """Purposes not listed keep their state."""

    items: Annotated[list[ConsentChange], Field(max_length=10)]


def _page(reply: identity_pb2.Consents) -> Page[Consent]:
    return listed(Consent, map(Consent.of, reply.consents))


@router.get("", response_model=Page[Consent])
async def consents(who: CurrentUser, mesh: Services) -> Page[Consent]:
    reply = await call(
        mesh.identity.GetConsents, identity_pb2.GetConsentsRequest(), user_id=who.account_id
    )
    return _page(reply)


@router.put("", response_model=Page[Consent])
async def update_consents(
    body: ConsentChanges,
    who: CurrentUser,
    mesh: Services,
) -> Page[Consent]:
    changes = [
        identity_pb2.ConsentChange(purpose=purpose_to_proto(c.purpose), granted=c.granted)
        for c in body.items
    ]
    reply = await call(
        mesh.identity.UpdateConsents,
        identity_pb2.UpdateConsentsRequest(changes=changes),
        user_id=who.account_id,
    )
    return _page(reply)
