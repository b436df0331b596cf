"""`POST /v1/deletion-cancellations`: the cancel link of the deletion confirmation mail.

No session: the account is disabled and every session of it ended when the deletion was
requested; the single-use token from the mail is the authority, as a password reset's is (and,
like that confirmation, the request needs no CSRF echo unless the browser still sends a session
cookie). The account is enabled again; its owner then signs in again.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, status
from leadmesh.identity.v1 import identity_pb2
from pydantic import Field

from gateway.deps import Services
from gateway.openapi import errors
from gateway.schemas import Strict
from gateway.upstreams import call

router = APIRouter(tags=["accounts"])


class DeletionCancellation(Strict):
    token: Annotated[str, Field(min_length=1, max_length=500)]


@router.post(
    "/deletion-cancellations",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors({400: "DELETION_CANCEL_TOKEN_INVALID"}),
)
async def cancel_deletion(body: DeletionCancellation, mesh: Services) -> None:
    """Cancels a requested account deletion, with the token of the confirmation mail's link:
    valid once, during the grace period only (400 `DELETION_CANCEL_TOKEN_INVALID` otherwise).
    The account is usable again; sign in again with POST /v1/sessions."""
    await call(mesh.identity.CancelDeletion, identity_pb2.CancelDeletionRequest(token=body.token))
