"""Credentials as their owner manages them: create, get, list, update, delete.

Every secret is sealed under its owner's data key with associated data naming the owner, the
credential and its kind. A credential of another user is simply not found. Never returns a
secret: what leaves here is metadata (the runner's plaintext comes from resolve.py).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from services.kit.clock import Clock
from services.kit.errors import InvalidArgument, NotFound
from services.kit.tokens import invalid_page_token, page_cursor, page_token
from services.vault import kinds
from services.vault.audit import AuditLog, Event
from services.vault.datakeys import DataKeys, sealed_columns
from services.vault.sealcache import SealedRows
from services.vault.store import Store

if TYPE_CHECKING:
    from services.vault.resolve import Sealed

ACTIVE, NEEDS_RECONNECT = "active", "needs_reconnect"


def not_found() -> NotFound:
    return NotFound("CREDENTIAL_NOT_FOUND", "no such credential")


# The form this vault writes ids in; anything else is parsed (and normalised) by uuid.UUID.
_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_id(value: str) -> str:
    """Ids are UUIDs; anything else names no credential (and never reaches a query)."""
    if _CANONICAL_ID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise not_found() from None


def _text_field(value: str, field: str, limit: int) -> str:
    value = value.strip()
    if not value or len(value) > limit or "\x00" in value:
        raise InvalidArgument(
            f"INVALID_{field.upper()}", f"{field} needs 1 to {limit} characters", field=field
        )
    return value


class Credentials:
    def __init__(
        self,
        store: Store,
        data_keys: DataKeys,
        sealed: SealedRows[Sealed],
        audit: AuditLog,
        clock: Clock,
    ) -> None:
        """`sealed`: the resolve path's cache, emptied by every change made here."""
        self.store = store
        self.data_keys = data_keys
        self.sealed = sealed
        self.audit = audit
        self.clock = clock

    async def create(
        self, caller: str, user_id: str, name: str, kind: str, provider: str, secret: dict
    ) -> dict[str, Any]:
        name = _text_field(name, "name", 200)
        provider = _text_field(provider, "provider", 100)
        stored = kinds.validate(kinds.check_kind(kind), secret)
        credential_id, now = str(uuid.uuid4()), self.clock.now()
        async with self.store.begin() as tx:
            key, generation = await self.data_keys.get(tx, user_id, create=True)  # type: ignore[misc]
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
                    **sealed_columns(key, generation, user_id, credential_id, kind, stored),
                }
            )
            created = await tx.credential(user_id, credential_id)
        await self.audit.record(Event(caller, user_id, "create", credential_id=credential_id))
        assert created is not None
        return created

    async def get(self, user_id: str, credential_id: str) -> dict[str, Any]:
        credential_id = canonical_id(credential_id)
        async with self.store.read() as tx:
            row = await tx.credential(user_id, credential_id)
        if row is None:
            raise not_found()
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
        credential_id = canonical_id(credential_id)
        values = _metadata_changes(paths, name, provider)
        async with self.store.begin() as tx:
            row = await tx.credential(user_id, credential_id)
            if row is None:
                raise not_found()
            if "secret" in paths:
                stored = kinds.validate(row["kind"], secret or {})
                key, generation = await self.data_keys.get(tx, user_id, create=True)  # type: ignore[misc]
                values.update(
                    sealed_columns(key, generation, user_id, credential_id, row["kind"], stored)
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
        credential_id = canonical_id(credential_id)
        async with self.store.begin() as tx:
            if not await tx.delete_credential(user_id, credential_id):
                raise not_found()
        self.sealed.forget()
        await self.audit.record(Event(caller, user_id, "delete", credential_id=credential_id))


def _metadata_changes(paths: list[str], name: str, provider: str) -> dict[str, Any]:
    """The checked name and provider an update's mask names (the secret is sealed apart)."""
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
    return values


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
