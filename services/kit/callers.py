"""Who is calling: the peer's mesh name from its mTLS certificate, and the acting user.

The acting user (`x-leadmesh-user-id`) is trusted only when the peer is the gateway, since only
the gateway authenticates people. With LEADMESH_INSECURE_INTERNAL=1 there is no certificate and
the caller names itself in `x-leadmesh-insecure-caller`: development only.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

import grpc

from services.kit.errors import PermissionDenied, Unauthenticated
from services.kit.pki import spiffe_name

USER_ID_KEY = "x-leadmesh-user-id"
INSECURE_CALLER_KEY = "x-leadmesh-insecure-caller"
GATEWAY = "gateway"
# Methods every mesh member may call: health checks and reflection.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


# The caller of the RPC being served, as the access interceptor read (and vetted) it.
_vetted: ContextVar[str] = ContextVar("leadmesh_caller", default="")


def vetted_caller() -> str:
    """The mesh name of this RPC's caller, once the access interceptor has let it through."""
    return _vetted.get()


def vet_caller(name: str) -> Token[str]:
    """Sets this RPC's caller (the access interceptor, after its checks); reset with the token."""
    return _vetted.set(name)


def forget_caller(token: Token[str]) -> None:
    _vetted.reset(token)


def peer_name(context: grpc.aio.ServicerContext, insecure: bool) -> str | None:
    if insecure:
        return _metadata(context).get(INSECURE_CALLER_KEY)
    auth = context.auth_context()
    spiffe = auth.get("peer_spiffe_id")
    if spiffe:
        value = spiffe[0].decode()
        return value.removeprefix("spiffe://leadmesh/") if value.startswith("spiffe://") else None
    pem = auth.get("x509_pem_cert")
    return spiffe_name(pem[0]) if pem else None


def acting_user(context: grpc.aio.ServicerContext) -> str:
    """The user the gateway acts for; the access interceptor has already vetted the peer."""
    user_id = _metadata(context).get(USER_ID_KEY)
    if not user_id:
        raise Unauthenticated("USER_CONTEXT_MISSING", "this method acts for a user")
    return user_id


def user_metadata(user_id: str) -> tuple[tuple[str, str], ...]:
    return ((USER_ID_KEY, user_id),)


def check_user_context(context: grpc.aio.ServicerContext, peer: str | None) -> None:
    """A user id from anyone but the gateway is an impersonation attempt."""
    if USER_ID_KEY in _metadata(context) and peer != GATEWAY:
        raise PermissionDenied("USER_CONTEXT_NOT_TRUSTED", "only the gateway may act for a user")


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
