"""Credentials for deliveries, from the vault: `ResolveCredential` (plaintext to the runner only)
and `RefreshOAuthCredential` after a 401.

A resolved secret may be kept in this process's memory for `RUNNER_CREDENTIAL_CACHE_SECONDS`
(default 5; never written anywhere, never past an OAuth token's expiry) so a burst of leads to
one connection costs one resolve, not one each; 0 asks the vault every time. The vault's audit log
then records each fetch. Concurrent deliveries needing the same secret share one call.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from leadmesh.vault.v1 import vault_pb2

from services.kit.errors import OUTAGE_CODES, from_rpc_error
from services.kit.tokens import sha256_hex

Credential = tuple[str, dict[str, Any]]  # (kind, secret)


class CredentialProblem(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Outage(Exception):
    """Ours, not the destination's: try again later without using up an attempt."""


class Credentials:
    def __init__(self, vault, cache_seconds: float) -> None:
        self.vault = vault
        self.cache_seconds = cache_seconds
        self._cache: dict[tuple[str, str, str], tuple[float, Credential]] = {}
        self._fetching: dict[tuple[str, str, str], asyncio.Future] = {}

    async def resolve(self, user_id: str, credential_id: str, connection_id: str) -> Credential:
        key = (user_id, credential_id, connection_id)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        pending = self._fetching.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._fetching[key] = future
        try:
            request = vault_pb2.ResolveCredentialRequest(
                user_id=user_id, credential_id=credential_id, connection_id=connection_id
            )
            credential = await self._call(self.vault.ResolveCredential, request)
            self._keep(key, credential)
            future.set_result(credential)
            return credential
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters get it, nobody else needs to
            raise
        finally:
            del self._fetching[key]

    async def refresh(
        self, user_id: str, credential_id: str, connection_id: str, rejected: Credential
    ) -> Credential:
        key = (user_id, credential_id, connection_id)
        self._cache.pop(key, None)
        request = vault_pb2.RefreshOAuthCredentialRequest(
            user_id=user_id,
            credential_id=credential_id,
            connection_id=connection_id,
            rejected_token_sha256=sha256_hex(str(rejected[1].get("access_token", ""))),
        )
        credential = await self._call(self.vault.RefreshOAuthCredential, request)
        self._keep(key, credential)
        return credential

    def _keep(self, key: tuple[str, str, str], credential: Credential) -> None:
        if self.cache_seconds <= 0:
            return
        until = time.monotonic() + self.cache_seconds
        expires_at = credential[1].get("expires_at")
        if credential[0] == "oauth2" and isinstance(expires_at, (int, float)):
            until = min(until, time.monotonic() + expires_at - time.time() - 60)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (until, credential)

    async def _call(self, method, request) -> Credential:
        try:
            reply = await method(request)
        except grpc.aio.AioRpcError as error:
            remote = from_rpc_error(error)
            if remote.code in OUTAGE_CODES:
                raise Outage(f"the vault is unreachable ({remote.code.name})") from None
            raise CredentialProblem(remote.reason or remote.code.name, remote.message) from None
        kind = vault_pb2.CredentialKind.Name(reply.credential.kind)
        return kind.removeprefix("CREDENTIAL_KIND_").lower(), MessageToDict(reply.secret)
