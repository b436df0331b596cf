"""The gRPC face of the vault. Who may call what is `ALLOWED_CALLERS`; plaintext leaves only
through ResolveCredential and RefreshOAuthCredential, to the runner; execution keys only through
GetExecutionKeys, to the service they are derived for (runner, identity)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import empty_pb2, struct_pb2
from google.protobuf.json_format import MessageToDict
from leadmesh.vault.v1 import vault_pb2 as pb
from leadmesh.vault.v1 import vault_pb2_grpc

from services.kit import callers
from services.kit.callers import acting_user
from services.kit.deletions import SuspendedUsers
from services.kit.errors import InvalidArgument
from services.kit.timestamps import put_timestamp
from services.vault.credentials import Credentials
from services.vault.execution_keys import ABSENT, ACTIVE, DESTROYED, ExecutionKeyring
from services.vault.keyadmin import KeyAdmin
from services.vault.oauth_connect import OAuthConnect
from services.vault.refresh import Refresher
from services.vault.resolve import Resolved, Resolver

SERVICE = pb.DESCRIPTOR.services_by_name["VaultService"].full_name
_BY_CALLER = {
    "gateway": (
        "CreateCredential",
        "GetCredential",
        "ListCredentials",
        "UpdateCredential",
        "DeleteCredential",
        "ListOAuthProviders",
        "StartOAuth",
        "CompleteOAuth",
        "SuspendUser",
    ),
    "runner": ("ResolveCredential", "RefreshOAuthCredential", "GetExecutionKeys"),
    "identity": ("GetExecutionKeys",),
    "operator": (
        "GetKeyStatus",
        "BeginKeyRotation",
        "RewrapDataKeys",
        "RetireKeyVersion",
        "RotateUserDataKey",
        "SetOAuthClientSecret",
        "ShredUserKey",
        "ListEpochKeys",
    ),
    "retention": ("ShredUserKey", "DestroyExpiredEpochKeys", "ListEpochKeys"),
}
ALLOWED_CALLERS: dict[str, frozenset[str]] = {}
for _caller, _methods in _BY_CALLER.items():
    for _method in _methods:
        key = f"/{SERVICE}/{_method}"
        ALLOWED_CALLERS[key] = ALLOWED_CALLERS.get(key, frozenset()) | {_caller}

_KINDS = {
    "api_key": pb.CREDENTIAL_KIND_API_KEY,
    "login": pb.CREDENTIAL_KIND_LOGIN,
    "oauth2": pb.CREDENTIAL_KIND_OAUTH2,
}
_STATUSES = {
    "active": pb.CREDENTIAL_STATUS_ACTIVE,
    "needs_reconnect": pb.CREDENTIAL_STATUS_NEEDS_RECONNECT,
}


def kind_name(value: int) -> str:
    for name, number in _KINDS.items():
        if number == value:
            return name
    raise InvalidArgument("INVALID_KIND", "kinds are: api_key, login, oauth2", field="kind")


_TIMES = ("expire_time", "create_time", "update_time", "last_use_time")


def credential_pb(row: Mapping[str, Any], into: pb.Credential | None = None) -> pb.Credential:
    """The credential's metadata, filled into `into` (a response's own field: no copy) or new."""
    message = pb.Credential() if into is None else into
    message.id = row["id"]
    message.name = row["name"]
    message.kind = _KINDS[row["kind"]]
    message.provider = row["provider"]
    message.hint = row["hint"]
    message.status = _STATUSES[row["status"]]
    if row["scopes"]:
        message.scopes.extend(row["scopes"])
    for name in _TIMES:
        if row[name] is not None:
            put_timestamp(getattr(message, name), row[name])
    return message


def _secret(message: struct_pb2.Struct) -> dict[str, Any]:
    return MessageToDict(message)


def resolved_pb(resolved: Resolved) -> pb.ResolvedCredential:
    message = pb.ResolvedCredential()
    message.credential.CopyFrom(resolved.rendered)  # credential_pb's, made when the row was read
    message.secret.CopyFrom(resolved.struct)
    return message


Context = grpc.aio.ServicerContext


class VaultApi(vault_pb2_grpc.VaultServiceServicer):
    def __init__(
        self,
        credentials: Credentials,
        resolver: Resolver,
        refresher: Refresher,
        oauth_connect: OAuthConnect,
        admin: KeyAdmin,
        suspensions: SuspendedUsers,
        execution_keys: ExecutionKeyring,
    ) -> None:
        self.credentials = credentials
        self.resolver = resolver
        self.refresher = refresher
        self.oauth_connect = oauth_connect
        self.admin = admin
        self.suspensions = suspensions
        self.execution_keys = execution_keys

    def _peer(self, context: Context) -> str:
        """The caller's mesh name, for the audit log (the interceptor has vetted it)."""
        return callers.vetted_caller()

    async def CreateCredential(  # noqa: N802 - gRPC method names
        self, request: pb.CreateCredentialRequest, context: Context
    ) -> pb.Credential:
        row = await self.credentials.create(
            self._peer(context),
            acting_user(context),
            request.name,
            kind_name(request.kind),
            request.provider,
            _secret(request.secret),
        )
        return credential_pb(row)

    async def GetCredential(  # noqa: N802 - gRPC method names
        self, request: pb.GetCredentialRequest, context: Context
    ) -> pb.Credential:
        return credential_pb(await self.credentials.get(acting_user(context), request.id))

    async def ListCredentials(  # noqa: N802 - gRPC method names
        self, request: pb.ListCredentialsRequest, context: Context
    ) -> pb.ListCredentialsResponse:
        rows, token = await self.credentials.list(
            acting_user(context), request.page_size, request.page_token
        )
        return pb.ListCredentialsResponse(
            credentials=[credential_pb(r) for r in rows], next_page_token=token
        )

    async def UpdateCredential(  # noqa: N802 - gRPC method names
        self, request: pb.UpdateCredentialRequest, context: Context
    ) -> pb.Credential:
        row = await self.credentials.update(
            self._peer(context),
            acting_user(context),
            request.id,
            list(request.update_mask.paths),
            name=request.name,
            provider=request.provider,
            secret=_secret(request.secret) if request.HasField("secret") else None,
        )
        return credential_pb(row)

    async def DeleteCredential(  # noqa: N802 - gRPC method names
        self, request: pb.DeleteCredentialRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.credentials.delete(self._peer(context), acting_user(context), request.id)
        return empty_pb2.Empty()

    async def ListOAuthProviders(  # noqa: N802 - gRPC method names
        self, request: pb.ListOAuthProvidersRequest, context: Context
    ) -> pb.ListOAuthProvidersResponse:
        acting_user(context)
        return pb.ListOAuthProvidersResponse(
            providers=[
                pb.OAuthProvider(name=name, title=p.title or name, scopes=p.scopes)
                for name, p in self.oauth_connect.providers.configured()
            ]
        )

    async def StartOAuth(  # noqa: N802 - gRPC method names
        self, request: pb.StartOAuthRequest, context: Context
    ) -> pb.StartOAuthResponse:
        url = await self.oauth_connect.start(
            acting_user(context),
            request.session_id,
            request.provider,
            request.name,
            request.redirect_uri,
            credential_id=request.credential_id,
        )
        return pb.StartOAuthResponse(authorization_url=url)

    async def CompleteOAuth(  # noqa: N802 - gRPC method names
        self, request: pb.CompleteOAuthRequest, context: Context
    ) -> pb.Credential:
        row = await self.oauth_connect.complete(
            self._peer(context),
            acting_user(context),
            request.session_id,
            request.provider,
            request.state,
            request.code,
            request.redirect_uri,
            request.error,
        )
        return credential_pb(row)

    async def ResolveCredential(  # noqa: N802 - gRPC method names
        self, request: pb.ResolveCredentialRequest, context: Context
    ) -> pb.ResolvedCredential:
        resolved = await self.resolver.resolve(
            self._peer(context), request.user_id, request.credential_id, request.connection_id
        )
        return resolved_pb(resolved)

    async def RefreshOAuthCredential(  # noqa: N802 - gRPC method names
        self, request: pb.RefreshOAuthCredentialRequest, context: Context
    ) -> pb.ResolvedCredential:
        resolved = await self.refresher.refresh(
            self._peer(context),
            request.user_id,
            request.credential_id,
            request.connection_id,
            request.rejected_token_sha256,
        )
        return resolved_pb(resolved)

    async def GetKeyStatus(  # noqa: N802 - gRPC method names
        self, request: pb.GetKeyStatusRequest, context: Context
    ) -> pb.KeyStatus:
        return _status_pb(await self.admin.status())

    async def BeginKeyRotation(  # noqa: N802 - gRPC method names
        self, request: pb.BeginKeyRotationRequest, context: Context
    ) -> pb.KeyStatus:
        return _status_pb(await self.admin.begin_rotation())

    async def RewrapDataKeys(  # noqa: N802 - gRPC method names
        self, request: pb.RewrapDataKeysRequest, context: Context
    ) -> pb.RewrapDataKeysResponse:
        done, remaining, current = await self.admin.rewrap(request.batch_size)
        return pb.RewrapDataKeysResponse(
            rewrapped=done, remaining=remaining, current_version=current
        )

    async def RetireKeyVersion(  # noqa: N802 - gRPC method names
        self, request: pb.RetireKeyVersionRequest, context: Context
    ) -> pb.KeyStatus:
        return _status_pb(await self.admin.retire(request.version))

    async def RotateUserDataKey(  # noqa: N802 - gRPC method names
        self, request: pb.RotateUserDataKeyRequest, context: Context
    ) -> pb.RotateUserDataKeyResponse:
        count = await self.admin.rotate_user_key(self._peer(context), _user(request.user_id))
        return pb.RotateUserDataKeyResponse(reencrypted_count=count)

    async def SetOAuthClientSecret(  # noqa: N802 - gRPC method names
        self, request: pb.SetOAuthClientSecretRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.admin.set_client_secret(request.provider, request.client_secret)
        return empty_pb2.Empty()

    async def SuspendUser(  # noqa: N802 - gRPC method names
        self, request: pb.SuspendUserRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.suspensions.suspend([_user(request.user_id)])
        return empty_pb2.Empty()

    async def ShredUserKey(  # noqa: N802 - gRPC method names
        self, request: pb.ShredUserKeyRequest, context: Context
    ) -> pb.ShredUserKeyResponse:
        destroyed, count = await self.admin.shred(self._peer(context), _user(request.user_id))
        return pb.ShredUserKeyResponse(key_destroyed=destroyed, credential_count=count)

    async def GetExecutionKeys(  # noqa: N802 - gRPC method names
        self, request: pb.GetExecutionKeysRequest, context: Context
    ) -> pb.GetExecutionKeysResponse:
        # The caller's own keys: its mesh name is part of each key's derivation.
        keys = await self.execution_keys.get(
            self._peer(context),
            request.user_id,
            [(ref.category, ref.day) for ref in request.keys],
            create=request.create,
        )
        return pb.GetExecutionKeysResponse(
            keys=[
                pb.ExecutionKey(
                    category=k.category, day=k.day, state=_KEY_STATES[k.state], key=k.key
                )
                for k in keys
            ]
        )

    async def DestroyExpiredEpochKeys(  # noqa: N802 - gRPC method names
        self, request: pb.DestroyExpiredEpochKeysRequest, context: Context
    ) -> pb.DestroyExpiredEpochKeysResponse:
        count, oldest = await self.execution_keys.destroy_before(
            request.participant, request.category, request.before, dry_run=request.dry_run
        )
        return pb.DestroyExpiredEpochKeysResponse(keys_destroyed=count, oldest_day=oldest or "")

    async def ListEpochKeys(  # noqa: N802 - gRPC method names
        self, request: pb.ListEpochKeysRequest, context: Context
    ) -> pb.ListEpochKeysResponse:
        return pb.ListEpochKeysResponse(
            categories=[
                pb.EpochKeyCategory(
                    participant=row["participant"],
                    category=row["category"],
                    keys=row["keys"],
                    oldest_day=row["oldest_day"] or "",
                    destroyed_before=row["destroyed_before"] or "",
                )
                for row in await self.execution_keys.categories()
            ]
        )


_KEY_STATES = {
    ACTIVE: pb.EXECUTION_KEY_STATE_ACTIVE,
    DESTROYED: pb.EXECUTION_KEY_STATE_DESTROYED,
    ABSENT: pb.EXECUTION_KEY_STATE_ABSENT,
}


def _user(user_id: str) -> str:
    if not user_id:
        raise InvalidArgument("USER_ID_REQUIRED", "name the user", field="user_id")
    return user_id


def _status_pb(status: dict) -> pb.KeyStatus:
    return pb.KeyStatus(
        current_version=status["current"],
        versions=[
            pb.KeyVersion(version=v, current=c, data_key_count=n) for v, c, n in status["versions"]
        ],
        pending=status["pending"],
        managed=status["managed"],
    )
