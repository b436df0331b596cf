"""The resolve path: a credential's secret opened for the runner (ResolveCredential), served from
the sealed-row cache (sealcache.py) when it can be, refreshing an expiring OAuth token first
(refresh.py).

This is the vault's hot path: one AES-GCM open, one parse and a queued audit event per resolve
served from memory, no other work. Plaintext leaves only in a `Resolved`, never in a log, an
error or the audit log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from google.protobuf import struct_pb2

from services.kit.clock import Clock
from services.kit.errors import DataLoss, DomainError, FailedPrecondition
from services.kit.metrics import counter
from services.vault import kinds
from services.vault.audit import AuditLog, Event
from services.vault.credentials import NEEDS_RECONNECT, canonical_id, not_found
from services.vault.datakeys import DataKeys
from services.vault.keys import Tampered, cipher, secret_aad, unseal
from services.vault.sealcache import SealedRows
from services.vault.store import Store


def runner_ids(user_id: str, credential_id: str, connection_id: str) -> tuple[str, str, str]:
    """The ids a runner sends, checked before they reach a query or the audit log."""
    if not (0 < len(user_id) <= 64 and len(connection_id) <= 64):
        raise not_found()
    if not (user_id.isprintable() and connection_id.isprintable()):
        raise not_found()
    return user_id, canonical_id(credential_id), connection_id


def needs_reconnect() -> FailedPrecondition:
    return FailedPrecondition(
        "CREDENTIAL_NEEDS_RECONNECT", "the provider refused this credential: connect it again"
    )


def account_deleted() -> FailedPrecondition:
    return FailedPrecondition(
        "ACCOUNT_DELETED", "the owner of this credential asked for their account's deletion"
    )


class Resolved:
    """An opened credential: its metadata (read-only), its secret as the Struct a resolve sends,
    and the metadata as the API sends it (`render`, made once per sealed row read)."""

    __slots__ = ("credential", "struct", "rendered", "_secret")

    def __init__(
        self, credential: Mapping[str, Any], struct: struct_pb2.Struct, rendered: Any
    ) -> None:
        self.credential, self.struct, self.rendered = credential, struct, rendered
        self._secret: dict[str, Any] | None = None

    @property
    def secret(self) -> dict[str, Any]:
        """The secret as plain values, made when first asked (an api_key resolve never asks)."""
        if self._secret is None:
            self._secret = kinds.as_dict(self.struct)
        return self._secret


def expiring(resolved: Resolved, clock: Clock, margin_seconds: float) -> bool:
    """Whether an OAuth access token expires within the refresh margin."""
    expires_at = resolved.secret.get("expires_at")
    return expires_at is not None and expires_at <= clock.now().timestamp() + margin_seconds


# Columns of a sealed row that are not the credential's metadata.
_SEALED_COLUMNS = frozenset({"kek_version", "wrapped_key", "generation", "secret"})


@dataclass(frozen=True, slots=True)
class Sealed:
    """A sealed row made ready to open, as kept in `SealedRows`: the metadata, the data key's
    cipher, the ciphertext with its associated data, and the metadata rendered for the API."""

    credential: Mapping[str, Any]
    cipher: Any  # AESGCM
    secret: bytes
    aad: bytes
    format_version: int
    rendered: Any


class SealedCredentials:
    """Sealed rows read (or found in the cache) and opened; shared by resolve and refresh. The
    ids are checked by the caller (`runner_ids`)."""

    def __init__(
        self,
        store: Store,
        data_keys: DataKeys,
        sealed: SealedRows[Sealed],
        *,
        render: Callable[[Mapping[str, Any]], Any],
    ) -> None:
        """`render`: how the API sends a credential's metadata; a resolve served from memory
        hands out the form made when its row was read (no work per resolve)."""
        self.store = store
        self.data_keys = data_keys
        self.sealed = sealed
        self.render = render

    async def open(self, user_id: str, credential_id: str, *, fresh: bool = False) -> Resolved:
        key = (user_id, credential_id)
        sealed = None if fresh else self.sealed.get(key)
        if sealed is None:
            epoch = self.sealed.epoch
            async with self.store.read() as tx:
                row = await tx.sealed_credential(user_id, credential_id)
            if row is None:
                raise not_found()
            if row["wrapped_key"] is None or row["generation"] != row["key_generation"]:
                raise FailedPrecondition(
                    "KEY_DESTROYED", "the data key of this secret is destroyed"
                )
            sealed = self._ready(user_id, credential_id, row)
            self.sealed.put(key, sealed, epoch)
        try:
            plaintext = unseal(sealed.cipher, sealed.secret, sealed.aad)
            struct = kinds.decode(plaintext, sealed.format_version)
        except (Tampered, kinds.Undecodable):
            raise DataLoss("SECRET_UNREADABLE", "the stored secret does not authenticate") from None
        return Resolved(sealed.credential, struct, sealed.rendered)

    def _ready(self, user_id: str, credential_id: str, row: dict[str, Any]) -> Sealed:
        # The data key's cipher, kept with the row (see sealcache.py for why that is safe).
        key = cipher(self.data_keys.unwrap(user_id, row["kek_version"], row["wrapped_key"]))
        credential = MappingProxyType({k: v for k, v in row.items() if k not in _SEALED_COLUMNS})
        return Sealed(
            credential,
            key,
            row["secret"],
            secret_aad(user_id, credential_id, row["kind"], row["format_version"]),
            row["format_version"],
            self.render(credential),
        )


# The refresh of a credential whose access token is expiring (refresh.py's `Refresher.renew`).
Renew = Callable[[str, str, Resolved], Awaitable[Resolved]]


# By the credential's kind (oauth2, api_key, login) and "ok" or the refusal's reason.
_resolves = counter("leadmesh.vault.resolves")


class Resolver:
    def __init__(
        self,
        opened: SealedCredentials,
        renew: Renew,
        audit: AuditLog,
        clock: Clock,
        *,
        refresh_margin_seconds: float,
        suspended: Container[str] = frozenset(),
    ) -> None:
        """`suspended`: the users whose deletion was requested (services/kit/deletions.py),
        whose secrets no longer leave the vault."""
        self._open = opened.open  # bound once: no extra lookup per resolve
        self._renew = renew
        self.audit = audit
        self.clock = clock
        self.margin = refresh_margin_seconds
        self.suspended = suspended

    async def resolve(
        self, caller: str, user_id: str, credential_id: str, connection_id: str
    ) -> Resolved:
        try:
            resolved = await self._resolve(caller, user_id, credential_id, connection_id)
        except DomainError as error:
            _resolves.add(1, {"kind": "unknown", "outcome": error.reason})
            raise
        _resolves.add(1, {"kind": resolved.credential["kind"], "outcome": "ok"})
        return resolved

    async def _resolve(
        self, caller: str, user_id: str, credential_id: str, connection_id: str
    ) -> Resolved:
        user_id, credential_id, connection_id = runner_ids(user_id, credential_id, connection_id)
        try:
            if user_id in self.suspended:
                raise account_deleted()
            resolved = await self._open(user_id, credential_id)
            if resolved.credential["status"] == NEEDS_RECONNECT:
                raise needs_reconnect()
            if (
                resolved.credential["kind"] == "oauth2"
                and expiring(resolved, self.clock, self.margin)
                and resolved.secret.get("refresh_token")
            ):
                resolved = await self._renew(user_id, credential_id, resolved)
        except DomainError as error:
            failed = Event(caller, user_id, "resolve", error.reason, credential_id, connection_id)
            await self.audit.record(failed, wait=False)
            raise
        # Queued, not awaited: committed within the audit log's flush (see audit.py).
        used = Event(caller, user_id, "resolve", "ok", credential_id, connection_id, used=True)
        await self.audit.record(used, wait=False)
        return resolved
