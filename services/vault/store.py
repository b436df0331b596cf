"""Vault's persistence: every query, each inside a transaction (`Store.begin()` → `Tx`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from services.kit.db import RowTx
from services.kit.db import Store as KitStore
from services.vault.tables import (
    audit_events,
    credentials,
    leases,
    oauth_client_secrets,
    oauth_states,
    user_keys,
)


class Tx(RowTx):
    async def _insert_once(self, table, values: dict[str, Any]) -> bool:
        """Inserts unless the primary key exists; False when it did."""
        try:
            async with self.c.begin_nested():
                await self.c.execute(insert(table).values(**values))
        except IntegrityError:
            return False
        return True

    # data keys
    async def user_key(self, user_id: str) -> dict[str, Any] | None:
        return await self._one(select(user_keys).where(user_keys.c.user_id == user_id))

    async def add_user_key(self, values: dict[str, Any]) -> bool:
        return await self._insert_once(user_keys, values)

    async def rewrap_user_keys(self, rows: list[dict[str, Any]]) -> None:
        """Rewraps many data keys in one statement; a row changes only if it is still wrapped
        by the version it was read with (rows: user_id, old, new, wrapped)."""
        if rows:
            statement = (
                update(user_keys)
                .where(
                    user_keys.c.user_id == bindparam("b_user_id"),
                    user_keys.c.kek_version == bindparam("b_old"),
                )
                .values(kek_version=bindparam("b_new"), wrapped_key=bindparam("b_wrapped"))
            )
            await self.c.execute(statement, [{f"b_{k}": v for k, v in r.items()} for r in rows])

    async def replace_user_key(self, user_id: str, **values: Any) -> None:
        await self.c.execute(
            update(user_keys).where(user_keys.c.user_id == user_id).values(**values)
        )

    async def delete_user_key(self, user_id: str) -> bool:
        result = await self.c.execute(delete(user_keys).where(user_keys.c.user_id == user_id))
        return result.rowcount == 1

    async def key_counts(self) -> dict[str, int]:
        query = select(user_keys.c.kek_version, func.count()).group_by(user_keys.c.kek_version)
        return {version: count for version, count in await self.c.execute(query)}

    async def keys_not_on(self, version: str, limit: int) -> list[dict[str, Any]]:
        query = (
            select(user_keys.c.user_id, user_keys.c.kek_version, user_keys.c.wrapped_key)
            .where(user_keys.c.kek_version != version)
            .order_by(user_keys.c.user_id)
            .limit(limit)
        )
        return await self._all(query)

    # credentials
    async def credential(self, user_id: str, credential_id: str) -> dict[str, Any] | None:
        query = select(credentials).where(
            credentials.c.id == credential_id, credentials.c.user_id == user_id
        )
        return await self._one(query)

    async def credentials_page(
        self, user_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[dict[str, Any]]:
        condition = credentials.c.user_id == user_id
        if after is not None:
            time, last_id = after
            condition = condition & or_(
                credentials.c.create_time < time,
                (credentials.c.create_time == time) & (credentials.c.id < last_id),
            )
        query = (
            select(credentials)
            .where(condition)
            .order_by(credentials.c.create_time.desc(), credentials.c.id.desc())
            .limit(limit)
        )
        return await self._all(query)

    async def sealed_credential(self, user_id: str, credential_id: str) -> dict[str, Any] | None:
        """A credential with its owner's wrapped data key, read in one statement so that a
        concurrent per-user key rotation is seen entirely or not at all."""
        query = (
            select(
                credentials,
                user_keys.c.kek_version,
                user_keys.c.wrapped_key,
                user_keys.c.generation,
            )
            .select_from(
                credentials.outerjoin(user_keys, user_keys.c.user_id == credentials.c.user_id)
            )
            .where(credentials.c.id == credential_id, credentials.c.user_id == user_id)
        )
        return await self._one(query)

    async def touch_credentials(self, credential_ids: list[str], now: datetime) -> None:
        if credential_ids:
            await self.c.execute(
                update(credentials)
                .where(credentials.c.id.in_(credential_ids))
                .values(last_use_time=now)
            )

    async def user_credentials(self, user_id: str) -> list[dict[str, Any]]:
        return await self._all(select(credentials).where(credentials.c.user_id == user_id))

    async def add_credential(self, values: dict[str, Any]) -> None:
        await self.c.execute(insert(credentials).values(**values))

    async def update_credential(self, credential_id: str, **values: Any) -> None:
        await self.c.execute(
            update(credentials).where(credentials.c.id == credential_id).values(**values)
        )

    async def delete_credential(self, user_id: str, credential_id: str) -> bool:
        result = await self.c.execute(
            delete(credentials).where(
                credentials.c.id == credential_id, credentials.c.user_id == user_id
            )
        )
        return result.rowcount == 1

    async def delete_user_credentials(self, user_id: str) -> int:
        result = await self.c.execute(delete(credentials).where(credentials.c.user_id == user_id))
        await self.c.execute(delete(oauth_states).where(oauth_states.c.user_id == user_id))
        return result.rowcount

    # audit
    async def audit(self, events: list[dict[str, Any]]) -> None:
        if events:
            await self.c.execute(insert(audit_events), events)

    async def audit_events(self, user_id: str) -> list[dict[str, Any]]:
        query = (
            select(audit_events)
            .where(audit_events.c.user_id == user_id)
            .order_by(audit_events.c.id)
        )
        return await self._all(query)

    # OAuth
    async def add_oauth_state(self, values: dict[str, Any]) -> None:
        await self.c.execute(insert(oauth_states).values(**values))

    async def take_oauth_state(self, state_sha256: str, now: datetime) -> dict[str, Any] | None:
        """The live state, marked used; None when unknown, used or expired (single use even
        under concurrent callbacks: the conditional UPDATE lets one through)."""
        state = await self._one(
            select(oauth_states).where(oauth_states.c.state_sha256 == state_sha256)
        )
        if state is None:
            return None
        result = await self.c.execute(
            update(oauth_states)
            .where(
                oauth_states.c.state_sha256 == state_sha256,
                oauth_states.c.use_time.is_(None),
                oauth_states.c.expire_time > now,
            )
            .values(use_time=now)
        )
        return state if result.rowcount == 1 else None

    async def client_secret(self, provider: str) -> bytes | None:
        query = select(oauth_client_secrets.c.secret).where(
            oauth_client_secrets.c.provider == provider
        )
        row = (await self.c.execute(query)).first()
        return row.secret if row else None

    async def set_client_secret(self, provider: str, sealed: bytes, now: datetime) -> None:
        if not await self._insert_once(
            oauth_client_secrets, {"provider": provider, "secret": sealed, "update_time": now}
        ):
            await self.c.execute(
                update(oauth_client_secrets)
                .where(oauth_client_secrets.c.provider == provider)
                .values(secret=sealed, update_time=now)
            )

    # leases
    async def acquire_lease(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        if await self._insert_once(leases, {"name": name, "holder": holder, "expire_time": until}):
            return True
        result = await self.c.execute(
            update(leases)
            .where(leases.c.name == name, leases.c.expire_time <= now)
            .values(holder=holder, expire_time=until)
        )
        return result.rowcount == 1

    async def release_lease(self, name: str, holder: str) -> None:
        await self.c.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))


class Store(KitStore[Tx]):
    tx_class = Tx
