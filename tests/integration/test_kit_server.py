"""The kit's server serves a stream only to the callers its table names; any other stream (one
the table does not list) is refused to everyone, while health Watch stays open."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit.config import MeshSettings
from services.kit.grpcclient import open_channel
from services.kit.grpcserver import start_server


async def test_streams_follow_the_caller_table_and_health_watch_is_open(mesh: MeshSettings):
    async def numbers(_request, _context):
        for n in range(3):
            yield str(n).encode()

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_stream_rpc_method_handler(
            numbers, request_deserializer=bytes, response_serializer=bytes
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Streams", {"Count": handler,
                                                                  "Unlisted": handler})]
        )  # fmt: skip

    running = await start_server(
        name="identity",
        mesh=mesh,
        port=0,
        register=register,
        service_names=[],
        allowed={"/test.Streams/Count": frozenset({"gateway"})},
    )
    there = mesh.model_copy(update={"identity_addr": f"127.0.0.1:{running.port}"})

    async def read(caller: str, method: str) -> list[bytes] | grpc.StatusCode:
        async with open_channel(there, "identity", caller=caller) as channel:
            stream = channel.unary_stream(
                f"/test.Streams/{method}", request_serializer=bytes, response_deserializer=bytes
            )
            try:
                return [item async for item in stream(b"")]
            except grpc.aio.AioRpcError as error:
                return error.code()

    try:
        assert await read("gateway", "Count") == [b"0", b"1", b"2"]
        assert await read("vault", "Count") == grpc.StatusCode.PERMISSION_DENIED
        assert await read("gateway", "Unlisted") == grpc.StatusCode.PERMISSION_DENIED
        async with open_channel(there, "identity", caller="vault") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
    finally:
        await running.stop(grace=0.5)


async def test_a_stream_names_its_caller_over_plaintext_internal_traffic(mesh: MeshSettings):
    """LEADMESH_INSECURE_INTERNAL: no certificate, the channel names its caller in metadata, for
    server streams as for unary calls (the kit's client interceptors, not each caller)."""
    plain = mesh.model_copy(update={"insecure_internal": True})

    async def numbers(_request, _context):
        yield b"1"

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_stream_rpc_method_handler(
            numbers, request_deserializer=bytes, response_serializer=bytes
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.Streams", {"Count": handler})]
        )

    running = await start_server(
        name="identity", mesh=plain, port=0, register=register, service_names=[],
        allowed={"/test.Streams/Count": frozenset({"gateway"})},
    )  # fmt: skip
    there = plain.model_copy(update={"identity_addr": f"127.0.0.1:{running.port}"})
    try:
        async with open_channel(there, "identity", caller="gateway") as channel:
            stream = channel.unary_stream(
                "/test.Streams/Count", request_serializer=bytes, response_deserializer=bytes
            )
            assert [item async for item in stream(b"")] == [b"1"]
    finally:
        await running.stop(grace=0.5)
