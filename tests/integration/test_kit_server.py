"""The kit's server refuses what its caller table cannot vouch for: streaming RPCs."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit.config import MeshSettings
from services.kit.grpcclient import open_channel
from services.kit.grpcserver import start_server


async def test_streaming_rpcs_outside_the_table_are_refused_and_health_watch_is_open(
    mesh: MeshSettings,
):
    async def numbers(_request, _context):
        for n in range(3):
            yield str(n).encode()

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_stream_rpc_method_handler(
            numbers, request_deserializer=bytes, response_serializer=bytes
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Streams", {"Count": handler})]
        )

    running = await start_server(
        name="identity",
        mesh=mesh,
        port=0,
        register=register,
        service_names=[],
        allowed={"/test.Streams/Count": frozenset({"gateway"})},
    )
    there = mesh.model_copy(update={"identity_addr": f"127.0.0.1:{running.port}"})
    try:
        async with open_channel(there, "identity", caller="gateway") as channel:
            count = channel.unary_stream(
                "/test.Streams/Count", request_serializer=bytes, response_deserializer=bytes
            )
            call = count(b"")
            try:
                async for _ in call:
                    raise AssertionError("a stream outside the table answered")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
    finally:
        await running.stop(grace=0.5)
