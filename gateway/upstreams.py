"""The gateway's gRPC clients: one mTLS channel per upstream service, opened once per process.

`call` runs one RPC for the acting user (if any) and turns a failed call into `UpstreamError`,
which `problems` renders as application/problem+json. Each service also serves
`leadmesh.retention.v1.RetentionParticipant` on its one port: `participants` are those stubs, on
the same channels, for the user's export.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from leadmesh.identity.v1 import identity_pb2_grpc
from leadmesh.retention.v1 import retention_pb2_grpc
from leadmesh.runner.v1 import runner_pb2_grpc
from leadmesh.vault.v1 import vault_pb2_grpc

from gateway.settings import UPSTREAMS, GatewaySettings
from services.kit.callers import user_metadata
from services.kit.errors import RemoteError, from_rpc_error
from services.kit.grpcclient import open_channel

Reply = TypeVar("Reply")


class UpstreamError(Exception):
    def __init__(self, remote: RemoteError) -> None:
        super().__init__(remote.message)
        self.remote = remote


class Upstreams:
    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        # The longest a stream may stay silent before the gateway gives up on it.
        self.idle_timeout = settings.mesh.rpc_timeout
        self._channels = {
            name: open_channel(settings.mesh, name, caller="gateway") for name in UPSTREAMS
        }
        self.identity = identity_pb2_grpc.IdentityServiceStub(self._channels["identity"])
        self.vault = vault_pb2_grpc.VaultServiceStub(self._channels["vault"])
        self.runner = runner_pb2_grpc.RunnerServiceStub(self._channels["runner"])
        # Every service's retention participant, in UPSTREAMS order (the export's order).
        self.participants = {
            name: retention_pb2_grpc.RetentionParticipantStub(channel)
            for name, channel in self._channels.items()
        }

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels.values()))

    async def health(self) -> dict[str, str]:
        """Each upstream's gRPC health: SERVING, NOT_SERVING or why it could not be asked."""

        async def check(name: str, channel: grpc.aio.Channel) -> tuple[str, str]:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=""),
                    timeout=self._settings.readiness_timeout,
                )
            except grpc.aio.AioRpcError as error:
                return name, error.code().name
            return name, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

        results = await asyncio.gather(*(check(n, c) for n, c in self._channels.items()))
        return dict(results)


async def call(
    method: Callable[..., Awaitable[Reply]], request: Any, *, user_id: str | None = None
) -> Reply:
    metadata = user_metadata(user_id) if user_id else None
    try:
        return await method(request, metadata=metadata)
    except grpc.aio.AioRpcError as error:
        raise UpstreamError(from_rpc_error(error)) from None
