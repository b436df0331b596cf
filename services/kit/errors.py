"""Domain errors and their one mapping to gRPC status (AIP-193).

Services raise these; the kit's server interceptor turns them into a status carrying a
`google.rpc.ErrorInfo` whose UPPER_SNAKE `reason` always means the same thing, plus `BadRequest`
field violations and `RetryInfo` where given. Clients turn a failed call back into a `RemoteError`.
Messages must never hold secrets or personal data: they travel to callers and into spans.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "leadmesh"


class DomainError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataLoss(DomainError):
    """Stored data cannot be read back (a ciphertext that does not authenticate): fail closed."""

    code = grpc.StatusCode.DATA_LOSS


class Unavailable(DomainError):
    """A dependency (a third party, a key) cannot be reached now; trying later may work."""

    code = grpc.StatusCode.UNAVAILABLE


def to_grpc_status(error: DomainError) -> grpc.Status:
    details = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    ]
    if error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.message, reason=error.reason
        )
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(0, int(error.retry_after * 1000)))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name), message=error.message, details=_pack(details)
    )
    return rpc_status.to_status(status)


def _pack(messages: Sequence) -> list[any_pb2.Any]:
    packed = []
    for message in messages:
        wrapper = any_pb2.Any()
        wrapper.Pack(message)
        packed.append(wrapper)
    return packed


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True)
class RemoteError:
    """A failed call as a caller sees it: status code, message, reason and details."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    violations: tuple[FieldViolation, ...] = ()


def to_remote(error: DomainError) -> RemoteError:
    """A domain error raised on this side of a call, in the shape a caller's errors have."""
    violations = (FieldViolation(error.field, error.message),) if error.field else ()
    return RemoteError(
        error.code, error.message, error.reason, error.metadata, error.retry_after, violations
    )


# A called service's answers that mean it is away, not that it refused: the caller's outage, to
# retry later (a run held without using an attempt, a webhook answered 503), never the user's fault.
OUTAGE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


def from_rpc_error(error: grpc.RpcError) -> RemoteError:
    """Reads the rich status of a failed call (sync or aio)."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    message = error.details() if callable(getattr(error, "details", None)) else str(error)
    remote = RemoteError(code=code, message=message or "")
    status = _rich_status(error)
    if status is None:
        return remote
    reason, metadata, retry_after, violations = "", {}, None, []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToMilliseconds() / 1000
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return RemoteError(code, remote.message, reason, metadata, retry_after, tuple(violations))


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None
