"""What the vault does with credentials: seal, list, update, delete, resolve and refresh.

Every secret is sealed under its owner's data key with associated data naming the owner, the
credential and its kind. A credential of another user is simply not found.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from google.protobuf import struct_pb2

from services.kit.clock import Clock
from services.kit.errors import (
    DataLoss,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.kit.tokens import invalid_page_token, page_cursor, page_token, sha256_hex
from services.vault import kinds
from services.vault.audit import AuditLog, Event
from services.vault.keys import (
    KeyRing,
    KeyUnavailable,
    Tampered,
    cipher,
    new_data_key,
    seal,
    secret_aad,
    unseal,
)
from services.vault.leases import Leases
from services.vault.oauth import InvalidGrant, OAuthProviders, ProviderUnreachable
from services.vault.sealcache import SealedRows
from services.vault.settings import VaultSettings
from services.vault.store import Store, Tx

log = logging.getLogger("leadmesh.vault")

ACTIVE, NEEDS_RECONNECT = "active", "needs_reconnect"


def _not_found() -> NotFound:
    return NotFound("CREDENTIAL_NOT_FOUND", "no such credential")


# The form this vault writes ids in; anything else is parsed (and normalised) by uuid.UUID.
_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _credential_id(value: str) -> str:
    """Ids are UUIDs; anything else names no credential (and never reaches a query)."""
    if _CANONICAL_ID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _not_found() from None


def _runner_ids(user_id: str, credential_id: str, connection_id: str) -> tuple[str, str, str]:
    """The ids a runner sends, checked before they reach a query or the audit log."""
    if not (0 < len(user_id) <= 64 and len(connection_id) <= 64):
        raise _not_found()
    if not (user_id.isprintable() and connection_id.isprintable()):
        raise _not_found()
    return user_id, _credential_id(credential_id), connection_id


def _text_field(value: str, field: str, limit: int) -> str:
    value = value.strip()
    if not value or len(value) > limit or "\x00" in value:
        raise InvalidArgument(
            f"INVALID_{field.upper()}", f"{field} needs 1 to {limit} characters", field=field
        )
    return value


class Resolved:
    """An opened credential: its metadata (read-only), its secret as the Struct a resolve sends,
    and the metadata as the API sends it (`Vault.render`, made once per sealed row read)."""

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


# Columns of a sealed row that are not the credential's metadata.
_SEALED_COLUMNS = frozenset({"kek_version", "wrapped_key", "generation", "secret"})


@dataclass(frozen=True, slots=True)
class _Sealed:
    """A sealed row made ready to open, as kept in `SealedRows`: the metadata, the data key's
    cipher, the ciphertext with its associated data, and the metadata rendered for the API."""

    credential: Mapping[str, Any]
    cipher: Any  # AESGCM
    secret: bytes
    aad: bytes
    format_version: int
    rendered: Any


class Vault:
    def __init__(
        self,
        settings: VaultSettings,
        store: Store,
        keyring: KeyRing,
        audit: AuditLog,
        leases: Leases,
        providers: OAuthProviders,
        clock: Clock,
        *,
        render: Callable[[Mapping[str, Any]], Any],
        suspended: Container[str] = frozenset(),
    ) -> None:
        """`render`: how the API sends a credential's metadata; a resolve served from memory
        hands out the form made when its row was read (no work per resolve). `suspended`: the
        users whose deletion was requested (services/kit/deletions.py), whose secrets no longer
        leave the vault."""
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.audit = audit
        self.leases = leases
        self.providers = providers
        self.clock = clock
        self.render = render
        self.suspended = suspended
        self.sealed: SealedRows[_Sealed] = SealedRows(enabled=not settings.mesh.redis())

    # data keys
    async def data_key(self, tx: Tx, user_id: str, *, create: bool) -> tuple[bytes, int] | None:
        """The user's data key and its generation; made on first use when `create`."""
        row = await tx.user_key(user_id)
        if row is None and create:
            version, wrapped = self.keyring.wrap(user_id, new_data_key())
            await tx.add_user_key(
                {
                    "user_id": user_id,
                    "kek_version": version,
                    "wrapped_key": wrapped,
                    "generation": 1,
                    "create_time": self.clock.now(),
                }
            )
            row = await tx.user_key(user_id)  # ours, or a concurrent first use's
        if row is None:
            return None
        return self._unwrap(user_id, row["kek_version"], row["wrapped_key"]), row["generation"]

    def _unwrap(self, user_id: str, version: str, wrapped: bytes) -> bytes:
        try:
            return self.keyring.unwrap(user_id, version, wrapped)
        except KeyUnavailable:
            raise Unavailable(
                "KEY_UNAVAILABLE",
                f"KEK version {version} is not loaded",
                metadata={"version": version},
            ) from None
        except Tampered:
            raise DataLoss("DATA_KEY_UNREADABLE", "a data key does not authenticate") from None

    # credentials
    async def create(
        self, caller: str, user_id: str, name: str, kind: str, provider: str, secret: dict
    ) -> dict[str, Any]:
        name = _text_field(name, "name", 200)
        provider = _text_field(provider, "provider", 100)
        stored = kinds.validate(kinds.check_kind(kind), secret)
        credential_id, now = str(uuid.uuid4()), self.clock.now()
        async with self.store.begin() as tx:
            key, generation = await self.data_key(tx, user_id, create=True)  # type: ignore[misc]
            await tx.add_credential(
                {
                    "id": credential_id,
                    "user_id": user_id,
                    "name": name,
                    "kind": kind,
                    "provider": provider,
                    "status": ACTIVE,
                    "create_time": now,
                    "update_time": now,
                    **self._sealed_columns(key, generation, user_id, credential_id, kind, stored),
                }
            )
            created = await tx.credential(user_id, credential_id)
        await self.audit.record(Event(caller, user_id, "create", credential_id=credential_id))
        assert created is not None
        return created

    def _sealed_columns(
        self, key: bytes, generation: int, user_id: str, credential_id: str, kind: str, secret: dict
    ) -> dict[str, Any]:
        plaintext = kinds.encode(secret)
        expires_at = secret.get("expires_at")
        aad = secret_aad(user_id, credential_id, kind, kinds.SECRET_FORMAT)
        return {
            "secret": seal(key, plaintext, aad),
            "key_generation": generation,
            "format_version": kinds.SECRET_FORMAT,
            "hint": kinds.hint(kind, secret),
            "scopes": list(secret.get("scopes", [])),
            "expire_time": datetime.fromtimestamp(expires_at, UTC) if expires_at else None,
            "token_sha256": sha256_hex(secret["access_token"]) if kind == "oauth2" else None,
        }

    async def get(self, user_id: str, credential_id: str) -> dict[str, Any]:
        credential_id = _credential_id(credential_id)
        async with self.store.read() as tx:
            row = await tx.credential(user_id, credential_id)
        if row is None:
            raise _not_found()
        return row

    async def list(
        self, user_id: str, page_size: int, page_token: str
    ) -> tuple[list[dict[str, Any]], str]:
        size = min(max(page_size or 20, 1), 100)
        after = _decode_token(page_token) if page_token else None
        async with self.store.read() as tx:
            rows = await tx.credentials_page(user_id, after, size + 1)
        more, rows = len(rows) > size, rows[:size]
        return rows, _encode_token(rows[-1]) if more else ""

    async def update(
        self,
        caller: str,
        user_id: str,
        credential_id: str,
        paths: list[str],
        *,
        name: str = "",
        provider: str = "",
        secret: dict | None = None,
    ) -> dict[str, Any]:
        credential_id = _credential_id(credential_id)
        unknown = set(paths) - {"name", "provider", "secret"}
        if unknown or not paths:
            raise InvalidArgument(
                "INVALID_UPDATE_MASK",
                "update_mask names name, provider or secret",
                field="update_mask",
            )
        values: dict[str, Any] = {}
        if "name" in paths:
            values["name"] = _text_field(name, "name", 200)
        if "provider" in paths:
            values["provider"] = _text_field(provider, "provider", 100)
        async with self.store.begin() as tx:
            row = await tx.credential(user_id, credential_id)
            if row is None:
                raise _not_found()
            if "secret" in paths:
                stored = kinds.validate(row["kind"], secret or {})
                key, generation = await self.data_key(tx, user_id, create=True)  # type: ignore[misc]
                values.update(
                    self._sealed_columns(
                        key, generation, user_id, credential_id, row["kind"], stored
                    )
                )
                values["status"] = ACTIVE
            values["update_time"] = self.clock.now()
            await tx.update_credential(credential_id, **values)
            row = await tx.credential(user_id, credential_id)
        self.sealed.forget()
        await self.audit.record(Event(caller, user_id, "update", credential_id=credential_id))
        assert row is not None
        return row

    async def delete(self, caller: str, user_id: str, credential_id: str) -> None:
        credential_id = _credential_id(credential_id)
        async with self.store.begin() as tx:
            if not await tx.delete_credential(user_id, credential_id):
                raise _not_found()
        self.sealed.forget()
        await self.audit.record(Event(caller, user_id, "delete", credential_id=credential_id))

    # plaintext, for the runner
    async def _open(self, user_id: str, credential_id: str, *, fresh: bool = False) -> Resolved:
        """The sealed row opened; the ids are already checked (`_runner_ids`)."""
        key = (user_id, credential_id)
        sealed = None if fresh else self.sealed.get(key)
        if sealed is None:
            epoch = self.sealed.epoch
            async with self.store.read() as tx:
                row = await tx.sealed_credential(user_id, credential_id)
            if row is None:
                raise _not_found()
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

    def _ready(self, user_id: str, credential_id: str, row: dict[str, Any]) -> _Sealed:
        # The data key's cipher, kept with the row (see sealcache.py for why that is safe).
        key = cipher(self._unwrap(user_id, row["kek_version"], row["wrapped_key"]))
        credential = MappingProxyType({k: v for k, v in row.items() if k not in _SEALED_COLUMNS})
        return _Sealed(
            credential,
            key,
            row["secret"],
            secret_aad(user_id, credential_id, row["kind"], row["format_version"]),
            row["format_version"],
            self.render(credential),
        )

    def _expiring(self, resolved: Resolved) -> bool:
        expires_at = resolved.secret.get("expires_at")
        margin = self.clock.now().timestamp() + self.settings.refresh_margin_seconds
        return expires_at is not None and expires_at <= margin

    async def resolve(
        self, caller: str, user_id: str, credential_id: str, connection_id: str
    ) -> Resolved:
        user_id, credential_id, connection_id = _runner_ids(user_id, credential_id, connection_id)
        try:
            if user_id in self.suspended:
                raise _account_deleted()
            resolved = await self._open(user_id, credential_id)
            if resolved.credential["status"] == NEEDS_RECONNECT:
                raise _needs_reconnect()
            if (
                resolved.credential["kind"] == "oauth2"
                and self._expiring(resolved)
                and resolved.secret.get("refresh_token")
            ):
                resolved = await self._refresh(user_id, credential_id, resolved, rejected=None)
        except DomainError as error:
            failed = Event(caller, user_id, "resolve", error.reason, credential_id, connection_id)
            await self.audit.record(failed, wait=False)
            raise
        # Queued, not awaited: committed within the audit log's flush (see audit.py).
        used = Event(caller, user_id, "resolve", "ok", credential_id, connection_id, used=True)
        await self.audit.record(used, wait=False)
        return resolved

    async def refresh(
        self, caller: str, user_id: str, credential_id: str, connection_id: str, rejected: str
    ) -> Resolved:
        user_id, credential_id, connection_id = _runner_ids(user_id, credential_id, connection_id)
        event = Event(
            caller, user_id, "refresh", credential_id=credential_id, connection_id=connection_id
        )
        try:
            if user_id in self.suspended:
                raise _account_deleted()
            resolved = await self._open(user_id, credential_id)
            if resolved.credential["kind"] != "oauth2":
                raise FailedPrecondition("NOT_OAUTH2", "only oauth2 credentials refresh")
            resolved = await self._refresh(
                user_id, credential_id, resolved, rejected=rejected or ""
            )
        except DomainError as error:
            await self.audit.record(_with(event, outcome=error.reason))
            raise
        await self.audit.record(_with(event, used=True))
        return resolved

    async def _refresh(
        self, user_id: str, credential_id: str, seen: Resolved, *, rejected: str | None
    ) -> Resolved:
        """Refreshes under the credential's lease. Whoever held it before us may have refreshed
        already: then its result is returned and the (possibly rotated) refresh token is not
        spent twice."""
        async with self.leases.hold(f"refresh:{credential_id}"):
            current = await self._open(user_id, credential_id, fresh=True)
            if current.credential["status"] == NEEDS_RECONNECT:
                raise _needs_reconnect()  # whatever token the caller saw, none is served now
            replaced = current.credential["token_sha256"] != seen.credential["token_sha256"]
            if replaced or (rejected and current.credential["token_sha256"] != rejected):
                return current
            if rejected is None and not self._expiring(current):
                return current
            refresh_token = current.secret.get("refresh_token")
            if not refresh_token:
                await self._mark_reconnect(user_id, credential_id)
                raise _needs_reconnect()
            try:
                tokens = await self.providers.refresh(current.credential["provider"], refresh_token)
            except InvalidGrant:
                await self._mark_reconnect(user_id, credential_id)
                log.info("refresh token refused", extra={"credential_id": credential_id})
                raise _needs_reconnect() from None
            except ProviderUnreachable:
                raise Unavailable(
                    "OAUTH_PROVIDER_UNAVAILABLE", "the provider's token endpoint did not answer"
                ) from None
            secret = {
                "access_token": tokens.access_token,
                "refresh_token": tokens.refresh_token or refresh_token,
                "expires_at": tokens.expires_at,
                "scopes": tokens.scopes or current.secret.get("scopes", []),
            }
            secret = {k: v for k, v in secret.items() if v is not None}
            async with self.store.begin() as tx:
                key, generation = await self.data_key(tx, user_id, create=False)  # type: ignore[misc]
                await tx.update_credential(
                    credential_id,
                    status=ACTIVE,
                    update_time=self.clock.now(),
                    **self._sealed_columns(
                        key, generation, user_id, credential_id, "oauth2", secret
                    ),
                )
            self.sealed.forget()
            log.info("credential refreshed", extra={"credential_id": credential_id})
            return await self._open(user_id, credential_id, fresh=True)

    async def _mark_reconnect(self, user_id: str, credential_id: str) -> None:
        async with self.store.begin() as tx:
            await tx.update_credential(
                credential_id, status=NEEDS_RECONNECT, update_time=self.clock.now()
            )
        self.sealed.forget()


def _needs_reconnect() -> FailedPrecondition:
    return FailedPrecondition(
        "CREDENTIAL_NEEDS_RECONNECT", "the provider refused this credential: connect it again"
    )


def _account_deleted() -> FailedPrecondition:
    return FailedPrecondition(
        "ACCOUNT_DELETED", "the owner of this credential asked for their account's deletion"
    )


def _with(event: Event, **changes: Any) -> Event:
    return event._replace(**changes)


def _encode_token(row: dict[str, Any]) -> str:
    return page_token(f"{row['create_time'].isoformat()}|{row['id']}")


def _decode_token(token: str) -> tuple[datetime, str]:
    when, _, credential_id = page_cursor(token).partition("|")
    try:
        moment, found = datetime.fromisoformat(when), str(uuid.UUID(credential_id))
    except ValueError:
        raise invalid_page_token() from None
    if moment.tzinfo is None:  # every issued token is UTC; a naive time would not compare
        raise invalid_page_token()
    return moment, found
