"""The JSON shapes of the identity API and their conversion from the gRPC messages; and the
shapes of the connections API that stand apart from a connection's own (its last run, a preview)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from leadmesh.identity.v1 import identity_pb2
from leadmesh.runner.v1 import runner_pb2
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

T = TypeVar("T")

# Passwords: the identity service applies the rules (8 to 1024 characters after NFKC, …); the
# gateway only bounds the size of what it forwards.
Password = Annotated[str, Field(min_length=1, max_length=4096)]
Email = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=320)]
ShortText = Annotated[str, Field(max_length=200)]


class Strict(BaseModel):
    """A request body: unknown fields refused, and no NUL character in any text (databases
    refuse it, and no field has a use for it); free-form JSON values only as protobuf carries
    them exactly (see `_unfit`)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        problem = _unfit(value)
        if problem:
            raise ValueError(problem)
        return value


# Nested objects/arrays in one field: a google.protobuf.Value parses only ~32 deep.
MAX_JSON_DEPTH = 32
# Numbers travel as doubles (google.protobuf.Value): integers beyond 2^53 would change.
MAX_EXACT_INTEGER = 2**53
_SURROGATE = re.compile("[\ud800-\udfff]")


def _unfit(value: Any) -> str | None:
    """Why a field's value cannot go on, or None: NUL in text, lone surrogates (not UTF-8),
    NaN or infinities, integers protobuf would round, nesting deeper than MAX_JSON_DEPTH."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "text must not contain NUL characters"
            if _SURROGATE.search(item):
                return "text must be valid Unicode (no lone surrogates)"
        elif isinstance(item, bool):
            continue
        elif isinstance(item, float) and not math.isfinite(item):
            return "numbers must be finite (no NaN or Infinity)"
        elif isinstance(item, int) and abs(item) > MAX_EXACT_INTEGER:
            return "integers must be within ±2^53 (send larger ones as strings)"
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return f"values must not be nested deeper than {MAX_JSON_DEPTH} levels"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack += [(child, depth + 1) for child in children]
    return None


class Purpose(StrEnum):
    execution_notifications = "execution_notifications"
    business_matters = "business_matters"
    new_features = "new_features"


class LoginOutcome(StrEnum):
    success = "success"
    bad_password = "bad_password"  # noqa: S105 - an outcome, not a password
    throttled = "throttled"
    disabled = "disabled"
    unspecified = "unspecified"


def purpose_to_proto(purpose: Purpose) -> int:
    return identity_pb2.Purpose.Value(f"PURPOSE_{purpose.name.upper()}")


def purpose_from_proto(value: int) -> Purpose:
    return Purpose(identity_pb2.Purpose.Name(value).removeprefix("PURPOSE_").lower())


def timestamp(value: Timestamp) -> datetime | None:
    if not value.seconds and not value.nanos:
        return None
    return value.ToDatetime(tzinfo=UTC)


class PostalAddress(Strict):
    line1: ShortText = ""
    line2: ShortText = ""
    city: ShortText = ""
    postal_code: Annotated[str, Field(max_length=32)] = ""
    country: Annotated[str, Field(max_length=2, description="ISO 3166-1 alpha-2")] = ""


class Account(BaseModel):
    id: str
    email: str
    plan: str
    billing_name: str | None
    billing_address: PostalAddress | None
    create_time: datetime | None
    update_time: datetime | None

    @classmethod
    def of(cls, account: identity_pb2.Account) -> Account:
        has_address = account.HasField("billing_address") and any(
            (account.billing_address.line1, account.billing_address.city)
        )
        return cls(
            id=account.id,
            email=account.email,
            plan=account.plan,
            billing_name=account.billing_name or None,
            billing_address=PostalAddress(
                line1=account.billing_address.line1,
                line2=account.billing_address.line2,
                city=account.billing_address.city,
                postal_code=account.billing_address.postal_code,
                country=account.billing_address.country,
            )
            if has_address
            else None,
            create_time=timestamp(account.create_time),
            update_time=timestamp(account.update_time),
        )


class Session(BaseModel):
    id: str
    create_time: datetime | None
    last_use_time: datetime | None
    expire_time: datetime | None
    absolute_expire_time: datetime | None
    ip_address: str
    user_agent: str
    current: bool

    @classmethod
    def of(cls, session: identity_pb2.Session) -> Session:
        return cls(
            id=session.id,
            create_time=timestamp(session.create_time),
            last_use_time=timestamp(session.last_use_time),
            expire_time=timestamp(session.expire_time),
            absolute_expire_time=timestamp(session.absolute_expire_time),
            ip_address=session.ip_address,
            user_agent=session.user_agent,
            current=session.current,
        )


class SignedIn(BaseModel):
    """A login's answer. The session token itself is only ever in the HttpOnly cookie."""

    account: Account
    session: Session
    csrf_token: str


class LoginAttempt(BaseModel):
    attempt_time: datetime | None
    ip_address: str
    user_agent: str
    outcome: LoginOutcome
    # The address and user agent are sealed at rest: true once they can no longer be read (their
    # day's key destroyed past the login history's max age); both are then "".
    details_purged: bool = False

    @classmethod
    def of(cls, attempt: identity_pb2.LoginAttempt) -> LoginAttempt:
        name = identity_pb2.LoginOutcome.Name(attempt.outcome).removeprefix("LOGIN_OUTCOME_")
        return cls(
            attempt_time=timestamp(attempt.attempt_time),
            ip_address=attempt.ip_address,
            user_agent=attempt.user_agent,
            outcome=LoginOutcome(name.lower()),
            details_purged=attempt.details_purged,
        )


class ConsentEvent(BaseModel):
    granted: bool
    event_time: datetime | None
    source: str


class Consent(BaseModel):
    purpose: Purpose
    granted: bool
    update_time: datetime | None
    history: list[ConsentEvent]

    @classmethod
    def of(cls, consent: identity_pb2.Consent) -> Consent:
        return cls(
            purpose=purpose_from_proto(consent.purpose),
            granted=consent.granted,
            update_time=timestamp(consent.update_time),
            history=[
                ConsentEvent(granted=e.granted, event_time=timestamp(e.event_time), source=e.source)
                for e in consent.history
            ],
        )


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_page_token: str | None = None


class RunAccepted(BaseModel):
    """A run queued (a webhook, run now, a retry): follow it at /v1/runs/{run_id}."""

    run_id: str


# --- connections (gateway/routes/connections.py) ---


class LastRun(BaseModel):
    """A connection's newest run (its outcome: `status`); the activity stream has them all."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    create_time: datetime | None
    finish_time: datetime | None

    @classmethod
    def of(cls, run: runner_pb2.Run) -> LastRun:
        return cls(
            id=run.id,
            status=run.status,  # type: ignore[arg-type]
            create_time=timestamp(run.create_time),
            finish_time=timestamp(run.finish_time),
        )


class PreviewedRequest(BaseModel):
    method: str
    url: str
    headers: dict[str, str]
    # The body as it would be sent (JSON text), null for none (GET, or no body template).
    body: str | None


class PreviewCredential(BaseModel):
    """The action's credential. An OAuth token or a login goes in `Authorization`, shown as
    "[redacted]"; an API key goes in the header or query parameter its secret names, which the
    preview does not show."""

    id: str
    kind: str


class Preview(BaseModel):
    request: PreviewedRequest
    credential: PreviewCredential | None = None
