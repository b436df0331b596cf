"""Calling any RPC of a service with an empty request, for the caller-matrix tests."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2, symbol_database


def empty_request(service, method: str):
    """An empty request message of `method` of the service descriptor `service`."""
    descriptor = service.methods_by_name[method].input_type
    if descriptor.full_name == "google.protobuf.Empty":
        return empty_pb2.Empty()
    return symbol_database.Default().GetSymbol(descriptor.full_name)()


async def call(stub, service, method: str, request=None, **kwargs):
    """The reply, or the failed call's error (a test then looks at its code)."""
    try:
        return await getattr(stub, method)(
            request or empty_request(service, method), timeout=10, **kwargs
        )
    except grpc.aio.AioRpcError as error:
        return error


def refused(outcome, code: grpc.StatusCode) -> bool:
    return isinstance(outcome, grpc.aio.AioRpcError) and outcome.code() == code
