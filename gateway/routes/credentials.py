"""The signed-in person's credentials: metadata in, metadata out. A secret goes in once, to the
vault, and never comes back out through the API."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status
from google.protobuf import struct_pb2
from leadmesh.vault.v1 import vault_pb2
from pydantic import BaseModel, Field

from gateway.deps import CurrentUser, Services
from gateway.resources import Paged, listed, set_location, update_mask
from gateway.schemas import Page, Strict, timestamp
from gateway.upstreams import call

router = APIRouter(prefix="/credentials", tags=["credentials"])


class Kind(StrEnum):
    api_key = "api_key"
    login = "login"
    oauth2 = "oauth2"


class Status(StrEnum):
    active = "active"
    needs_reconnect = "needs_reconnect"
    unspecified = "unspecified"


SHAPES = (
    'api_key: {"key": …, "header": "X-Api-Key"} or {"key": …, "query": "api_key"} · '
    'login: {"username": …, "password": …} · oauth2: {"access_token": …, "refresh_token": …, '
    '"expires_at": <unix seconds>, "scopes": […]}. Write-only: never returned.'
)
Secret = Annotated[dict[str, Any], Field(description=SHAPES, max_length=10)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
ProviderName = Annotated[str, Field(min_length=1, max_length=100)]
CredentialId = Annotated[str, Path(min_length=1, max_length=64)]


class NewCredential(Strict):
    name: Name
    kind: Kind
    provider: ProviderName
    secret: Secret


class CredentialChange(Strict):
    """Fields given are changed; a new secret replaces the old one whole."""

    name: Name | None = None
    provider: ProviderName | None = None
    secret: Secret | None = None


class Credential(BaseModel):
    id: str
    name: str
    kind: Kind
    provider: str
    hint: str
    status: Status
    scopes: list[str]
    expire_time: datetime | None
    create_time: datetime | None
    update_time: datetime | None
    last_use_time: datetime | None

    @classmethod
    def of(cls, message: vault_pb2.Credential) -> Credential:
        kind = vault_pb2.CredentialKind.Name(message.kind).removeprefix("CREDENTIAL_KIND_")
        state = vault_pb2.CredentialStatus.Name(message.status).removeprefix("CREDENTIAL_STATUS_")
        return cls(
            id=message.id,
            name=message.name,
            kind=Kind(kind.lower()),
            provider=message.provider,
            hint=message.hint,
            status=Status(state.lower()),
            scopes=list(message.scopes),
            expire_time=timestamp(message.expire_time),
            create_time=timestamp(message.create_time),
            update_time=timestamp(message.update_time),
            last_use_time=timestamp(message.last_use_time),
        )


def _struct(secret: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(secret)
    return message


def kind_value(kind: Kind) -> int:
    return vault_pb2.CredentialKind.Value(f"CREDENTIAL_KIND_{kind.name.upper()}")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Credential)
async def create_credential(
    body: NewCredential,
    response: Response,
    who: CurrentUser,
    mesh: Services,
) -> Credential:
    created = await call(
        mesh.vault.CreateCredential,
        vault_pb2.CreateCredentialRequest(
            name=body.name,
            kind=kind_value(body.kind),
            provider=body.provider,
            secret=_struct(body.secret),
        ),
        user_id=who.account_id,
    )
    set_location(response, f"/credentials/{created.id}")
    return Credential.of(created)


@router.get("", response_model=Page[Credential])
async def list_credentials(page: Paged, who: CurrentUser, mesh: Services) -> Page[Credential]:
    reply = await call(
        mesh.vault.ListCredentials,
        vault_pb2.ListCredentialsRequest(page_size=page.size, page_token=page.token),
        user_id=who.account_id,
    )
    return listed(Credential, map(Credential.of, reply.credentials), reply.next_page_token)


@router.get("/{credential_id}", response_model=Credential)
async def get_credential(
    credential_id: CredentialId,
    who: CurrentUser,
    mesh: Services,
) -> Credential:
    found = await call(
        mesh.vault.GetCredential,
        vault_pb2.GetCredentialRequest(id=credential_id),
        user_id=who.account_id,
    )
    return Credential.of(found)


@router.patch("/{credential_id}", response_model=Credential)
async def update_credential(
    credential_id: CredentialId,
    body: CredentialChange,
    who: CurrentUser,
    mesh: Services,
) -> Credential:
    request = vault_pb2.UpdateCredentialRequest(
        id=credential_id,
        name=body.name or "",
        provider=body.provider or "",
        update_mask=update_mask(body),
    )
    if body.secret is not None:
        request.secret.CopyFrom(_struct(body.secret))
    updated = await call(mesh.vault.UpdateCredential, request, user_id=who.account_id)
    return Credential.of(updated)


@router.delete("/{credential_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_credential(
    credential_id: CredentialId,
    who: CurrentUser,
    mesh: Services,
) -> None:
    await call(
        mesh.vault.DeleteCredential,
        vault_pb2.DeleteCredentialRequest(id=credential_id),
        user_id=who.account_id,
    )
